"""Model families, each a composition of groundup.nn parts."""

from .decoder import DecoderLM
from .registry import build_model

__all__ = ["DecoderLM", "build_model"]
