#!/usr/bin/env bash
# CI: run every scripts/ recipe end to end on the tiny random model (ZERANK_TINY=1), offline, each into its own
# temporary output folder, so no recipe rots. Fails on the first error; prints one line per recipe with its wall time.
# Usage: .ci/recipes.sh [scripts/RECIPE.sh ...]   (default: every recipe)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" ZERANK_TINY=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# The fixture: a small synthetic BEIR folder (train and test splits) from the tests' generator; the recipes' default
# DATA (a real BEIR set) is not in the repository.
python -c 'import sys; sys.path.insert(0, "tests"); from pathlib import Path; from evaluate_data import write_synthetic_beir
write_synthetic_beir(Path(sys.argv[1]), n_queries=8, splits={"train": 0.5, "test": 0.5})' "$WORK/beir"
export DATA="$WORK/beir"
# A free local port for serve-vllm.sh's server.
PORT=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export PORT

if [[ $# -eq 0 ]]; then set -- scripts/*.sh; fi
for recipe in "$@"; do
    name=$(basename "$recipe" .sh)
    start=$SECONDS
    if ! OUT="$WORK/$name" bash "$recipe" >"$WORK/$name.log" 2>&1; then
        cat "$WORK/$name.log"
        echo "recipe $name FAILED after $((SECONDS - start)) s (log above)" >&2
        exit 1
    fi
    echo "recipe $name: ok in $((SECONDS - start)) s"
done
