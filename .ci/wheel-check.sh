#!/usr/bin/env bash
# CI: a non-editable `pip install .` in a fresh virtual environment builds, loads and serves a package from another
# directory, so the wheel ships everything a build needs (config/, the model card template, the remote code).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
VENV=$REPO/build/venv-wheel

rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# torch==2.13.0 resolves to the CPU wheel of CI's wheel folder; the serve extra brings the server's dependencies.
"$VENV/bin/python" -m pip install --quiet "torch==2.13.0" ".[serve]"
export PATH="$VENV/bin:$PATH" HF_HUB_OFFLINE=1

WORK=$(mktemp -d)
SERVER_PID=
trap '[[ -n "$SERVER_PID" ]] && kill "$SERVER_PID" 2>/dev/null; rm -rf "$WORK"' EXIT
cd "$WORK"  # away from the checkout: nothing may come from the source tree

# The wheel ships config/ and the card template inside the package, and the import is the installed copy.
python - <<'PY'
from importlib.resources import files

import zerank

package = files("zerank")
assert "site-packages" in str(package), f"zerank imported from {package}, not from the installed wheel"
assert (package / "model_card.md").is_file(), "the wheel lacks zerank/model_card.md (the card template)"
assert (package / "config").is_dir() and any((package / "config").iterdir()), "the wheel lacks zerank/config/"
print("wheel contents: ok", package)
PY

zerank build --random tiny --out pkg
python -c '
from sentence_transformers import CrossEncoder

scores = CrossEncoder("pkg", trust_remote_code=True, device="cpu").predict(
    [("What is the capital of France?", "Paris is the capital of France."), ("What is the capital of France?", "Bananas.")])
assert len(scores) == 2 and all(0.0 < float(s) < 1.0 for s in scores), scores
print("CrossEncoder.predict: ok", [round(float(s), 4) for s in scores])
'

PORT=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
zerank serve --model pkg --host 127.0.0.1 --port "$PORT" --device cpu >serve.log 2>&1 &
SERVER_PID=$!
if ! curl --silent --fail --retry 60 --retry-delay 1 --retry-connrefused "http://127.0.0.1:$PORT/health" >/dev/null; then
    cat serve.log
    echo "zerank serve did not answer /health on port $PORT" >&2
    exit 1
fi
curl --silent --show-error --fail "http://127.0.0.1:$PORT/v1/rerank" -H "Content-Type: application/json" \
    -d '{"query": "What is the capital of France?", "documents": ["Paris is the capital of France.", "Bananas."]}' \
    >reply.json
python -c '
import json

reply = json.load(open("reply.json"))
results = reply["results"]
assert sorted(r["index"] for r in results) == [0, 1], reply
assert all(0.0 < r["relevance_score"] < 1.0 for r in results), reply
print("zerank serve /v1/rerank: ok", [(r["index"], round(r["relevance_score"], 4)) for r in results])
'
kill "$SERVER_PID"
wait "$SERVER_PID" 2>/dev/null || true
SERVER_PID=
echo "wheel check: ok"
