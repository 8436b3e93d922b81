"""scripts/benchmark.py runs end to end on the tiny shape and reports every path (numbers are not asserted)."""

import json

from benchmark import main


def test_benchmark_reports_all_paths_and_agreement(tmp_path, tokenizer_dir):
    out = tmp_path / "bench.json"
    result = main(["--config", "config/tiny.json", "--docs", "4", "--repeats", "1", "--st-batch-sizes", "2", "4",
                   "--cache-dir", str(tmp_path / "models"), "--tokenizer", str(tokenizer_dir), "--json", str(out),
                   "--query", "long", "--skip-memory"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert set(result["paths"]) == {"zerank", "zerank_no_prefix", "st_native"}
    for path in result["paths"].values():
        stats = path["pairs_per_s"]
        assert 0 < stats["min"] <= stats["median"] <= stats["max"]
    assert result["max_score_diff"] <= 1e-4
    assert result["st_native_batch_size"] in (2, 4) and result["tokens_executed"] < result["tokens"]
    assert result["ratio_vs_st"] > 0 and result["roofline_fraction"] > 0
