"""Serving: model cascades (cascade.py) that route each query to the cheapest model likely to answer it well."""

from .cascade import Answer, Cascade, CascadeMember, CascadeResult, CostModel, answer_logprobs
from .cascade_fit import LogisticScorer, ThresholdFit, fit_thresholds, mean_logprob

__all__ = [
    "Answer", "Cascade", "CascadeMember", "CascadeResult", "CostModel", "LogisticScorer", "ThresholdFit",
    "answer_logprobs", "fit_thresholds", "mean_logprob",
]
