#!/usr/bin/env bash
# Fine-tune zerank on a BEIR folder and compare the held-out ranking before and after.
#
# What:    zerank evaluate (the starting model) -> zerank finetune (CrossEncoderTrainer on the train split, with
#          BM25-mined negatives; it refits the calibration and writes a complete package to $OUT/finetune/final)
#          -> zerank evaluate (the fine-tuned package) on the same split and queries.
# Inputs:  MODEL  a zerank folder or hub id (zeroentropy/zerank-1-small-reranker by default)
#          DATA   a BEIR folder with a train split (qrels/train.tsv) and an evaluation split (qrels/test.tsv)
# Outputs: $OUT/evaluate-before, $OUT/finetune (checkpoints, report.json, final/), $OUT/evaluate-after.
# Adapt:   LOSS (bce, lambda, listnet, ranknet), MAX_STEPS, LEARNING_RATE, BATCH_SIZE; add trainer flags
#          (--lora, --bf16, --gradient-accumulation-steps ...) to the finetune line; `zerank finetune --help` lists them.
#          ZERANK_TINY=1 runs the whole recipe offline on the tiny random model (what CI does).
set -euo pipefail

MODEL=${MODEL:-zeroentropy/zerank-1-small-reranker}
DATA=${DATA:-../shared/data/ir/scifact}
TRAIN_SPLIT=${TRAIN_SPLIT:-train}
EVAL_SPLIT=${EVAL_SPLIT:-test}
MAX_QUERIES=${MAX_QUERIES:-100}
LOSS=${LOSS:-bce}
MAX_STEPS=${MAX_STEPS:-500}
LEARNING_RATE=${LEARNING_RATE:-2e-5}
BATCH_SIZE=${BATCH_SIZE:-16}
OUT=${OUT:-outputs/finetune-beir}
DEVICE=${DEVICE:-cpu}

if [[ "${ZERANK_TINY:-0}" == 1 ]]; then
    MAX_QUERIES=4 MAX_STEPS=2 LEARNING_RATE=3e-3 BATCH_SIZE=4
    zerank build --random tiny --out "$OUT/model" --overwrite
    MODEL=$OUT/model
fi
CPU_FLAGS=()
if [[ "$DEVICE" == cpu ]]; then
    CPU_FLAGS=(--use-cpu)
fi

zerank evaluate --model "$MODEL" --data "$DATA" --split "$EVAL_SPLIT" --max-queries "$MAX_QUERIES" \
    --device "$DEVICE" --output-dir "$OUT/evaluate-before"
zerank finetune --model "$MODEL" --data "$DATA" --train-split "$TRAIN_SPLIT" --eval-split "$EVAL_SPLIT" \
    --eval-max-queries "$MAX_QUERIES" --loss "$LOSS" --max-steps "$MAX_STEPS" --learning-rate "$LEARNING_RATE" \
    --per-device-train-batch-size "$BATCH_SIZE" "${CPU_FLAGS[@]}" --output-dir "$OUT/finetune"
zerank evaluate --model "$OUT/finetune/final" --data "$DATA" --split "$EVAL_SPLIT" --max-queries "$MAX_QUERIES" \
    --device "$DEVICE" --output-dir "$OUT/evaluate-after"
