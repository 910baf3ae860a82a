"""Model families, each a composition of groundup.nn parts."""

from .decoder import DecoderLM
from .encoder import Encoder, EncoderForClassification, EncoderForPreTraining, EncoderOutput, mean_pool
from .registry import build_model
from .seq2seq import Seq2Seq
from .vit import ViT

__all__ = [
    "DecoderLM", "Encoder", "EncoderForClassification", "EncoderForPreTraining", "EncoderOutput", "Seq2Seq", "ViT",
    "build_model", "mean_pool",
]
