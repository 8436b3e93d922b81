"""Fit zerank's score temperature and bias on labelled pairs, report calibration before and after.

zerank's score is sigmoid((raw - b) / T), where raw is the "Yes" logit (the formula lives in
:func:`zerank.model.scoring.calibrated_score`). ``zerank calibrate`` scores labelled pairs once (raw logits are cached in
--output-dir, so refitting never reruns the model), splits them by query into a fit part and a held-out part, fits
T and b by minimum log loss on the fit part and reports on the held-out part, before (the model's current T and b)
and after: log loss, Brier score, expected calibration error (15 bins) and the score thresholds that reach a few
precision targets. With --write it stores the fit in the model folder's config.json (replaced atomically; the
previous config is kept as a backup in --output-dir, outside the package), so the published model carries it.

Labelled pairs come from a BEIR folder (positives: the split's judged-relevant documents; negatives: first-stage
top-k documents not judged relevant) or from a jsonl file of {"query", "document", "label"} rows (label 0/1, or a
grade that --label-threshold maps to 0/1) or {"query", "positive", "negatives"} rows.

Usage:
    zerank calibrate --model build/zerank-1 --data ../shared/data/ir/scifact --split test \\
        --output-dir runs/calib [--write]
    zerank calibrate --model build/zerank-1 --data labelled.jsonl --output-dir runs/calib \\
        --precision-targets 0.8 0.9

Outputs in --output-dir (each written atomically): calibration.json, reliability.png, calibration.md (for the model
card's calibration section: ``package.render_model_card(..., calibration=<calibration.md>)``) and the raw-logit
cache raw-*.npz.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from datetime import datetime
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from scipy.optimize import minimize
from scipy.special import expit
from sentence_transformers import CrossEncoder
from transformers import AutoConfig

from zerank_fast_path import FastPathSettings
from zerank.evaluation.arguments import CalibrateArguments, check_calibrate
from zerank.utils.arguments import FirstStageArguments, ModelArguments, ScoringArguments
from zerank.data.readers import LabelledPairs, holdout_mask, load_beir, pairs_from_beir, pairs_from_jsonl, select_queries
from zerank.model.fingerprint import model_fingerprint
from zerank.model.loading import is_zerank, load_from_arguments
from zerank.model.package import ZERANK_FIELDS
from zerank.evaluation.first_stage import FirstStage
from zerank.model.scoring import calibrated_score, score_pairs
from zerank.utils.system import atomic_write_bytes, atomic_write_json, atomic_write_text, library_versions

logger = logging.getLogger(__name__)

ECE_BINS = 15
MAX_TEMPERATURE = 1e6  # a fit that finds no positive relation between scores and labels stops here
# The --precision-targets default (its one home is CalibrateArguments), for callers that pass no targets.
PRECISION_TARGETS: tuple[float, ...] = tuple(
    next(f for f in fields(CalibrateArguments) if f.name == "precision_targets").default_factory()
)
# The zerank config fields that change the raw "Yes" logit of a pair (the scoring row, the query cut). The others
# (calibration and inference batching: score_temperature/bias, prefix sharing, batch-token budgets) do not, so
# they stay out of the raw-logit cache key.
RAW_LOGIT_FIELDS = ("yes_token_id", "max_query_tokens")
# Packages built before 0.3 also carry the fast path's runtime settings in config.json: they never change a logit.
CACHE_KEY_IGNORED_FIELDS = (*(name for name in ZERANK_FIELDS if name not in RAW_LOGIT_FIELDS),
                            *(f.name for f in fields(FastPathSettings)), "transformers_version")


# ---------------------------------------------------------------------------------------------------------------
# Labelled pairs
# ---------------------------------------------------------------------------------------------------------------


def load_pairs(data: Path, *, split: str = "test", first_stage: FirstStage | None = None, top_k: int = 100,
               relevance_level: int = 1, max_queries: int | None = None) -> LabelledPairs:
    """Labelled pairs of a BEIR folder (judged positives, the first stage's top ``top_k`` as negatives: see
    :func:`zerank.data.readers.pairs_from_beir`) or of a jsonl file (:func:`zerank.data.readers.pairs_from_jsonl`)."""
    data = Path(data)
    if data.is_dir():
        dataset = load_beir(data, split)
        query_ids = select_queries(dataset, max_queries)
        first_stage = first_stage or FirstStage()
        logger.info("Retrieving the first stage's top %d (%s) as negatives", top_k, first_stage.describe())
        candidates = first_stage.retrieve(dataset, query_ids, top_k)
        return pairs_from_beir(dataset, query_ids, candidates, relevance_level=relevance_level)
    if data.suffix == ".jsonl":
        return pairs_from_jsonl(data, label_threshold=relevance_level)
    raise ValueError(f"--data must be a BEIR folder or a .jsonl file, got {data}.")


# ---------------------------------------------------------------------------------------------------------------
# Fit and metrics
# ---------------------------------------------------------------------------------------------------------------


def fit_temperature_bias(raw: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """T and b minimising the mean log loss of sigmoid((raw - b) / T) against 0/1 ``labels``.

    Fitted as a one-feature logistic regression z = a * raw + c (convex), then T = 1 / a and b = -c / a. A slope
    that would be zero or negative (scores unrelated or opposed to the labels) is held at 1 / MAX_TEMPERATURE,
    with a warning, so the ranking is never inverted. A small ridge term (0.005 a^2 / n, on standardised logits)
    keeps the fit finite when the scores separate the labels perfectly, as they can on few pairs; it moves T by
    less than 0.5% on 200 pairs and less than 0.05% on 2,000.
    """
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


def reliability_diagram(path: Path, labels: np.ndarray, curves: Mapping[str, np.ndarray],
                        n_bins: int = ECE_BINS) -> None:
    """Save (atomically, as PNG) a reliability diagram (observed relevance rate against mean score, per bin) and a
    score histogram. Drawn on a bare ``Figure``, so pyplot's global backend is left alone."""
    fig = Figure(figsize=(6, 7))
    top, bottom = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
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
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    atomic_write_bytes(path, png.getvalue())


def calibration_markdown(result: Mapping) -> str:
    """A few lines for the model card's calibration section."""
    before, after, held = result["before"], result["after"], result["heldout"]
    header = (f"Fitted by `{result.get('fitted_by', 'zerank calibrate')}` on {result['fit']['pairs']} labelled "
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


def calibrate(raw_fit: np.ndarray, y_fit: np.ndarray, raw_held: np.ndarray, y_held: np.ndarray,
              initial: tuple[float, float], targets: Sequence[float] = PRECISION_TARGETS) -> dict:
    """Fit on one part, report on the other, before (``initial`` T, b) and after."""
    temperature, bias = fit_temperature_bias(raw_fit, y_fit)
    before = calibrated_score(raw_held, *initial)
    after = calibrated_score(raw_held, temperature, bias)
    return {
        "temperature": temperature,
        "bias": bias,
        "initial": {"temperature": initial[0], "bias": initial[1]},
        "before": calibration_metrics(before, y_held),
        "after": calibration_metrics(after, y_held),
        "fit_log_loss": {"before": calibration_metrics(calibrated_score(raw_fit, *initial), y_fit)["log_loss"],
                         "after": calibration_metrics(calibrated_score(raw_fit, temperature, bias),
                                                      y_fit)["log_loss"]},
        "thresholds": {"before": precision_thresholds(before, y_held, targets),
                       "after": precision_thresholds(after, y_held, targets)},
    }


# ---------------------------------------------------------------------------------------------------------------
# Raw logits (cached) and the config
# ---------------------------------------------------------------------------------------------------------------


def cached_raw_logits(model_path: str, pairs: LabelledPairs, cache_dir: Path, *,
                      load_model: Callable[[], CrossEncoder], max_length: int | None = None,
                      instruction: str | None = None, max_batch_tokens: int | None = None,
                      batch_size: int | None = None) -> tuple[np.ndarray, Path, bool]:
    """Raw "Yes" logits of ``pairs``, read from ``cache_dir`` if this model scored these pairs before.

    The cache key is the model's fingerprint, the pairs, ``max_length`` and ``instruction`` (the batching settings
    do not change the logits). ``load_model`` is called only on a cache miss. Returns (raw logits as float64, cache
    file, whether it was a hit).
    """
    fingerprint = model_fingerprint(model_path, ignored_config_fields=CACHE_KEY_IGNORED_FIELDS)
    key = hashlib.sha256(json.dumps(
        {"fingerprint": fingerprint, "pairs": pairs.digest(), "max_length": max_length, "instruction": instruction},
        sort_keys=True, default=str).encode()).hexdigest()[:16]
    cache = Path(cache_dir) / f"raw-{key}.npz"
    if cache.exists():
        with np.load(cache) as stored:
            stored_raw, stored_labels = stored["raw"], stored["labels"]
        if len(stored_raw) == len(pairs) and np.array_equal(stored_labels, pairs.labels):
            logger.info("Using the cached raw logits %s", cache)
            return stored_raw.astype(np.float64), cache, True
    model = load_model()
    if not is_zerank(model):
        raise ValueError(f"{model_path} is not a zerank model: calibration fits zerank's score_temperature/bias.")
    logger.info("Scoring %d pairs", len(pairs))
    began = time.perf_counter()
    raw = score_pairs(model, pairs.pairs, output="raw", max_batch_tokens=max_batch_tokens, batch_size=batch_size,
                      instruction=instruction, show_progress_bar=True)
    logger.info("Scored in %.1fs", time.perf_counter() - began)
    buffer = io.BytesIO()
    np.savez(buffer, raw=raw, labels=pairs.labels)
    atomic_write_bytes(cache, buffer.getvalue())
    return raw.astype(np.float64), cache, False


def read_calibration(model_path: str) -> tuple[float, float]:
    """The model's current (score_temperature, score_bias)."""
    config = AutoConfig.from_pretrained(model_path, trust_remote_code=True)
    if getattr(config, "model_type", None) != "zerank":
        raise ValueError(f"{model_path} is not a zerank model (model_type {config.model_type!r}).")
    return float(config.score_temperature), float(config.score_bias)


def write_calibration(model_dir: Path, temperature: float, bias: float, backup_dir: Path) -> Path:
    """Store T and b in ``model_dir/config.json``; the previous file is first kept as
    ``backup_dir/config.json.<time>.bak`` (time to the microsecond; outside the package, so it is never published),
    whose path is returned.

    Both writes are atomic (``system.atomic_write_bytes``: a temporary file, fsync, rename): a process killed at any
    moment leaves the old or the new config.json, never a partial one."""
    config_path = Path(model_dir) / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"--write needs a local model folder with a config.json; {config_path} not found.")
    if not temperature > 0 or not np.isfinite([temperature, bias]).all():
        raise ValueError(f"Refusing to write temperature={temperature}, bias={bias}.")
    previous = config_path.read_bytes()
    backup = atomic_write_bytes(Path(backup_dir) / f"config.json.{datetime.now():%Y%m%d-%H%M%S-%f}.bak", previous)
    config = json.loads(previous)
    config["score_temperature"] = float(temperature)
    config["score_bias"] = float(bias)
    atomic_write_json(config_path, dict(sorted(config.items())))
    logger.info("Wrote score_temperature=%.6g, score_bias=%.6g to %s (previous config kept as %s)", temperature, bias,
                config_path, backup)
    return backup


# ---------------------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------------------


def main(args: CalibrateArguments, model_args: ModelArguments, scoring_args: ScoringArguments,
         first_stage_args: FirstStageArguments) -> dict:
    """``zerank calibrate``: fit T and b, report before and after, optionally write them; returns the report."""
    check_calibrate(args, model_args)
    pairs = load_pairs(args.data, split=args.split, first_stage=FirstStage.from_arguments(first_stage_args),
                       top_k=args.top_k, relevance_level=args.label_threshold, max_queries=args.max_queries)
    held_mask = holdout_mask(pairs.groups, args.holdout_fraction, args.seed)
    fit_part, held_part = pairs.take(np.flatnonzero(~held_mask)), pairs.take(np.flatnonzero(held_mask))
    logger.info("%d labelled pairs: fitting on %s, reporting on %s", len(pairs), fit_part.summary(),
                held_part.summary())
    initial = read_calibration(model_args.model)
    raw, cache, hit = cached_raw_logits(
        model_args.model, pairs, args.output_dir, load_model=lambda: load_from_arguments(model_args),
        max_length=model_args.max_length, instruction=scoring_args.instruction,
        max_batch_tokens=model_args.max_batch_tokens, batch_size=scoring_args.batch_size,
    )
    result = calibrate(raw[~held_mask], pairs.labels[~held_mask], raw[held_mask], pairs.labels[held_mask], initial,
                       args.precision_targets)
    result.update({
        "model": model_args.model,
        "data": f"{args.data.name} ({args.split})" if args.data.is_dir() else args.data.name,
        "fit": fit_part.summary(),
        "heldout": held_part.summary(),
        "cache": {"file": str(cache), "hit": hit},
        "settings": {"holdout_fraction": args.holdout_fraction, "seed": args.seed,
                     "label_threshold": args.label_threshold, "top_k": args.top_k,
                     "max_length": model_args.max_length, "instruction": scoring_args.instruction,
                     "precision_targets": list(args.precision_targets)},
        "versions": library_versions(),
    })
    out = args.output_dir
    reliability_diagram(out / "reliability.png", pairs.labels[held_mask], {
        f"before (T={initial[0]:.3g}, b={initial[1]:.3g})": calibrated_score(raw[held_mask], *initial),
        f"after (T={result['temperature']:.3g}, b={result['bias']:.3g})":
            calibrated_score(raw[held_mask], result["temperature"], result["bias"]),
    })
    if args.write:
        result["backup"] = str(write_calibration(Path(model_args.model), result["temperature"], result["bias"], out))
    atomic_write_json(out / "calibration.json", result)
    atomic_write_text(out / "calibration.md", calibration_markdown(result))
    logger.info("T=%.4g b=%.4g; held-out before %s, after %s", result["temperature"], result["bias"],
                result["before"], result["after"])
    return result
