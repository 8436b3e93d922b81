"""zerank demo: builds the tiny random model, scores the example through CrossEncoder, reuses the build."""

import re
import subprocess
import sys

from zerank.packaging.demo import DOCUMENTS, QUERY


def run_demo(out, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zerank.cli", "demo", "--out", str(out)], cwd=cwd,
                          check=False, capture_output=True, text=True, timeout=300)


def test_demo_scores_ranks_and_reuses_its_build(tmp_path):
    out = tmp_path / "tiny"
    first = run_demo(out, tmp_path)  # from a working directory outside the checkout
    assert first.returncode == 0, first.stderr[-2000:]
    assert f"Query: {QUERY}" in first.stdout and "meaningless" in first.stdout
    scores = [float(m) for m in re.findall(r"^  (\d\.\d{4})  ", first.stdout, flags=re.MULTILINE)]
    assert len(scores) == len(DOCUMENTS) and all(0 < s < 1 for s in scores)
    assert "rank(): [{'corpus_id'" in first.stdout
    assert (out / "build_report.json").exists() and "UNTRAINED" in (out / "README.md").read_text()
    weights = (out / "model.safetensors").stat().st_mtime_ns

    second = run_demo(out, tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "Reusing" in second.stderr and "Creating a random" not in second.stderr
    assert (out / "model.safetensors").stat().st_mtime_ns == weights
    assert re.findall(r"^  (\d\.\d{4})  ", second.stdout, flags=re.MULTILINE) == [f"{s:.4f}" for s in scores]
