"""name -> model: build_model(preset name or ModelConfig, **overrides)."""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from ..config import ModelConfig, preset
from .decoder import DecoderLM

# config.json "family" -> (config class path, model class path) of the families beside the text transformers
FAMILIES: dict[str, tuple[str, str]] = {
    "vision": ("groundup.config:VisionConfig", "groundup.models.vit:ViT"),
    "clip": ("groundup.models.clip:ClipConfig", "groundup.models.clip:CLIP"),
    "whisper": ("groundup.models.whisper:WhisperConfig", "groundup.models.whisper:Whisper"),
}


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


def _attr(path: str) -> Any:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def build_family(saved: dict[str, Any]) -> nn.Module:
    """A randomly initialised model of a non-text family from its config dict (config.json's "family" key)."""
    config_cls, model_cls = (_attr(p) for p in FAMILIES[saved["family"]])
    return model_cls(config_cls.from_dict(saved))
