"""Fit zerank's score temperature and bias on labelled pairs, report calibration before and after.

zerank's score is sigmoid((raw - b) / T), where raw is the "Yes" logit. This script scores labelled pairs once
(raw logits are cached in --output-dir, so refitting never reruns the model), splits them by query into a fit part
and a held-out part, fits T and b by minimum log loss on the fit part and reports on the held-out part, before
(the model's current T and b) and after: log loss, Brier score, expected calibration error (15 bins) and the score
thresholds that reach a few precision targets. With --write it stores the fit in the model folder's config.json
(the previous config is kept as a backup), so the published model carries it.

Labelled pairs come from a BEIR folder (positives: the split's judged-relevant documents; negatives: first-stage
top-k documents not judged relevant) or from a jsonl file of {"query", "document", "label"} rows (label 0/1, or a
grade that --label-threshold maps to 0/1) or {"query", "positive", "negatives"} rows.

Usage:
    python scripts/calibrate.py --model build/zerank-1 --data ../shared/data/ir/scifact --split test \\
        --output-dir runs/calib [--write]
    python scripts/calibrate.py --model build/zerank-1 --data labelled.jsonl --output-dir runs/calib

Outputs in --output-dir: calibration.json, reliability.png, calibration.md (for the model card's calibration
section: ``build.render_model_card(..., calibration=<calibration.md>)``) and the raw-logit cache raw-*.npz.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from beir import FirstStage, add_first_stage_args, first_stage_from_args, iter_jsonl, load_beir, select_queries
from evaluate import library_versions, load_cross_encoder, score_texts
from scoring import DEFAULT_MAX_BATCH_TOKENS

logger = logging.getLogger("zerank.calibrate")

ECE_BINS = 15
PRECISION_TARGETS = (0.5, 0.8, 0.9, 0.95)
MAX_TEMPERATURE = 1e6  # a fit that finds no positive relation between scores and labels stops here


# ---------------------------------------------------------------------------------------------------------------
# Labelled pairs
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class LabelledPairs:
    """(query, document, 0/1 label) rows; ``groups`` (one per row, e.g. the query id) keep a query on one side of
    a split."""

    queries: list[str]
    documents: list[str]
    labels: np.ndarray
    groups: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return list(zip(self.queries, self.documents))

    def take(self, index: np.ndarray) -> LabelledPairs:
        return LabelledPairs([self.queries[i] for i in index], [self.documents[i] for i in index],
                             self.labels[index], [self.groups[i] for i in index])

    def digest(self) -> str:
        h = hashlib.sha256()
        for q, d, y in zip(self.queries, self.documents, self.labels):
            h.update(f"{len(q)}:{q}{len(d)}:{d}{int(y)}".encode())
        return h.hexdigest()

    def summary(self) -> dict:
        return {"pairs": len(self), "positives": int(self.labels.sum()), "queries": len(set(self.groups))}


def pairs_from_beir(folder: Path, split: str, first_stage: FirstStage, *, top_k: int = 100,
                    relevance_level: int = 1, max_queries: int | None = None) -> LabelledPairs:
    """Positives: the split's documents graded >= ``relevance_level``; negatives: the first stage's top ``top_k``
    documents of the query graded lower or not judged."""
    dataset = load_beir(folder, split)
    query_ids = select_queries(dataset, max_queries)
    candidates = first_stage.retrieve(dataset, query_ids, top_k)
    queries, documents, labels, groups = [], [], [], []
    for qid in query_ids:
        judged = dataset.qrels[qid]
        positives = [d for d, grade in judged.items() if grade >= relevance_level and d in dataset.corpus]
        negatives = [d for d in candidates.get(qid, {}) if judged.get(d, 0) < relevance_level]
        for doc_id, label in [(d, 1.0) for d in positives] + [(d, 0.0) for d in negatives]:
            queries.append(dataset.queries[qid])
            documents.append(dataset.document(doc_id))
            labels.append(label)
            groups.append(qid)
    return LabelledPairs(queries, documents, np.asarray(labels, dtype=np.float64), groups)


def pairs_from_jsonl(path: Path, *, label_threshold: float = 1.0) -> LabelledPairs:
    """Rows {"query", "document", "label"} (label >= ``label_threshold`` is relevant) or {"query", "positive",
    "negatives"} (one relevant document, a list of irrelevant ones)."""
    queries, documents, labels = [], [], []
    for line_no, row in iter_jsonl(path):
        if not isinstance(row, dict) or not isinstance(row.get("query"), str):
            raise ValueError(f"{path}:{line_no}: each row needs a string 'query'.")
        if "document" in row and "label" in row:
            if not isinstance(row["document"], str) or not isinstance(row["label"], (int, float)):
                raise ValueError(f"{path}:{line_no}: 'document' must be a string and 'label' a number.")
            rows = [(row["document"], float(row["label"] >= label_threshold))]
        elif "positive" in row and isinstance(row.get("negatives"), list):
            rows = [(row["positive"], 1.0)] + [(n, 0.0) for n in row["negatives"]]
            if not all(isinstance(d, str) for d, _ in rows):
                raise ValueError(f"{path}:{line_no}: 'positive' and 'negatives' must be strings.")
        else:
            raise ValueError(f"{path}:{line_no}: expected {{query, document, label}} or "
                             f"{{query, positive, negatives}}, got keys {sorted(row)}.")
        for document, label in rows:
            queries.append(row["query"])
            documents.append(document)
            labels.append(label)
    if not labels:
        raise ValueError(f"{path} has no labelled pairs.")
    return LabelledPairs(queries, documents, np.asarray(labels, dtype=np.float64), list(queries))


def load_pairs(data: Path, *, split: str = "test", first_stage: FirstStage | None = None, top_k: int = 100,
               relevance_level: int = 1, max_queries: int | None = None) -> LabelledPairs:
    """Labelled pairs of a BEIR folder or a jsonl file (see the module doc)."""
    if data.is_dir():
        return pairs_from_beir(data, split, first_stage or FirstStage(), top_k=top_k,
                               relevance_level=relevance_level, max_queries=max_queries)
    if data.suffix == ".jsonl":
        return pairs_from_jsonl(data, label_threshold=relevance_level)
    raise ValueError(f"--data must be a BEIR folder or a .jsonl file, got {data}.")


def holdout_mask(groups: Sequence[str], holdout_fraction: float, seed: int) -> np.ndarray:
    """True for the rows held out: those of a seeded share of the groups (queries), so no query is on both sides."""
    if not 0 < holdout_fraction < 1:
        raise ValueError(f"--holdout-fraction must be between 0 and 1, got {holdout_fraction}.")
    unique = sorted(set(groups))
    if len(unique) < 2:
        raise ValueError("Calibration needs pairs of at least two queries (one to fit, one to check).")
    count = min(len(unique) - 1, max(1, round(holdout_fraction * len(unique))))
    held = set(np.random.default_rng(seed).permutation(unique)[:count].tolist())
    return np.array([g in held for g in groups])


# ---------------------------------------------------------------------------------------------------------------
# Fit and metrics (reused by finetune.py)
# ---------------------------------------------------------------------------------------------------------------


def calibrated_scores(raw: np.ndarray, temperature: float, bias: float) -> np.ndarray:
    """sigmoid((raw - bias) / temperature) in float64."""
    from scipy.special import expit

    return expit((np.asarray(raw, dtype=np.float64) - bias) / temperature)


def fit_temperature_bias(raw: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """T and b minimising the mean log loss of sigmoid((raw - b) / T) against 0/1 ``labels``.

    Fitted as a one-feature logistic regression z = a * raw + c (convex), then T = 1 / a and b = -c / a. A slope
    that would be zero or negative (scores unrelated or opposed to the labels) is held at 1 / MAX_TEMPERATURE,
    with a warning, so the ranking is never inverted. A small ridge term (0.005 a^2 / n, on standardised logits)
    keeps the fit finite when the scores separate the labels perfectly, as they can on few pairs; it moves T by
    less than 0.5% on 200 pairs and less than 0.05% on 2,000.
    """
    from scipy.optimize import minimize
    from scipy.special import expit

    raw = np.asarray(raw, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if raw.shape != y.shape or raw.ndim != 1:
        raise ValueError(f"raw and labels must be 1-D arrays of the same length, got {raw.shape} and {y.shape}.")
    if not np.isfinite(raw).all():
        raise ValueError("raw logits contain NaN or infinite values.")
    if not ((y == 0) | (y == 1)).all():
        raise ValueError("labels must be 0 or 1.")
    if y.min() == y.max():
        raise ValueError(f"Calibration needs both relevant and irrelevant pairs; every label is {int(y[0])}.")
    if len(y) < 50 or min(y.sum(), len(y) - y.sum()) < 5:
        logger.warning("Fitting T and b on %d pairs (%d relevant): too few for a reliable calibration.", len(y),
                       int(y.sum()))
    scale = raw.std() or 1.0  # fit on standardised logits, for a well-conditioned problem
    ridge = 0.01 / len(y)

    def loss(params):
        z = params[0] * raw / scale + params[1]
        residual = expit(z) - y
        value = np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * ridge * params[0] ** 2
        return value, np.array([np.mean(residual * raw / scale) + ridge * params[0], residual.mean()])

    result = minimize(loss, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B",
                      bounds=[(scale / MAX_TEMPERATURE, None), (None, None)], options={"maxiter": 1000})
    if not result.success:
        logger.warning("The temperature/bias fit did not fully converge: %s", result.message)
    slope, intercept = result.x[0] / scale, result.x[1]
    if result.x[0] <= scale / MAX_TEMPERATURE * (1 + 1e-6):
        logger.warning("The scores show no positive relation to the labels; the temperature is held at %g.",
                       MAX_TEMPERATURE)
    # Six significant digits: the config and the model card stay readable, scores move by < 1e-6.
    return float(f"{1.0 / slope:.6g}"), float(f"{-intercept / slope:.6g}")


def calibration_metrics(p: np.ndarray, y: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, float]:
    """Log loss, Brier score and expected calibration error (``n_bins`` equal-width bins) of scores ``p``."""
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if p.shape != y.shape or not len(p):
        raise ValueError(f"scores and labels must be non-empty and of the same length, got {p.shape}, {y.shape}.")
    clipped = np.clip(p, 1e-12, 1 - 1e-12)
    log_loss = -np.mean(y * np.log(clipped) + (1 - y) * np.log1p(-clipped))
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    ece = sum(abs(p[bins == b].mean() - y[bins == b].mean()) * np.mean(bins == b)
              for b in range(n_bins) if (bins == b).any())
    return {"log_loss": float(log_loss), "brier": float(np.mean((p - y) ** 2)), "ece": float(ece)}


def precision_thresholds(p: np.ndarray, y: np.ndarray, targets: Sequence[float] = PRECISION_TARGETS) -> dict:
    """For each precision target, the lowest score threshold t whose pairs with score >= t reach it (the most
    recall at that precision), with the precision and recall there; None where no threshold reaches it."""
    order = np.argsort(-np.asarray(p), kind="stable")
    scores, hits = np.asarray(p)[order], np.asarray(y)[order]
    # Only cut between distinct scores: a threshold keeps every pair with the same score.
    last_of_value = np.r_[scores[1:] != scores[:-1], True]
    kept = np.arange(1, len(scores) + 1)[last_of_value]
    precision = np.cumsum(hits)[last_of_value] / kept
    recall = np.cumsum(hits)[last_of_value] / max(hits.sum(), 1)
    thresholds = scores[last_of_value]
    result = {}
    for target in targets:
        ok = np.flatnonzero(precision >= target)
        if ok.size:
            i = ok[-1]
            result[str(target)] = {"threshold": float(thresholds[i]), "precision": float(precision[i]),
                                   "recall": float(recall[i])}
        else:
            result[str(target)] = None
    return result


def reliability_diagram(path: Path, labels: np.ndarray, curves: dict[str, np.ndarray], n_bins: int = ECE_BINS):
    """Save a reliability diagram (observed relevance rate against mean score, per bin) and a score histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 7), height_ratios=[3, 1], sharex=True)
    top.plot([0, 1], [0, 1], "k:", label="perfect calibration")
    edges = np.linspace(0, 1, n_bins + 1)
    for name, p in curves.items():
        bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
        used = [b for b in range(n_bins) if (bins == b).any()]
        ece = calibration_metrics(p, labels, n_bins)["ece"]
        top.plot([p[bins == b].mean() for b in used], [labels[bins == b].mean() for b in used], "o-",
                 label=f"{name} (ECE {ece:.3f})")
        bottom.hist(p, bins=edges, alpha=0.5, label=name)
    top.set_ylabel("observed share of relevant pairs")
    top.set_title("Reliability on held-out pairs")
    top.legend(loc="upper left")
    bottom.set_xlabel("score")
    bottom.set_ylabel("pairs")
    bottom.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def calibration_markdown(result: dict) -> str:
    """A few lines for the model card's calibration section."""
    before, after, held = result["before"], result["after"], result["heldout"]
    header = (f"Fitted by `{result.get('fitted_by', 'scripts/calibrate.py')}` on {result['fit']['pairs']} labelled "
              f"pairs of {result['data']} "
              f"(minimum log loss of sigmoid((raw - b) / T)); on {held['pairs']} held-out pairs:")
    rows = [(f"before (T={result['initial']['temperature']:.4g}, b={result['initial']['bias']:.4g})", before),
            (f"after (T={result['temperature']:.4g}, b={result['bias']:.4g})", after)]
    lines = [header, "", "| | Log loss | Brier | ECE (15 bins) |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {m['log_loss']:.4f} | {m['brier']:.4f} | {m['ece']:.4f} |" for name, m in rows]
    reached = {t: v for t, v in result["thresholds"]["after"].items() if v}
    if reached:
        lines += ["", "Score thresholds on the held-out pairs: " + "; ".join(
            f"precision {float(t):.0%} at score >= {v['threshold']:.3f} (recall {v['recall']:.0%})"
            for t, v in reached.items()) + "."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# Raw logits (cached) and the config
# ---------------------------------------------------------------------------------------------------------------


def model_fingerprint(model_path: str) -> dict:
    """What identifies a model's raw logits: its config without the calibration fields and its weight files."""
    folder = Path(model_path)
    if not folder.is_dir():
        return {"model": model_path}
    config = json.loads((folder / "config.json").read_text())
    for key in ("score_temperature", "score_bias", "max_batch_tokens", "transformers_version"):
        config.pop(key, None)
    weights = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.glob("*.safetensors"))
    return {"model": str(folder.resolve()), "config": config, "weights": weights}


def cached_raw_logits(model_path: str, pairs: LabelledPairs, cache_dir: Path, *, load_model, **score_kwargs
                      ) -> tuple[np.ndarray, Path, bool]:
    """Raw "Yes" logits of ``pairs``, read from ``cache_dir`` if this model scored these pairs before.

    ``load_model`` is called only on a cache miss. Returns (raw logits, cache file, whether it was a hit).
    """
    key = hashlib.sha256(json.dumps(
        {"fingerprint": model_fingerprint(model_path), "pairs": pairs.digest(),
         **{k: v for k, v in score_kwargs.items() if k in ("max_length", "instruction")}},
        sort_keys=True, default=str).encode()).hexdigest()[:16]
    cache = cache_dir / f"raw-{key}.npz"
    if cache.exists():
        stored = np.load(cache)
        if len(stored["raw"]) == len(pairs) and np.array_equal(stored["labels"], pairs.labels):
            logger.info("Using the cached raw logits %s", cache)
            return stored["raw"].astype(np.float64), cache, True
    model = load_model()
    if getattr(model.model.config, "model_type", None) != "zerank":
        raise ValueError(f"{model_path} is not a zerank model: calibration fits zerank's score_temperature/bias.")
    instruction = score_kwargs.get("instruction")
    predict_kwargs = {"processing_kwargs": {"chat_template": {"instruction": instruction}}} if instruction else {}
    logger.info("Scoring %d pairs", len(pairs))
    began = time.perf_counter()
    raw = score_texts(model, pairs.pairs, output="raw", max_batch_tokens=score_kwargs.get("max_batch_tokens",
                      DEFAULT_MAX_BATCH_TOKENS), batch_size=score_kwargs.get("batch_size"), **predict_kwargs)
    logger.info("Scored in %.1fs", time.perf_counter() - began)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(cache, raw=raw, labels=pairs.labels)
    return raw.astype(np.float64), cache, False


def read_calibration(model_path: str) -> tuple[float, float]:
    """The model's current (score_temperature, score_bias)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path, trust_remote_code=True)
    if getattr(config, "model_type", None) != "zerank":
        raise ValueError(f"{model_path} is not a zerank model (model_type {config.model_type!r}).")
    return float(config.score_temperature), float(config.score_bias)


def write_calibration(model_dir: Path, temperature: float, bias: float) -> Path:
    """Store T and b in ``model_dir/config.json``; the previous file is kept as config.json.<time>.bak."""
    config_path = Path(model_dir) / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"--write needs a local model folder with a config.json; {config_path} not found.")
    if not temperature > 0 or not np.isfinite([temperature, bias]).all():
        raise ValueError(f"Refusing to write temperature={temperature}, bias={bias}.")
    backup = config_path.with_name(f"config.json.{time.strftime('%Y%m%d-%H%M%S')}.bak")
    shutil.copy2(config_path, backup)
    config = json.loads(config_path.read_text())
    config["score_temperature"] = float(temperature)
    config["score_bias"] = float(bias)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    logger.info("Wrote score_temperature=%.6g, score_bias=%.6g to %s (backup %s)", temperature, bias, config_path,
                backup.name)
    return backup


def calibrate(raw_fit: np.ndarray, y_fit: np.ndarray, raw_held: np.ndarray, y_held: np.ndarray,
              initial: tuple[float, float], targets: Sequence[float] = PRECISION_TARGETS) -> dict:
    """Fit on one part, report on the other, before (``initial`` T, b) and after."""
    temperature, bias = fit_temperature_bias(raw_fit, y_fit)
    before = calibrated_scores(raw_held, *initial)
    after = calibrated_scores(raw_held, temperature, bias)
    return {
        "temperature": temperature,
        "bias": bias,
        "initial": {"temperature": initial[0], "bias": initial[1]},
        "before": calibration_metrics(before, y_held),
        "after": calibration_metrics(after, y_held),
        "fit_log_loss": {"before": calibration_metrics(calibrated_scores(raw_fit, *initial), y_fit)["log_loss"],
                         "after": calibration_metrics(calibrated_scores(raw_fit, temperature, bias),
                                                      y_fit)["log_loss"]},
        "thresholds": {"before": precision_thresholds(before, y_held, targets),
                       "after": precision_thresholds(after, y_held, targets)},
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="zerank folder (or hub id; --write needs a folder).")
    parser.add_argument("--data", type=Path, required=True, help="BEIR folder or jsonl file of labelled pairs.")
    parser.add_argument("--split", default="test", help="BEIR qrels split to draw pairs from (default: test).")
    parser.add_argument("--top-k", type=int, default=100, help="BEIR: first-stage candidates used as negatives.")
    add_first_stage_args(parser)
    parser.add_argument("--max-queries", type=int, help="BEIR: use only the first N judged queries.")
    parser.add_argument("--label-threshold", "--relevance-level", dest="label_threshold", type=int, default=1,
                        help="Smallest grade / label counted as relevant (default: 1).")
    parser.add_argument("--holdout-fraction", type=float, default=0.5,
                        help="Share of the queries held out to report on (default: 0.5).")
    parser.add_argument("--precision-targets", default=",".join(map(str, PRECISION_TARGETS)),
                        help="Comma-separated precision targets for the score thresholds.")
    parser.add_argument("--max-batch-tokens", type=int, default=DEFAULT_MAX_BATCH_TOKENS,
                        help="Token budget of one scoring batch (pairs x longest pair).")
    parser.add_argument("--batch-size", type=int, help="Also cap each scoring batch at this many pairs.")
    parser.add_argument("--max-length", type=int, help="Cut pairs to this many tokens (default: the model's).")
    parser.add_argument("--instruction", help="An instruction rendered with every query (as at inference).")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu).")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the fit/held-out split.")
    parser.add_argument("--output-dir", type=Path, required=True, help="Where results and the logit cache go.")
    parser.add_argument("--write", action="store_true",
                        help="Store the fitted T and b in the model folder's config.json (keeps a backup).")
    ns = parser.parse_args(argv)
    try:
        ns.precision_targets = tuple(float(t) for t in ns.precision_targets.split(","))
    except ValueError:
        parser.error(f"--precision-targets must be comma-separated numbers, got {ns.precision_targets!r}")
    if ns.write and not Path(ns.model).is_dir():
        parser.error("--write needs --model to be a local folder")
    return ns


def main(argv: list[str] | None = None) -> dict:
    ns = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    pairs = load_pairs(ns.data, split=ns.split, first_stage=first_stage_from_args(ns), top_k=ns.top_k,
                       relevance_level=ns.label_threshold, max_queries=ns.max_queries)
    held_mask = holdout_mask(pairs.groups, ns.holdout_fraction, ns.seed)
    fit_part, held_part = pairs.take(np.flatnonzero(~held_mask)), pairs.take(np.flatnonzero(held_mask))
    logger.info("%d labelled pairs: fitting on %s, reporting on %s", len(pairs), fit_part.summary(),
                held_part.summary())
    initial = read_calibration(ns.model)
    raw, cache, hit = cached_raw_logits(
        ns.model, pairs, ns.output_dir,
        load_model=lambda: load_cross_encoder(ns.model, device=ns.device, dtype=ns.dtype, max_length=ns.max_length),
        max_length=ns.max_length, instruction=ns.instruction, max_batch_tokens=ns.max_batch_tokens,
        batch_size=ns.batch_size,
    )
    result = calibrate(raw[~held_mask], pairs.labels[~held_mask], raw[held_mask], pairs.labels[held_mask], initial,
                       ns.precision_targets)
    result.update({
        "model": ns.model,
        "data": f"{ns.data.name} ({ns.split})" if ns.data.is_dir() else ns.data.name,
        "fit": fit_part.summary(),
        "heldout": held_part.summary(),
        "cache": {"file": str(cache), "hit": hit},
        "settings": {"holdout_fraction": ns.holdout_fraction, "seed": ns.seed, "label_threshold": ns.label_threshold,
                     "top_k": ns.top_k, "max_length": ns.max_length, "instruction": ns.instruction},
        "versions": library_versions(),
    })
    out = ns.output_dir
    out.mkdir(parents=True, exist_ok=True)
    reliability_diagram(out / "reliability.png", pairs.labels[held_mask], {
        f"before (T={initial[0]:.3g}, b={initial[1]:.3g})": calibrated_scores(raw[held_mask], *initial),
        f"after (T={result['temperature']:.3g}, b={result['bias']:.3g})":
            calibrated_scores(raw[held_mask], result["temperature"], result["bias"]),
    })
    if ns.write:
        result["backup"] = str(write_calibration(Path(ns.model), result["temperature"], result["bias"]))
    (out / "calibration.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "calibration.md").write_text(calibration_markdown(result))
    logger.info("T=%.4g b=%.4g; held-out before %s, after %s", result["temperature"], result["bias"],
                result["before"], result["after"])
    return result


if __name__ == "__main__":
    main()
