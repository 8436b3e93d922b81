"""zerank bench runs end to end on the tiny shape and reports every path (numbers are not asserted)."""

import json

import pytest

from zerank import cli
from zerank.bench.arguments import BenchArguments
from zerank.bench.speed import long_rows_child, measure_memory
from zerank_fast_path import FastPathSettings


@pytest.fixture(scope="module")
def bench(tmp_path_factory, tokenizer_dir, tiny_model_dir):
    tmp_path = tmp_path_factory.mktemp("bench")
    out = tmp_path / "out"
    result = cli.main(["bench", "--shape", "tiny", "--docs", "4", "--repeats", "1", "--st-batch-sizes", "2", "4",
                       "--cache-dir", str(tmp_path / "models"), "--tokenizer", str(tokenizer_dir),
                       "--output-dir", str(out), "--query", "long", "--no-memory",
                       "--runtime-dirs", str(tiny_model_dir), "--crossover-docs", "2", "4",
                       "--batch-token-sweep", "64", "4096"])
    return tmp_path, out, result


def test_benchmark_reports_all_paths_and_agreement(bench, tiny_model_dir):
    _, out, result = bench
    assert json.loads((out / "bench.json").read_text()) == json.loads(json.dumps(result))
    runtime = f"runtime:{tiny_model_dir}"
    assert set(result["paths"]) == {"zerank", "zerank_no_prefix", "st_native", "zerank_bf16", runtime}
    # The runtime folder is a torch package of the same random weights (same shape and seed): same scores.
    assert result["paths"][runtime]["max_score_diff_vs_zerank"] <= 1e-5
    assert 0 < result["paths"]["zerank_bf16"]["max_logit_diff_vs_fp32"] < 1.0
    crossover = result["crossover"]
    assert crossover["forward_overhead_flops_measured"] > 0 and [r["docs"] for r in crossover["by_docs"]] == [2, 4]
    assert all(r["plan_s"] > 0 and r["padded_s"] > 0 and r["plan_forwards"] >= 1 for r in crossover["by_docs"])
    for path in result["paths"].values():
        stats = path["pairs_per_s"]
        assert 0 < stats["min"] <= stats["median"] <= stats["max"]
    assert result["max_score_diff"] <= 1e-4
    assert result["st_native_batch_size"] in (2, 4) and result["tokens_executed"] < result["tokens"]
    assert result["ratio_vs_st"] > 0 and result["roofline_fraction"] > 0
    sweep = result["batch_token_sweep"]
    assert sweep["default"] == FastPathSettings().cpu_max_batch_tokens and list(sweep["by_budget"]) == [64, 4096]
    assert all(len(b["pairs_per_s_runs"]) == 1 and b["ratio_vs_st"] > 0 for b in sweep["by_budget"].values())


def test_memory_is_measured_in_a_child_process(bench, tokenizer_dir):
    tmp_path, _, _ = bench
    args = BenchArguments(shape="tiny", docs=4, query="long", cache_dir=tmp_path / "models",
                          tokenizer=str(tokenizer_dir), output_dir=tmp_path / "out")
    memory = measure_memory(args, "zerank", 2)  # reuses the models the benchmark built
    assert 0 < memory["inference_peak_rss_mb"] <= memory["peak_rss_mb"]


def test_long_rows_fast_and_plain_path_agree(bench, tokenizer_dir):
    """The --long-rows child (run in-process here): rows of the asked lengths, same logit through both paths."""
    tmp_path, _, _ = bench
    args = BenchArguments(shape="tiny", long_rows=[300, 40], cache_dir=tmp_path / "models",
                          tokenizer=str(tokenizer_dir), output_dir=tmp_path / "out")
    fast, plain = long_rows_child(args, "fast"), long_rows_child(args, "plain")
    assert [r["tokens"] for r in fast] == [r["tokens"] for r in plain] == [40, 300]
    assert all(abs(f["logit"] - p["logit"]) <= 1e-5 and f["seconds"] > 0 for f, p in zip(fast, plain))
