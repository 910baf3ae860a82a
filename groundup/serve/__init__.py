"""Serving: model cascades (cascade.py) that route each query to the cheapest model likely to answer it well."""

from groundup.lazy import lazy_exports

__all__ = lazy_exports(__name__, {
    ".cascade": "Answer Cascade CascadeMember CascadeResult CostModel answer_logprobs",
    ".cascade_fit": "LogisticScorer ThresholdFit fit_thresholds mean_logprob",
})
