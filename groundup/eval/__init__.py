"""Evaluation: perplexity of decoders, pseudo-perplexity of masked LMs, target perplexity of encoder-decoders;
task accuracy and harness adapters build on them."""

from .mlm import pseudo_perplexity
from .perplexity import perplexity, text_perplexity, window_perplexity
from .seq2seq import pairs_perplexity, target_perplexity

__all__ = ["pairs_perplexity", "perplexity", "pseudo_perplexity", "target_perplexity", "text_perplexity",
           "window_perplexity"]
