"""A Transformer block: self-attention, optional cross-attention, and an MLP, each a residual branch.

    pre-norm  (GPT-2, Llama):       x = x + f(norm(x))
    post-norm (Transformer, BERT):  x = norm(x + f(x))
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from .attention import Attention
from .hyena import Hyena
from .kv_cache import KVCache
from .mlp import build_mlp
from .moe import MoE
from .norm import build_norm
from .retention import Retention


def build_mixer(cfg: ModelConfig, causal: bool) -> nn.Module:
    """The block's token mixer, by cfg.mixer: attention, retention or Hyena (the last two are causal only)."""
    if cfg.mixer == "retention":
        return Retention(cfg)
    if cfg.mixer == "hyena":
        return Hyena(cfg)
    return Attention(cfg, causal=causal)


class LayerScale(nn.Module):
    """x * gamma, gamma per channel (Touvron et al. 2021, "Going deeper with Image Transformers"; DINOv2)."""

    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, causal: bool = True, cross: bool = False) -> None:
        super().__init__()
        self.prenorm = cfg.prenorm
        self.attn_norm = build_norm(cfg)
        self.attn = build_mixer(cfg, causal)  # the token mixer; named attn whatever it is, so checkpoint keys stay
        self.cross_norm = build_norm(cfg) if cross else None
        self.cross_attn = Attention(cfg, causal=False, cross=True) if cross else None
        self.mlp_norm = build_norm(cfg)
        self.mlp = MoE(cfg) if cfg.n_expert > 0 else build_mlp(cfg)  # MoE: a router + n_expert MLPs
        self.drop = nn.Dropout(cfg.dropout)
        scaled = cfg.layer_scale is not None
        self.attn_scale = LayerScale(cfg.d_model, cfg.layer_scale) if scaled else None  # None: no call per step
        self.mlp_scale = LayerScale(cfg.d_model, cfg.layer_scale) if scaled else None

    def residual(self, x: torch.Tensor, norm: nn.Module, f, scale: nn.Module | None = None) -> torch.Tensor:
        branch = (lambda h: scale(f(h))) if scale is not None else f
        if self.prenorm:
            return x + self.drop(branch(norm(x)))
        return norm(x + self.drop(branch(x)))

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, is_causal: bool = False,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None, cache: KVCache | None = None,
        layer: int = 0, start: int = 0, memory: torch.Tensor | None = None, memory_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self.residual(x, self.attn_norm, lambda h: self.attn(h, mask, is_causal, rope, cache, layer, start),
                          self.attn_scale)
        if self.cross_attn is not None:
            x = self.residual(x, self.cross_norm, lambda h: self.cross_attn(h, memory_mask, memory=memory))
        return self.residual(x, self.mlp_norm, self.mlp, self.mlp_scale)
