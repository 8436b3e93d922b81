"""The examples of ``zerank finetune``: training groups and the held-out part, from a BEIR folder (hard negatives
mined from a first stage), a jsonl file, or ``zerank elo``'s scores (--loss elo-mse)."""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from zerank.data.readers import (
    BeirDataset,
    LabelledPairs,
    Qrels,
    Run,
    holdout_mask,
    load_beir,
    pairs_from_beir,
    pairs_from_jsonl,
    ranked,
    select_queries,
)
from zerank.evaluation.first_stage import FirstStage
from zerank.training.arguments import FinetuneArguments
from zerank.training.zelo import elo_target, read_elo

logger = logging.getLogger(__name__)


@dataclass
class Group:
    """One training query: its documents and their grades (relevant first)."""

    query: str
    documents: list[str]
    grades: list[float]


@dataclass
class HeldOut:
    """Held-out queries (a BEIR split: texts and judgments) with the first-stage candidates to rerank."""

    dataset: BeirDataset
    candidates: Run

    @property
    def split(self) -> str:
        return self.dataset.split

    @property
    def qrels(self) -> Qrels:
        return self.dataset.qrels

    def labelled_pairs(self, relevance_level: int) -> LabelledPairs:
        """Judged-relevant documents (label 1) and the candidates that are not (label 0), grouped by query id."""
        return pairs_from_beir(self.dataset, self.dataset.judged_query_ids, self.candidates,
                               relevance_level=relevance_level)

    def evaluator_samples(self, relevance_level: int) -> list[dict]:
        """Samples for CrossEncoderRerankingEvaluator: the candidates in first-stage order and the positives."""
        samples = []
        for qid, judged in self.qrels.items():
            positives = [self.dataset.document(d) for d, g in judged.items()
                         if g >= relevance_level and d in self.dataset.corpus]
            documents = [self.dataset.document(d) for d, _ in ranked(self.candidates.get(qid, {}))]
            if positives and documents:
                samples.append({"query": self.dataset.queries[qid], "positive": positives, "documents": documents})
        return samples


def beir_split(args: FinetuneArguments, first_stage: FirstStage,
               seed: int) -> tuple[BeirDataset, list[str], HeldOut]:
    """The training split with its training query ids, and the held-out part: --eval-split's judged queries (those
    not trained on) if it exists, else a seeded --holdout-fraction of the training split's judged queries."""
    train = load_beir(args.data, args.train_split)
    train_ids = select_queries(train, args.max_train_queries)
    eval_split_exists = (args.data / "qrels" / f"{args.eval_split}.tsv").exists() and \
        args.eval_split != args.train_split
    if eval_split_exists:
        held = load_beir(args.data, args.eval_split)
        training_queries = set(train_ids)
        held_ids = [q for q in held.judged_query_ids if q not in training_queries]
        if len(held_ids) < len(held.judged_query_ids):
            logger.warning("%d queries judged in both splits are kept out of training's held-out part",
                           len(held.judged_query_ids) - len(held_ids))
    else:
        logger.info("No split %r: holding out %.0f%% of the %r queries", args.eval_split,
                    100 * args.holdout_fraction, args.train_split)
        mask = holdout_mask(train_ids, args.holdout_fraction, seed)
        held, held_ids = train, [q for q, m in zip(train_ids, mask) if m]
        train_ids = [q for q, m in zip(train_ids, mask) if not m]
    held_ids = held_ids[: args.eval_max_queries] if args.eval_max_queries else held_ids
    held_part = held.subset(held_ids)
    if not eval_split_exists:
        held_part = dataclasses.replace(held_part, split="held out")
    return train, train_ids, HeldOut(held_part, first_stage.retrieve(held, held_ids, args.eval_top_k))


def beir_data(args: FinetuneArguments, first_stage: FirstStage, seed: int) -> tuple[list[Group], HeldOut]:
    """Training groups (judged positives + hard negatives mined from the first stage) and the held-out part."""
    rng = random.Random(seed)
    train, train_ids, heldout = beir_split(args, first_stage, seed)
    logger.info("Mining %d hard negatives per query from the top %d of %s", args.negatives_per_query,
                args.mine_top_k, first_stage.describe())
    pool = first_stage.retrieve(train, train_ids, args.mine_top_k)
    groups = []
    for qid in train_ids:
        judged = train.qrels[qid]
        positives = [d for d, g in judged.items() if g >= args.relevance_level and d in train.corpus]
        candidates = [d for d, _ in ranked(pool.get(qid, {})) if judged.get(d, 0) < args.relevance_level]
        negatives = rng.sample(candidates, min(args.negatives_per_query, len(candidates)))
        if not positives or not negatives:
            continue
        docs = positives + negatives
        groups.append(Group(train.queries[qid], [train.document(d) for d in docs],
                            [float(judged.get(d, 0)) for d in docs]))
    return groups, heldout


def elo_data(args: FinetuneArguments, first_stage: FirstStage, seed: int) -> tuple[list[Group], HeldOut]:
    """Training groups of --loss elo-mse: every document of --elo's queries (but the held-out ones) with its target
    :func:`zerank.training.zelo.elo_target` as grade, and the held-out part (as for the other losses)."""
    train, _, heldout = beir_split(args, first_stage, seed)
    scores = read_elo(args.elo)
    held_ids = set(heldout.qrels)
    unknown = sorted(q for q in scores if q not in train.queries)
    missing_docs = sum(1 for docs in scores.values() for d in docs if d not in train.corpus)
    if unknown or missing_docs:
        logger.warning("%s: %d queries not in %s/queries.jsonl and %d documents not in its corpus are skipped",
                       args.elo, len(unknown), args.data, missing_docs)
    skipped = sorted(q for q in scores if q in held_ids)
    if skipped:
        logger.info("%d queries of %s are held out: not trained on", len(skipped), args.elo)
    query_ids = [q for q in scores if q in train.queries and q not in held_ids]
    query_ids = query_ids[: args.max_train_queries] if args.max_train_queries else query_ids
    groups = []
    for qid in query_ids:
        docs = [d for d in scores[qid] if d in train.corpus]
        if docs:
            targets = elo_target([scores[qid][d] for d in docs]).tolist()
            groups.append(Group(train.queries[qid], [train.document(d) for d in docs], targets))
    return groups, heldout


def jsonl_graded_pairs(path: Path, relevance_level: int) -> list[tuple[str, str, float]]:
    """(query, document, grade) of every pair of a jsonl file, in file order
    (:func:`zerank.data.readers.pairs_from_jsonl`: a ``{query, positive, negatives}`` row's positive is graded
    ``max(1, relevance_level)``, its negatives 0)."""
    pairs = pairs_from_jsonl(path, label_threshold=relevance_level)
    return list(zip(pairs.queries, pairs.documents, pairs.grades.tolist()))


def _by_query(rows: Sequence[tuple[str, str, float]]) -> dict[str, list[tuple[str, float]]]:
    """Each query's (document, grade) rows, queries in order of first appearance."""
    grouped: dict[str, list[tuple[str, float]]] = {}
    for query, document, grade in rows:
        grouped.setdefault(query, []).append((document, grade))
    return grouped


def jsonl_data(args: FinetuneArguments, seed: int) -> tuple[list[Group], HeldOut]:
    """Training groups and the held-out part (file order is its first-stage order) of jsonl data."""
    rows = _by_query(jsonl_graded_pairs(args.data, args.relevance_level))
    if args.eval_data:
        held_rows = _by_query(jsonl_graded_pairs(args.eval_data, args.relevance_level))
        held_order = list(held_rows)
        train_order = [q for q in rows if q not in held_rows]
    else:
        order = list(rows)
        mask = holdout_mask(order, args.holdout_fraction, seed)
        held_order = [q for q, m in zip(order, mask) if m]
        held_rows, train_order = rows, [q for q, m in zip(order, mask) if not m]
    train_order = train_order[: args.max_train_queries] if args.max_train_queries else train_order
    groups = []
    for query in train_order:
        docs = sorted(rows[query], key=lambda item: -item[1])  # relevant first
        if any(g >= args.relevance_level for _, g in docs) and any(g < args.relevance_level for _, g in docs):
            groups.append(Group(query, [d for d, _ in docs], [g for _, g in docs]))

    corpus: dict[str, dict[str, str]] = {}
    queries: dict[str, str] = {}
    qrels: Qrels = {}
    candidates: Run = {}
    for i, query in enumerate(held_order[: args.eval_max_queries] if args.eval_max_queries else held_order):
        qid = f"q{i}"
        queries[qid], qrels[qid], candidates[qid] = query, {}, {}
        for j, (document, grade) in enumerate(held_rows[query]):
            doc_id = f"q{i}-d{j}"
            corpus[doc_id] = {"title": "", "text": document}
            candidates[qid][doc_id] = float(-j)  # the file order is the first-stage order
            qrels[qid][doc_id] = int(grade)
    name = (args.eval_data or args.data).name
    return groups, HeldOut(BeirDataset(name, "held out", corpus, queries, qrels), candidates)


