#!/usr/bin/env bash
# The zELO pipeline: fine-tune on unlabelled queries with Elo scores from pairwise judgments.
#
# What:    zerank pairs (random cycles of document pairs over each query's BM25 candidates) -> zerank judge (the
#          built-in judge: a zerank model's pointwise scores as pairwise preferences) -> zerank elo (Elo scores with
#          standard errors, one scale across queries) -> zerank finetune --loss elo-mse (the student learns the Elo).
# Inputs:  JUDGE  the judging model (a zerank folder or hub id; zeroentropy/zerank-1-reranker by default)
#          MODEL  the student to fine-tune (zeroentropy/zerank-1-small-reranker by default)
#          DATA   a BEIR folder; the queries of qrels/$SPLIT.tsv are used, their labels are not
# Outputs: $OUT/pairs, $OUT/judged, $OUT/elo, $OUT/finetune (final/ is the fine-tuned package).
# Adapt:   replace the judge step with your own judge (an LLM, annotators) writing judgments.jsonl in the same
#          format; CYCLES / TOP_K set how many pairs each query gets. `zerank COMMAND --help` lists every flag.
#          ZERANK_TINY=1 runs the whole recipe offline on the tiny random model as judge and student (what CI does).
set -euo pipefail

JUDGE=${JUDGE:-zeroentropy/zerank-1-reranker}
MODEL=${MODEL:-zeroentropy/zerank-1-small-reranker}
DATA=${DATA:-../shared/data/ir/scifact}
SPLIT=${SPLIT:-train}
EVAL_SPLIT=${EVAL_SPLIT:-test}
MAX_QUERIES=${MAX_QUERIES:-200}
TOP_K=${TOP_K:-20}
CYCLES=${CYCLES:-4}
MAX_STEPS=${MAX_STEPS:-500}
OUT=${OUT:-outputs/zelo}
DEVICE=${DEVICE:-cpu}

if [[ "${ZERANK_TINY:-0}" == 1 ]]; then
    MAX_QUERIES=4 TOP_K=5 CYCLES=2 MAX_STEPS=2
    zerank build --random tiny --out "$OUT/model" --overwrite
    JUDGE=$OUT/model MODEL=$OUT/model
fi
CPU_FLAGS=()
if [[ "$DEVICE" == cpu ]]; then
    CPU_FLAGS=(--use-cpu)
fi

zerank pairs --data "$DATA" --split "$SPLIT" --max-queries "$MAX_QUERIES" --top-k "$TOP_K" --cycles "$CYCLES" \
    --out "$OUT/pairs" --overwrite
zerank judge --pairs "$OUT/pairs/pairs.jsonl" --model "$JUDGE" --device "$DEVICE" --out "$OUT/judged" --overwrite
zerank elo --judgments "$OUT/judged/judgments.jsonl" --out "$OUT/elo" --overwrite
zerank finetune --model "$MODEL" --data "$DATA" --train-split "$SPLIT" --eval-split "$EVAL_SPLIT" \
    --max-train-queries "$MAX_QUERIES" --eval-max-queries "$MAX_QUERIES" --loss elo-mse --elo "$OUT/elo/elo.jsonl" \
    --max-steps "$MAX_STEPS" "${CPU_FLAGS[@]}" --output-dir "$OUT/finetune"
