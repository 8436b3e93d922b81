"""Synthetic BEIR folders for the evaluation, calibration and fine-tuning tests (no licensed data in the repo).

Every query names a rare made-up word; its relevant documents repeat that word among common filler words, and the
other documents are filler with other rare words. The task is learnable (match the rare word) and BM25 solves it.
The folder has the quirks of the real sets: a qrels file without a header (``test``), graded labels, judged zeros,
queries without judgments and documents with empty titles.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

FILLER = (
    "system data model report study method result analysis value process level effect group region market design "
    "policy energy water health network signal sample patient cell protein growth climate city market storage"
).split()
SYLLABLES = ["zor", "vex", "qua", "lim", "dra", "pok", "sul", "tiv", "gan", "mur", "bel", "xan", "fep", "kro"]


def rare_words(n: int, rng: random.Random) -> list[str]:
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(3)))
    return sorted(words)


def filler(rng: random.Random, n: int) -> list[str]:
    return [rng.choice(FILLER) for _ in range(n)]


def write_synthetic_beir(folder: Path, *, n_queries: int = 12, negatives_per_query: int = 4, seed: int = 0,
                         splits: dict[str, float] | None = None) -> Path:
    """Write a BEIR folder; ``splits`` maps split names to the share of the queries they judge (in order)."""
    rng = random.Random(seed)
    splits = splits or {"test": 1.0}
    words = rare_words(n_queries + 1, rng)
    folder.mkdir(parents=True, exist_ok=True)
    corpus, queries, judgments = [], [], []
    for i in range(n_queries):
        qid, word = f"q{i}", words[i]
        queries.append({"_id": qid, "text": f"what is known about {word} {' '.join(filler(rng, 2))}"})
        for j in range(2):  # two relevant documents: grade 2 repeats the word more than grade 1
            body = filler(rng, 12)
            for _ in range(3 - j):
                body.insert(rng.randrange(len(body)), word)
            doc_id = f"d{i}-pos{j}"
            corpus.append({"_id": doc_id, "title": f"{word} notes" if j == 0 else "", "text": " ".join(body)})
            judgments.append((qid, doc_id, 2 - j))
        for j in range(negatives_per_query):
            body = filler(rng, 14)
            body.insert(rng.randrange(len(body)), words[(i + j + 1) % n_queries])
            doc_id = f"d{i}-neg{j}"
            corpus.append({"_id": doc_id, "title": "" if j % 2 else "general notes", "text": " ".join(body)})
            if j == 0:
                judgments.append((qid, doc_id, 0))
    queries.append({"_id": "unjudged", "text": f"a query nobody judged about {words[-1]}"})
    rng.shuffle(corpus)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(row) + "\n" for row in corpus))
    (folder / "queries.jsonl").write_text("".join(json.dumps(row) + "\n" for row in queries))
    (folder / "qrels").mkdir(exist_ok=True)
    start = 0
    for name, share in splits.items():
        count = round(share * n_queries)
        chosen = {f"q{i}" for i in range(start, min(n_queries, start + count))}
        start += count
        header = "" if name == "test" else "query-id\tcorpus-id\tscore\n"
        rows = "".join(f"{q}\t{d}\t{g}\n" for q, d, g in judgments if q in chosen)
        (folder / "qrels" / f"{name}.tsv").write_text(header + rows)
    return folder


def ndcg_ceiling(qrels: dict[str, dict[str, int]], candidates: dict[str, dict[str, float]], k: int = 10) -> float:
    """Best NDCG@k any order of the candidates reaches (linear gains, as trec_eval), averaged over qrels' queries:
    an independent reference for the oracle reranker."""

    def dcg(gains):
        return sum(g / math.log2(i + 2) for i, g in enumerate(sorted(gains, reverse=True)[:k]))

    values = []
    for qid, judged in qrels.items():
        ideal = dcg([g for g in judged.values() if g > 0])
        best = dcg([max(judged.get(d, 0), 0) for d in candidates.get(qid, {})])
        values.append(best / ideal if ideal else 0.0)
    return sum(values) / len(values)
