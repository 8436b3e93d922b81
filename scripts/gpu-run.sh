#!/usr/bin/env bash
# The device run of issue 26 (a GPU machine without network): install the carried wheels (scripts/prep-gpu-env.sh,
# folder .gpu/ carried with the run) over the image's older libraries, check the versions, run the benchmark.
#
# Device tool: run(command="bash scripts/gpu-run.sh", carry=[".gpu"], timeout_s=540)
# Inputs:  BENCH_ARGS  more arguments for benchmarks/bench_gpu.py (e.g. "--repeats 3"); OUT (the device's output dir)
# Outputs: $OUT/bench_gpu.json (commit it as the measured result), $OUT/bench_gpu.log, $OUT/serve/bench_serve.json
# Adapt:   ZERANK_TINY=1 (what CI does) runs the benchmark's smallest dry run on CPU with the installed libraries.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/bench-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [[ "${ZERANK_TINY:-0}" == 1 ]]; then
    exec python3 benchmarks/bench_gpu.py --device cpu --shape tiny --queries 1 --docs 4 --doc-tokens 30 60 --repeats 1 \
        --kinds sdpa --st-batch-sizes 4 --batch-token-sweep 512 --sweep-queries 1 --serve-concurrency 1 \
        --serve-requests 1 --cache-dir "$OUT/models" --out "$OUT"
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .gpu/wheels/*.whl
export PYTHONPATH="$PWD:/tmp/site"  # the working tree's code first, the carried libraries next
# The versions first: a library of the image that shadows a carried one stops the run here, not mid-benchmark.
python3 - <<'PY'
from importlib.metadata import version
import torch, transformers, sentence_transformers, huggingface_hub, zerank_fast_path
import fastapi, uvicorn, zerank.serving.app  # the server's stack imports too
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "NO GPU"
print("torch", torch.__version__, "cuda", torch.version.cuda, gpu)
for name, module in [("transformers", transformers), ("sentence-transformers", sentence_transformers),
                     ("huggingface_hub", huggingface_hub)]:
    assert module.__file__.startswith("/tmp/site/"), f"{name} {module.__version__} comes from {module.__file__}"
    print(name, module.__version__)
print("zerank", version("zerank"), "fast path from", zerank_fast_path.__file__)
PY
set -o pipefail
# shellcheck disable=SC2086  # BENCH_ARGS is a list of arguments
python3 benchmarks/bench_gpu.py --device cuda --out "$OUT" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench_gpu.log"
