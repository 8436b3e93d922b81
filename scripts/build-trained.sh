#!/usr/bin/env bash
# Build, evaluate, calibrate and publish a trained zerank checkpoint.
#
# What:    zerank build (convert the checkpoint into a verified package) -> zerank evaluate (NDCG@10 over a BM25
#          first stage) -> zerank calibrate --write (fit the score temperature and bias, store them in the package)
#          -> zerank publish (a dry run unless REPO is set).
# Inputs:  BASE  a published preset (zerank-1-small, zerank-1, zerank-2), a hub id or a local Qwen3ForCausalLM folder
#          DATA  a BEIR folder (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv)
#          REPO  the hub repo to publish to (org/name); empty: validate and show the upload, upload nothing
# Outputs: $OUT/model (the package), $OUT/evaluate, $OUT/calibrate, $OUT/publish (publish_report.json).
# Adapt:   set the variables below from the environment, e.g.
#            BASE=path/to/checkpoint DATA=path/to/beir REPO=me/my-reranker scripts/build-trained.sh
#          ZERANK_TINY=1 runs the whole recipe offline on the tiny random model (what CI does).
set -euo pipefail

BASE=${BASE:-zerank-1-small}
DATA=${DATA:-../shared/data/ir/scifact}
SPLIT=${SPLIT:-test}
MAX_QUERIES=${MAX_QUERIES:-100}
TOP_K=${TOP_K:-100}
REPO=${REPO:-}
REPO_ID=${REPO:-your-org/zerank-dry-run}  # the repo the card names (a placeholder for the dry run)
OUT=${OUT:-outputs/build-trained}
DEVICE=${DEVICE:-cpu}

if [[ "${ZERANK_TINY:-0}" == 1 ]]; then
    MAX_QUERIES=4 TOP_K=5
    # The tiny shape is Qwen3's: the card names Qwen/Qwen3-0.6B as its base, as a published build would.
    zerank build --random tiny --base-model-id Qwen/Qwen3-0.6B --repo-id "$REPO_ID" --out "$OUT/model" --overwrite
else
    zerank build --base "$BASE" --repo-id "$REPO_ID" --out "$OUT/model" --overwrite
fi

zerank evaluate --model "$OUT/model" --data "$DATA" --split "$SPLIT" --max-queries "$MAX_QUERIES" \
    --top-k "$TOP_K" --device "$DEVICE" --output-dir "$OUT/evaluate"
zerank calibrate --model "$OUT/model" --data "$DATA" --split "$SPLIT" --max-queries "$MAX_QUERIES" \
    --top-k "$TOP_K" --device "$DEVICE" --write --output-dir "$OUT/calibrate"

if [[ -n "$REPO" ]]; then
    zerank publish --folder "$OUT/model" --repo "$REPO" --output-dir "$OUT/publish"
else
    zerank publish --folder "$OUT/model" --repo "$REPO_ID" --dry-run --output-dir "$OUT/publish"
fi
