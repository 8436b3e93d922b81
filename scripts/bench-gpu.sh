#!/usr/bin/env bash
# The GPU benchmark: zerank's fast path against sentence-transformers' native reranker on identical weights.
#
# What:    zerank bench with the shapes of docs/speed.md: the zerank-1 shape, 100 documents per query, short and
#          long queries, bf16 on CUDA (random weights of the shape: speed does not depend on the values).
# Inputs:  SHAPE   a packaged shape name (tiny, qwen3-0.6b, zerank-1-small, zerank-1) or a config JSON
#          DOCS    documents per query; REPEATS timed repetitions of every path
# Outputs: $OUT/short/bench.json, $OUT/long/bench.json (timings, throughput, peak memory per path).
# Adapt:   DEVICE=cpu benchmarks on CPU (fp32); ST_BATCH_SIZES sets the sentence-transformers batch sizes swept.
#          ZERANK_TINY=1 (what CI does) runs the tiny shape on CPU with few documents.
# See also: benchmarks/bench_gpu.py (every path on one GPU workload in one run; scripts/gpu-run.sh on a GPU machine).
set -euo pipefail

SHAPE=${SHAPE:-zerank-1}
DOCS=${DOCS:-100}
REPEATS=${REPEATS:-3}
DEVICE=${DEVICE:-cuda}
ST_BATCH_SIZES=${ST_BATCH_SIZES:-8 16 32 64}
OUT=${OUT:-outputs/bench-gpu}

if [[ "${ZERANK_TINY:-0}" == 1 ]]; then
    SHAPE=tiny DOCS=8 REPEATS=1 DEVICE=cpu ST_BATCH_SIZES=4
fi

for QUERY in short long; do
    # shellcheck disable=SC2086  # ST_BATCH_SIZES is a list of numbers
    zerank bench --shape "$SHAPE" --docs "$DOCS" --query "$QUERY" --repeats "$REPEATS" --device "$DEVICE" \
        --st-batch-sizes $ST_BATCH_SIZES --cache-dir "$OUT/models" --output-dir "$OUT/$QUERY"
done
