"""Fitting a cascade on a validation set: answer scorers and the threshold search (FrugalGPT, Chen et al. 2023).

A scorer maps one generated answer to a number, higher = more likely correct. Two are built in:

    mean_logprob      mean log-probability of the answer's tokens under the model that wrote it (no training)
    LogisticScorer    logistic regression on (mean log-prob, min log-prob, answer length), one fit per model,
                      trained on validation answers labelled correct / wrong (FrugalGPT trains a small scorer
                      too; a 3-feature logistic model is the cheapest version of that idea)

Threshold search: stage i accepts its answer when score >= thresholds[i], else the query goes on to stage i + 1;
the last stage always answers. Given every model's answer to every validation query, the accuracy and the mean
cost of any threshold vector are exact, so `fit_thresholds` tries candidates and keeps the most accurate vector
whose mean cost per query is within the budget (ties: the cheaper one). Candidates per stage are -inf (always
accept), +inf (always escalate) and the midpoints between consecutive distinct observed scores, which covers
every distinct split of the validation set; past `max_combinations` vectors each stage's scores are thinned to
evenly spaced quantiles first.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .cascade import Answer

FEATURES = ("mean_logprob", "min_logprob", "n_tokens")


def mean_logprob(answer: Answer) -> float:
    """Mean log-probability per generated token (0 = certain; more negative = less sure)."""
    return answer.mean_logprob


def answer_features(answer: Answer) -> np.ndarray:
    """(mean log-prob, min log-prob, number of generated tokens): the LogisticScorer's inputs."""
    return np.array([answer.mean_logprob, answer.min_logprob, float(answer.n_output_tokens)])


@dataclass
class _Logistic:
    mean: np.ndarray  # feature standardisation
    std: np.ndarray
    weights: np.ndarray  # (n_features,)
    bias: float


def _fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, steps: int = 50) -> _Logistic:
    """L2-regularised logistic regression by Newton's method (convex: a few steps converge). The bias gets a tiny
    penalty too, so a member whose validation answers are all right (or all wrong) still gets finite weights."""
    mean, std = x.mean(0), x.std(0)
    std = np.where(std > 0, std, 1.0)
    z = np.hstack([(x - mean) / std, np.ones((len(x), 1))])  # (N, F + 1), last column = bias
    penalty = np.full(z.shape[1], l2)
    penalty[-1] = 1e-3
    theta = np.zeros(z.shape[1])
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-z @ theta))
        grad = z.T @ (p - y) + penalty * theta
        hess = (z * (p * (1 - p))[:, None]).T @ z + np.diag(penalty)
        delta = np.linalg.solve(hess, grad)
        theta -= delta
        if np.abs(delta).max() < 1e-10:
            break
    return _Logistic(mean, std, theta[:-1], float(theta[-1]))


class LogisticScorer:
    """P(answer correct) from answer_features, with one logistic regression per cascade member (log-prob scales
    differ between models). Build it with LogisticScorer.fit on labelled answers of every member (the cascade
    records the last member's score too, though it never decides anything)."""

    def __init__(self, models: dict[str, _Logistic]) -> None:
        self.models = models

    @classmethod
    def fit(cls, answers: Sequence[Answer], correct: Sequence[bool], l2: float = 1.0) -> LogisticScorer:
        if len(answers) != len(correct):
            raise ValueError(f"LogisticScorer.fit: {len(answers)} answers but {len(correct)} correct labels; give one "
                             "label per answer")
        if not answers:
            raise ValueError("LogisticScorer.fit: no answers; pass validation answers with their correct labels")
        if l2 < 0:
            raise ValueError(f"LogisticScorer.fit(l2={l2}): the penalty must be >= 0")
        by_member: dict[str, list[int]] = {}
        for i, a in enumerate(answers):
            by_member.setdefault(a.member, []).append(i)
        x = np.stack([answer_features(a) for a in answers])
        y = np.asarray(correct, dtype=float)
        return cls({name: _fit_logistic(x[idx], y[idx], l2) for name, idx in by_member.items()})

    def __call__(self, answer: Answer) -> float:
        m = self.models.get(answer.member)
        if m is None:
            raise ValueError(f"LogisticScorer has no model for member {answer.member!r} (fitted for "
                             f"{sorted(self.models)}); fit it on validation answers of that member too")
        z = float(((answer_features(answer) - m.mean) / m.std) @ m.weights + m.bias)
        return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0


@dataclass(frozen=True)
class ThresholdFit:
    """The chosen thresholds and what they give on the validation set."""

    thresholds: tuple[float, ...]
    accuracy: float
    mean_cost: float
    budget: float
    answered_share: tuple[float, ...]  # fraction of queries answered by each member


def _as_table(name: str, values: object, rows: int, n: int | None) -> np.ndarray:
    table = np.asarray(values, dtype=float)
    if table.ndim != 2 or table.shape[0] != rows or (n is not None and table.shape[1] != n):
        want = f"({rows}, {n if n is not None else 'N'})"
        raise ValueError(f"fit_thresholds: {name} has shape {table.shape}; expected {want} (one row per stage, one "
                         "column per validation query, every row the same length)")
    if np.isnan(table).any():
        raise ValueError(f"fit_thresholds: {name} contains NaN; every validation answer needs a number")
    return table


def _candidates(scores: np.ndarray, limit: int) -> np.ndarray:
    """-inf, the midpoints between consecutive distinct scores (thinned to `limit` quantiles), +inf."""
    distinct = np.unique(scores)
    if len(distinct) > limit:
        distinct = np.unique(np.quantile(distinct, np.linspace(0, 1, limit)))
    middle = (distinct[1:] + distinct[:-1]) / 2
    return np.concatenate([[-np.inf], middle, [np.inf]])


def _evaluate(prefix: tuple[float, ...], last: np.ndarray, scores: np.ndarray, correct: np.ndarray,
              costs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Accuracy, mean cost and answering stage for thresholds prefix + (t,) for every t in `last` (vectorised)."""
    n_stage, n = correct.shape
    reached = np.ones(n, dtype=bool)
    spent = np.zeros(n)
    right = np.zeros(n)
    stage_of = np.full(n, -1)
    for i, t in enumerate(prefix):
        spent += np.where(reached, costs[i], 0.0)
        accept = reached & (scores[i] >= t)
        right += np.where(accept, correct[i], 0.0)
        stage_of[accept] = i
        reached &= ~accept
    k = len(prefix)  # the last stage with a threshold, vectorised over `last`: (K, N)
    spent_k = spent + np.where(reached, costs[k], 0.0)
    accept = reached[None] & (scores[k][None] >= last[:, None])
    escalate = reached[None] & ~accept
    total_right = right[None] + np.where(accept, correct[k], 0.0) + np.where(escalate, correct[k + 1], 0.0)
    total_cost = spent_k[None] + np.where(escalate, costs[k + 1], 0.0)
    stage = np.where(accept, k, np.where(escalate, k + 1, stage_of[None]))
    return total_right.mean(1), total_cost.mean(1), stage


def fit_thresholds(scores: Sequence[Sequence[float]], correct: Sequence[Sequence[bool]],
                   costs: Sequence[Sequence[float]], budget: float, max_combinations: int = 2_000_000) -> ThresholdFit:
    """The thresholds (one per stage but the last) with the best validation accuracy among those whose mean
    cost per query is <= budget.

    scores: (M - 1, N) score of stage i's answer to query n; correct: (M, N) whether it is right; costs:
    (M, N) what asking stage i about query n costs. Raises if the budget is below the cheapest possible
    mean cost (every query answered by the first stage)."""
    correct_t = np.asarray(correct, dtype=float)
    if correct_t.ndim != 2 or correct_t.shape[0] < 2:
        raise ValueError(f"fit_thresholds: correct has shape {correct_t.shape}; expected (M, N) with M >= 2 stages")
    n_stage, n = correct_t.shape
    if n == 0:
        raise ValueError("fit_thresholds: no validation queries; give at least one")
    scores_t = _as_table("scores", scores, n_stage - 1, n)
    costs_t = _as_table("costs", costs, n_stage, n)
    if not math.isfinite(budget):
        raise ValueError(f"fit_thresholds(budget={budget}): the budget must be a finite number")
    cheapest = float(costs_t[0].mean())
    tolerance = abs(budget) * 1e-9 + 1e-12  # float sums of equal costs must not fall just past the budget
    if budget + tolerance < cheapest:
        raise ValueError(f"budget={budget:g} cannot be met: the cheapest achievable mean cost per query is "
                         f"{cheapest:g} (every query answered by the first model, never escalated); raise the "
                         f"budget to at least {cheapest:g}")
    limit = max(3, int(max_combinations ** (1 / (n_stage - 1))) - 2)
    cands = [_candidates(scores_t[i], limit) for i in range(n_stage - 1)]
    best: tuple[float, float, tuple[float, ...], np.ndarray] | None = None
    for prefix in itertools.product(*cands[:-1]):
        acc, cost, stage = _evaluate(prefix, cands[-1], scores_t, correct_t, costs_t)
        ok = np.flatnonzero(cost <= budget + tolerance)
        if not len(ok):
            continue
        j = ok[np.lexsort((cost[ok], -acc[ok]))[0]]  # most accurate, then cheapest
        if best is None or (acc[j], -cost[j]) > (best[0], -best[1]):
            best = (float(acc[j]), float(cost[j]), (*prefix, float(cands[-1][j])), stage[j])
    assert best is not None  # always-accept-at-stage-0 costs `cheapest`, which is within budget
    share = tuple(float((best[3] == i).mean()) for i in range(n_stage))
    return ThresholdFit(best[2], best[0], best[1], float(budget), share)


__all__ = ["FEATURES", "LogisticScorer", "ThresholdFit", "answer_features", "fit_thresholds", "mean_logprob"]
