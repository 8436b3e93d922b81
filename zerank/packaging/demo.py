"""Offline demo: build the tiny random zerank model and score the model card's example through ``CrossEncoder``.

Command: ``zerank demo [--out build/tiny] [--tokenizer DIR]``.

The tiny model has random weights (the packaged ``tiny`` shape), so its scores are meaningless: the demo shows the
whole path (build, remote-code loading, prompt, calibrated scores, ranking) on a machine with no hub access. A folder
already built with this installation's remote code is reused.
"""

from __future__ import annotations

import logging
from pathlib import Path

from zerank.packaging.arguments import BuildArguments, DemoArguments
from zerank.packaging.convert import build
from zerank.model.loading import load_reranker
from zerank.model.package import stale_remote_code

logger = logging.getLogger(__name__)

QUERY = "What is 2+2?"
DOCUMENTS = ["4", "The answer is definitely 1 million"]
SHAPE = "tiny"
REPO_ID = "zerank-tiny-demo"


def ensure_tiny_model(out: Path, tokenizer: str | None = None) -> bool:
    """Build the tiny random model in ``out`` unless it is there with this installation's remote code.

    Returns whether it was (re)built.
    """
    stale = stale_remote_code(out)
    if not stale and (out / "config.json").exists():
        logger.info("Reusing %s (built with this installation's remote code)", out)
        return False
    logger.info("Building the tiny random model in %s%s", out, f" (stale: {', '.join(stale)})" if out.exists() else "")
    build(BuildArguments(out=out, random=SHAPE, tokenizer=tokenizer,
                         repo_id=REPO_ID, overwrite=True))
    return True


def main(args: DemoArguments) -> dict:
    """``zerank demo``: print the example's scores and ``rank()``; returns them."""
    built = ensure_tiny_model(args.out, args.tokenizer)
    model = load_reranker(str(args.out), dtype="float32")
    scores = model.predict([(QUERY, doc) for doc in DOCUMENTS], show_progress_bar=False)
    ranking = model.rank(QUERY, DOCUMENTS)
    print(f"\nQuery: {QUERY}")
    for doc, score in zip(DOCUMENTS, scores):
        print(f"  {score:.4f}  {doc}")
    print("rank():", ranking)
    print("(random weights: the scores are meaningless, the pipeline is real)")
    return {"model": str(args.out), "built": built, "query": QUERY,
            "scores": {doc: float(score) for doc, score in zip(DOCUMENTS, scores)}, "rank": ranking}
