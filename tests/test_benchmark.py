"""zerank bench runs end to end on the tiny shape and reports every path (numbers are not asserted)."""

import json

import pytest

from zerank import cli
from zerank.arguments import BenchArguments
from zerank.benchmark import measure_memory


@pytest.fixture(scope="module")
def bench(tmp_path_factory, tokenizer_dir):
    tmp_path = tmp_path_factory.mktemp("bench")
    out = tmp_path / "out"
    result = cli.main(["bench", "--config", "tiny", "--docs", "4", "--repeats", "1", "--st-batch-sizes", "2", "4",
                       "--cache-dir", str(tmp_path / "models"), "--tokenizer", str(tokenizer_dir),
                       "--output-dir", str(out), "--query", "long", "--no-memory"])
    return tmp_path, out, result


def test_benchmark_reports_all_paths_and_agreement(bench):
    _, out, result = bench
    assert json.loads((out / "bench.json").read_text()) == json.loads(json.dumps(result))
    assert set(result["paths"]) == {"zerank", "zerank_no_prefix", "st_native"}
    for path in result["paths"].values():
        stats = path["pairs_per_s"]
        assert 0 < stats["min"] <= stats["median"] <= stats["max"]
    assert result["max_score_diff"] <= 1e-4
    assert result["st_native_batch_size"] in (2, 4) and result["tokens_executed"] < result["tokens"]
    assert result["ratio_vs_st"] > 0 and result["roofline_fraction"] > 0


def test_memory_is_measured_in_a_child_process(bench, tokenizer_dir):
    tmp_path, _, _ = bench
    args = BenchArguments(config="tiny", docs=4, query="long", cache_dir=tmp_path / "models",
                          tokenizer=str(tokenizer_dir), output_dir=tmp_path / "out")
    memory = measure_memory(args, "zerank", 2)  # reuses the models the benchmark built
    assert 0 < memory["inference_peak_rss_mb"] <= memory["peak_rss_mb"]
