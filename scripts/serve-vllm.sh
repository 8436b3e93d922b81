#!/usr/bin/env bash
# Serve zerank with vLLM (a plain Qwen3ForSequenceClassification export), or with zerank's own server.
#
# What:    zerank export --format vllm (parity-checked against the zerank package) -> vllm serve the export
#          (skipped with a message when vLLM is not installed) -> or zerank serve the package (ZeroEntropy's rerank
#          API, plus the Cohere / Jina / TEI shapes).
# Inputs:  MODEL   a zerank folder or hub id (zeroentropy/zerank-1-small-reranker by default)
#          SERVER  vllm or zerank: which server to run in the foreground (default: vllm when installed, else zerank)
#          HOST, PORT  where the server listens (127.0.0.1:8000)
# Outputs: $OUT/vllm (the vLLM export); the server runs until stopped (Ctrl-C).
# Adapt:   a calibrated model with a non-zero score bias needs --drop-bias on the export line (vLLM's pooling head
#          applies the temperature only); add vLLM flags (--dtype, --max-model-len, ...) to the vllm serve line.
#          ZERANK_TINY=1 (what CI does) exports the tiny random model, starts the server in the background, sends
#          one rerank request with curl and stops the server.
set -euo pipefail

MODEL=${MODEL:-zeroentropy/zerank-1-small-reranker}
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}
OUT=${OUT:-outputs/serve-vllm}
if command -v vllm >/dev/null; then SERVER=${SERVER:-vllm}; else SERVER=${SERVER:-zerank}; fi

if [[ "${ZERANK_TINY:-0}" == 1 ]]; then
    zerank build --random tiny --out "$OUT/model" --overwrite
    MODEL=$OUT/model
fi

zerank export --format vllm --model "$MODEL" --out "$OUT/vllm" --overwrite

if [[ "$SERVER" == vllm ]] && ! command -v vllm >/dev/null; then
    echo "vllm is not installed (pip install vllm): serving with zerank serve instead." >&2
    SERVER=zerank
fi
if [[ "$SERVER" == vllm ]]; then
    SERVE=(vllm serve "$OUT/vllm" --runner pooling --chat-template "$OUT/vllm/chat_template.jinja"
           --host "$HOST" --port "$PORT")
else
    SERVE=(zerank serve --model "$MODEL" --host "$HOST" --port "$PORT")
fi

if [[ "${ZERANK_TINY:-0}" != 1 ]]; then
    exec "${SERVE[@]}"
fi
"${SERVE[@]}" &
SERVER_PID=$!
trap 'kill "$SERVER_PID" 2>/dev/null || true' EXIT
curl --silent --fail --retry 60 --retry-delay 1 --retry-connrefused "http://$HOST:$PORT/health" >/dev/null
curl --silent --show-error --fail "http://$HOST:$PORT/v1/rerank" -H "Content-Type: application/json" \
    -d '{"query": "What is the capital of France?", "documents": ["Paris is the capital of France.", "Bananas."]}' \
    | tee "$OUT/rerank.json"
echo
