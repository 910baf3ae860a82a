"""Evaluation: perplexity now; task accuracy and harness adapters build on it."""

from .perplexity import perplexity, text_perplexity, window_perplexity

__all__ = ["perplexity", "text_perplexity", "window_perplexity"]
