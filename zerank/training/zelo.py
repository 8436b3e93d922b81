"""zELO (arXiv 2509.12541): pairwise judgments -> per-query Elo scores -> targets for a pointwise reranker.

The math and the files of the pipeline; the commands (``zerank pairs``, ``zerank judge``, ``zerank elo``) are in
:mod:`zerank.training.zelo_commands`.

- **Which pairs.** Judging all n^2 pairs of a query's n candidates is too dear; :func:`random_cycles` draws ``c``
  random Hamiltonian cycles over them (each a random order closed into a loop), so every candidate is in exactly
  ``2c`` comparisons, the comparison graph is connected, and a query costs ``c * n`` judgments (the paper's k/2
  cycles of degree k: k = 2c).
- **The fit.** A judgment says how likely document a beats document b: ``p_a_wins`` in [0, 1] (an ensemble's soft
  preference) or a single winner (p = 1 or 0). Each query's documents get ratings ``e`` by maximum likelihood under
  Bradley-Terry, ``P(a beats b) = sigmoid(e_a - e_b)`` (Elo's model, in natural log-odds units: 400 / ln 10 = 174
  chess points per unit), or Thurstone, ``P = Phi(e_a - e_b)`` (the standard normal CDF). A soft p counts as p
  wins and 1 - p losses. A Gaussian prior N(0, prior_sd^2) on every rating keeps the fit finite and unique when the
  data are unanimous (a document that wins all its comparisons) or the graph is disconnected; it also centres each
  query's ratings at mean 0. The penalised negative log-likelihood is convex; scipy's trust-region Newton method
  minimises it with the exact gradient and Hessian, and the standard errors are the square roots of the diagonal
  of the inverse Hessian (a Laplace approximation of the posterior), taken for the ratings relative to their
  query's mean (the only thing the judgments measure).
- **Across queries.** Ratings fitted per query are defined only up to a constant per query: a query whose
  candidates are all relevant and one whose candidates are all junk both centre at 0. The paper estimates and
  subtracts a bias per query from *cross-query* comparisons (is document a a better answer to its query than
  document b is to its own?), fitted by maximum likelihood. :func:`normalise` does exactly that: with the per-query
  ratings ``e`` fixed, it fits one bias ``b_q`` per query under the same link and prior, from judgments of pairs of
  documents of different queries, ``P = F((e_a + b_qa) - (e_b + b_qb))``, and the Elo score is ``e + b_q`` (its
  standard error combines both fits' as independent). ``zerank pairs --query-cycles`` samples those pairs with the
  same random-cycles rule over the queries (a random document of each query of an edge), so the query graph is
  connected too. Queries without cross-query judgments keep ``b_q = 0`` (the prior's mean): their scores are
  comparable within the query only, which the fit report lists.

Files (jsonl, one row per line; errors name the file and line):
    pairs.jsonl      {"query_id", "doc_a", "doc_b", "query", "document_a", "document_b"} (+ "query_id_b",
                     "query_b" for a cross-query pair: doc_b is judged as an answer to query_id_b)
    judgments.jsonl  {"query_id", "doc_a", "doc_b", "p_a_wins": 0..1} or {..., "winner": "a" | "b"}
                     (+ "query_id_b" for a cross-query judgment); other fields are ignored
    elo.jsonl        {"query_id", "doc_id", "elo", "stderr"}
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from scipy import optimize, sparse, special
from scipy.sparse.csgraph import connected_components
from tqdm.auto import tqdm

from zerank.training.arguments import ELO_LINKS, ELO_PRIOR_SD
from zerank.data.readers import iter_jsonl

logger = logging.getLogger(__name__)

Link = Literal["bradley-terry", "thurstone"]
LINKS = ELO_LINKS
PRIOR_SD = ELO_PRIOR_SD  # barely felt by soft data (measured: Spearman unchanged from sd 3 to 100), bounds unanimous
MAX_ITERATIONS = 200
GRADIENT_TOLERANCE = 1e-6  # converged: no gradient component above this (the optimum is unique: convex objective)


# ---------------------------------------------------------------------------------------------------------------
# Which pairs to judge
# ---------------------------------------------------------------------------------------------------------------


def random_cycles(n: int, cycles: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """The edges of ``cycles`` random Hamiltonian cycles over items 0..n-1 (a random order closed into a loop),
    each edge in a random orientation (a judge's position bias averages out). Every item ends in exactly
    ``2 * cycles`` edges and the graph is connected; a pair may repeat across cycles (always for n = 2).
    Fewer than two items give no edge."""
    if cycles < 1:
        raise ValueError(f"cycles must be at least 1, got {cycles}.")
    if n < 2:
        return []
    edges = []
    for _ in range(cycles):
        order = rng.permutation(n)
        for i in range(n):
            a, b = int(order[i]), int(order[(i + 1) % n])
            edges.append((a, b) if rng.random() < 0.5 else (b, a))
    check_design(n, edges, 2 * cycles)
    return edges


def check_design(n: int, edges: Sequence[tuple[int, int]], degree: int) -> None:
    """Raise ValueError unless every item of 0..n-1 is in exactly ``degree`` edges and the graph is connected."""
    counts = np.bincount(np.asarray(edges, dtype=np.int64).reshape(-1), minlength=n) if edges else np.zeros(n)
    if (counts != degree).any():
        raise ValueError(f"comparison design: item degrees {sorted(set(counts.tolist()))}, expected {degree}.")
    if components(n, edges) > 1:
        raise ValueError("comparison design: the comparison graph is not connected.")


def component_labels(n: int, edges: Sequence[tuple[int, int]]) -> np.ndarray:
    """The connected component of each item of the graph over items 0..n-1 (labels 0, 1, ...)."""
    if not len(edges):
        return np.arange(n)
    a, b = np.asarray(edges, dtype=np.int64).T
    graph = sparse.coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def components(n: int, edges: Sequence[tuple[int, int]]) -> int:
    """The number of connected components of the graph over items 0..n-1."""
    return len(set(component_labels(n, edges).tolist()))


# ---------------------------------------------------------------------------------------------------------------
# Judgments
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Judgment:
    """How likely ``doc_a`` (for ``query_id``) beats ``doc_b`` (for ``query_id_b``: the same query unless this is a
    cross-query judgment)."""

    query_id: str
    doc_a: str
    doc_b: str
    p_a_wins: float
    query_id_b: str

    @property
    def cross_query(self) -> bool:
        return self.query_id_b != self.query_id


def judgment_from_row(row: object, where: str) -> Judgment:
    """A :class:`Judgment` from a parsed jsonl row; ValueError names ``where`` (``file:line``) and the problem."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: a judgment is a JSON object, got {type(row).__name__}.")
    for key in ("query_id", "doc_a", "doc_b"):
        if not isinstance(row.get(key), str) or not row[key]:
            raise ValueError(f"{where}: {key!r} must be a non-empty string (got {row.get(key)!r}).")
    query_b = row.get("query_id_b", row["query_id"])
    if not isinstance(query_b, str) or not query_b:
        raise ValueError(f"{where}: 'query_id_b' must be a non-empty string (got {query_b!r}).")
    if query_b == row["query_id"] and row["doc_a"] == row["doc_b"]:
        raise ValueError(f"{where}: a document cannot be compared with itself ({row['doc_a']!r}).")
    has_p, has_winner = "p_a_wins" in row, "winner" in row
    if has_p == has_winner:
        raise ValueError(f"{where}: give exactly one of 'p_a_wins' (a number in [0, 1]) and 'winner' ('a' or 'b').")
    if has_p:
        p = row["p_a_wins"]
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            raise ValueError(f"{where}: 'p_a_wins' must be a number in [0, 1], got {p!r}.")
    else:
        if row["winner"] not in ("a", "b"):
            raise ValueError(f"{where}: 'winner' must be 'a' or 'b', got {row['winner']!r}.")
        p = 1.0 if row["winner"] == "a" else 0.0
    return Judgment(row["query_id"], row["doc_a"], row["doc_b"], float(p), query_b)


def read_judgments(path: Path) -> list[Judgment]:
    """Every judgment of a jsonl file (see the module docstring), validated; errors name ``path:line``."""
    judgments = [judgment_from_row(row, f"{path}:{line_no}") for line_no, row in iter_jsonl(path)]
    if not judgments:
        raise ValueError(f"{path} holds no judgment.")
    return judgments


def judgment_row(judgment: Judgment) -> dict:
    """The jsonl row of a judgment (``query_id_b`` only for a cross-query one)."""
    row = {"query_id": judgment.query_id, "doc_a": judgment.doc_a, "doc_b": judgment.doc_b}
    if judgment.cross_query:
        row["query_id_b"] = judgment.query_id_b
    row["p_a_wins"] = judgment.p_a_wins
    return row


# ---------------------------------------------------------------------------------------------------------------
# The fit
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Fit:
    """Maximum a posteriori ratings, their standard errors and how the optimiser ended."""

    ratings: np.ndarray
    stderr: np.ndarray
    converged: bool
    iterations: int
    neg_log_likelihood: float  # of the judgments alone (no prior), summed


def _link_terms(delta: np.ndarray, p: np.ndarray, link: Link) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per judgment: the log-likelihood p log F(d) + (1 - p) log F(-d), its first and second derivatives in d."""
    if link == "bradley-terry":
        log_f, log_f_neg = -np.logaddexp(0.0, -delta), -np.logaddexp(0.0, delta)
        sig = special.expit(delta)
        return p * log_f + (1 - p) * log_f_neg, p - sig, -sig * (1 - sig)
    # Thurstone: F = Phi; d/dd log Phi(d) = r(d) = phi(d) / Phi(d), d2/dd2 log Phi(d) = -r(d) (d + r(d)).
    log_phi = -0.5 * delta**2 - 0.5 * math.log(2 * math.pi)
    log_f, log_f_neg = special.log_ndtr(delta), special.log_ndtr(-delta)
    r, r_neg = np.exp(log_phi - log_f), np.exp(log_phi - log_f_neg)
    value = p * log_f + (1 - p) * log_f_neg
    gradient = p * r - (1 - p) * r_neg
    curvature = -p * r * (delta + r) - (1 - p) * r_neg * (r_neg - delta)
    return value, gradient, curvature


def fit_ratings(n: int, a: Sequence[int], b: Sequence[int], p: Sequence[float], *,
                offset: Sequence[float] | None = None, link: Link = "bradley-terry",
                prior_sd: float = PRIOR_SD) -> Fit:
    """Ratings x of n items maximising sum_j log-lik(p_j; x[a_j] - x[b_j] + offset_j) - |x|^2 / (2 prior_sd^2).

    ``a``, ``b``: item indices of each judgment; ``p``: how likely a beats b (0..1); ``offset``: a known part of
    each rating difference (the per-query ratings, when fitting query biases). The objective is strictly convex, so
    the optimum is unique and finite for any data; the standard errors come from its inverse Hessian (relative to
    the mean of the item's connected component, which is 0).
    """
    if link not in LINKS:
        raise ValueError(f"link must be one of {LINKS}, got {link!r}.")
    if not prior_sd > 0:
        raise ValueError(f"prior_sd must be positive, got {prior_sd}.")
    a_idx, b_idx = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    wins = np.asarray(p, dtype=np.float64)
    shift = np.zeros(len(wins)) if offset is None else np.asarray(offset, dtype=np.float64)
    if n == 0:
        return Fit(np.zeros(0), np.zeros(0), True, 0, 0.0)
    # Incidence matrix: row j has +1 at a_j and -1 at b_j, so that A x is the vector of rating differences.
    rows = np.arange(len(wins))
    incidence = sparse.csr_matrix((np.r_[np.ones(len(rows)), -np.ones(len(rows))], (np.r_[rows, rows],
                                                                                    np.r_[a_idx, b_idx])),
                                  shape=(len(wins), n))
    precision = 1.0 / prior_sd**2

    def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
        value, gradient, _ = _link_terms(incidence @ x + shift, wins, link)
        return -value.sum() + 0.5 * precision * x @ x, -(incidence.T @ gradient) + precision * x

    def hessian(x: np.ndarray) -> np.ndarray:
        _, _, curvature = _link_terms(incidence @ x + shift, wins, link)
        return (incidence.T @ sparse.diags(-curvature) @ incidence).toarray() + precision * np.eye(n)

    result = optimize.minimize(objective, np.zeros(n), jac=True, hess=hessian, method="trust-exact",
                               options={"maxiter": MAX_ITERATIONS, "gtol": GRADIENT_TOLERANCE})
    # trust-exact may stop at float precision ("failure to predict improvement") with a negligible gradient.
    converged = bool(result.success or np.abs(result.jac).max() <= GRADIENT_TOLERANCE)
    # The likelihood fixes only differences within a connected component; the prior fixes each component's mean at
    # 0 and alone decides that mean's uncertainty (large for a weak prior). The standard errors are those of the
    # ratings relative to their component's mean: the inverse Hessian projected onto zero-mean directions.
    labels = component_labels(n, list(zip(a_idx.tolist(), b_idx.tolist())))
    same = labels[:, None] == labels[None, :]
    projection = np.eye(n) - same / same.sum(axis=1, keepdims=True)
    covariance = projection @ np.linalg.inv(hessian(result.x)) @ projection.T
    value, _, _ = _link_terms(incidence @ result.x + shift, wins, link)
    return Fit(result.x, np.sqrt(np.clip(np.diag(covariance), 0.0, None)), converged, int(result.nit),
               float(-value.sum()))


@dataclass
class QueryFit:
    """One query's per-query fit."""

    doc_ids: list[str]
    fit: Fit
    judgments: int
    components: int

    def report(self) -> dict:
        return {"documents": len(self.doc_ids), "judgments": self.judgments, "components": self.components,
                "converged": self.fit.converged, "iterations": self.fit.iterations,
                "neg_log_likelihood": self.fit.neg_log_likelihood}


def fit_query(judgments: Sequence[Judgment], *, link: Link = "bradley-terry", prior_sd: float = PRIOR_SD) -> QueryFit:
    """Per-query ratings of every document named in ``judgments`` (all of one query, none cross-query)."""
    doc_ids = sorted({j.doc_a for j in judgments} | {j.doc_b for j in judgments})
    index = {d: i for i, d in enumerate(doc_ids)}
    a = [index[j.doc_a] for j in judgments]
    b = [index[j.doc_b] for j in judgments]
    fit = fit_ratings(len(doc_ids), a, b, [j.p_a_wins for j in judgments], link=link, prior_sd=prior_sd)
    return QueryFit(doc_ids, fit, len(judgments), components(len(doc_ids), list(zip(a, b))))


@dataclass
class EloScores:
    """Elo scores of every (query, document) judged: ``elo = e + bias``, with standard errors."""

    queries: dict[str, QueryFit]
    bias: dict[str, float]
    bias_stderr: dict[str, float]
    anchored: set[str]  # queries whose bias was fitted from cross-query judgments
    bias_fit: Fit | None

    def rows(self) -> Iterable[dict]:
        """elo.jsonl rows, queries and documents in sorted order."""
        for qid in sorted(self.queries):
            query = self.queries[qid]
            for doc_id, e, se in zip(query.doc_ids, query.fit.ratings, query.fit.stderr):
                yield {"query_id": qid, "doc_id": doc_id, "elo": float(e + self.bias[qid]),
                       "stderr": float(math.hypot(se, self.bias_stderr[qid]))}


def normalise(queries: Mapping[str, QueryFit], cross: Sequence[Judgment], *, link: Link = "bradley-terry",
              prior_sd: float = PRIOR_SD) -> EloScores:
    """Fit one bias per query from cross-query judgments, the per-query ratings held fixed (see the module
    docstring); queries without cross-query judgments keep bias 0. Judgments naming a document or query that
    the per-query fits do not have raise ValueError."""
    rating = {(qid, d): float(e) for qid, q in queries.items() for d, e in zip(q.doc_ids, q.fit.ratings)}
    for j in cross:
        for key in ((j.query_id, j.doc_a), (j.query_id_b, j.doc_b)):
            if key not in rating:
                raise ValueError(f"a cross-query judgment names document {key[1]!r} of query {key[0]!r}, which no "
                                 "within-query judgment rates.")
    anchored = sorted({j.query_id for j in cross} | {j.query_id_b for j in cross})
    bias = dict.fromkeys(queries, 0.0)
    bias_stderr = dict.fromkeys(queries, 0.0)
    fit = None
    if cross:
        index = {q: i for i, q in enumerate(anchored)}
        fit = fit_ratings(len(anchored), [index[j.query_id] for j in cross], [index[j.query_id_b] for j in cross],
                          [j.p_a_wins for j in cross],
                          offset=[rating[j.query_id, j.doc_a] - rating[j.query_id_b, j.doc_b] for j in cross],
                          link=link, prior_sd=prior_sd)
        for q, i in index.items():
            bias[q], bias_stderr[q] = float(fit.ratings[i]), float(fit.stderr[i])
    return EloScores(dict(queries), bias, bias_stderr, set(anchored), fit)


def fit_elo(judgments: Sequence[Judgment], *, link: Link = "bradley-terry", prior_sd: float = PRIOR_SD,
            progress: bool = False) -> EloScores:
    """Per-query fits of the within-query judgments, then the cross-query normalisation."""
    by_query: dict[str, list[Judgment]] = {}
    for j in judgments:
        if not j.cross_query:
            by_query.setdefault(j.query_id, []).append(j)
    fits = {qid: fit_query(rows, link=link, prior_sd=prior_sd)
            for qid, rows in tqdm(sorted(by_query.items()), desc="Fitting", unit="query", disable=not progress)}
    return normalise(fits, [j for j in judgments if j.cross_query], link=link, prior_sd=prior_sd)


def read_elo(path: Path) -> dict[str, dict[str, float]]:
    """query id -> document id -> Elo score, from an elo.jsonl file; errors name ``path:line``."""
    scores: dict[str, dict[str, float]] = {}
    for line_no, row in iter_jsonl(path):
        if not isinstance(row, dict) or not isinstance(row.get("query_id"), str) or \
                not isinstance(row.get("doc_id"), str):
            raise ValueError(f"{path}:{line_no}: an Elo row needs string 'query_id' and 'doc_id'.")
        elo = row.get("elo")
        if isinstance(elo, bool) or not isinstance(elo, (int, float)) or not math.isfinite(elo):
            raise ValueError(f"{path}:{line_no}: 'elo' must be a finite number, got {elo!r}.")
        scores.setdefault(row["query_id"], {})[row["doc_id"]] = float(elo)
    if not scores:
        raise ValueError(f"{path} holds no Elo score.")
    return scores


def elo_target(elo):
    """The training target of an Elo score: sigmoid(elo), the probability of beating a document of rating 0 (an
    average candidate of the pool): monotone, bounded in (0, 1), so extreme ratings of unanimous data saturate."""
    return special.expit(np.asarray(elo, dtype=np.float64))
