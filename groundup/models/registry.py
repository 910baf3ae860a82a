"""name -> model: build_model(preset name or ModelConfig, **overrides)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..config import ModelConfig, preset
from .decoder import DecoderLM


def model_class(arch: str) -> type[nn.Module]:
    from .encoder import EncoderForPreTraining
    from .seq2seq import Seq2Seq

    return {"decoder": DecoderLM, "encoder": EncoderForPreTraining, "seq2seq": Seq2Seq}[arch]


def build_model(config: str | ModelConfig, **overrides: Any) -> nn.Module:
    """Build a randomly initialised model from a preset name or a ModelConfig (+ field overrides)."""
    if isinstance(config, str):
        cfg = preset(config, **overrides)
    else:
        cfg = ModelConfig.from_dict({**config.to_dict(), **overrides}) if overrides else config
    return model_class(cfg.arch)(cfg)
