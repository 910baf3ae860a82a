"""Flamingo's gated cross-attention (Alayrac et al. 2022, section 2.2), inserted before a frozen language model's
layers: text tokens read the visual latents, and tanh gates started at 0 make the new layer the identity at
initialisation, so training starts from the language model exactly.

    x ─> x + tanh(alpha_attn) * attn(norm(x), latents of the token's image) ─> y
    y ─> y + tanh(alpha_ff) * ff(norm(y))
    a token with no image before it keeps x unchanged

Which image a token sees (open_flamingo's media masking): the most recent <image> at or before it, never a later
one and never an earlier one; media_index numbers them from 1 (0: no image yet).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..config import ModelConfig
from .attention import Attention
from .mlp import build_mlp
from .norm import build_norm


def media_index(image_tokens: torch.Tensor, n_images: torch.Tensor) -> torch.Tensor:
    """(B, T) 1-based index of the image each token sees, 0 for none. image_tokens (B, T) marks <image>; n_images
    (B,) counts each row's images, which may exceed the markers in this input: a decoding step, or a window whose
    first images were cut off, is preceded by the images it lacks, so the markers here are the row's last ones."""
    later = image_tokens.sum(-1, keepdim=True) - image_tokens.long().cumsum(-1)  # markers after position t
    return (n_images[:, None] - later).clamp(min=0)


class GatedCrossAttentionBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, media_dim: int, ff_mult: int = 4) -> None:
        """cfg: the language model's config (its width and heads); media_dim: the latents' width."""
        super().__init__()
        xcfg = dataclasses.replace(cfg, n_kv_head=cfg.n_head, norm="layernorm", mlp="gelu", bias=False,
                                   d_ff=ff_mult * cfg.d_model, n_expert=0, layer_scale=None, dropout=0.0)
        self.attn_norm = build_norm(xcfg)
        self.attn = Attention(xcfg, causal=False, cross=True, kv_dim=media_dim)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.mlp_norm = build_norm(xcfg)
        self.mlp = build_mlp(xcfg)
        self.mlp_gate = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, latents: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
                index: torch.Tensor, n_latents: int) -> torch.Tensor:
        """x (B, T, d); latents (B, M L, media_dim), the M images' latents side by side, or their (k, v) from
        attn.project_kv; index (B, T) from media_index."""
        n_keys = (latents[0].shape[2] if isinstance(latents, tuple) else latents.shape[1])
        image_of_key = torch.arange(n_keys, device=x.device) // n_latents + 1  # (M L,) 1-based image of each key
        seen = index > 0  # (B, T)
        # a token without an image attends to everything (a finite row) and its result is dropped below
        mask = (image_of_key[None, None] == index[..., None]) | ~seen[..., None]  # (B, T, M L)
        y = x + torch.tanh(self.attn_gate) * self.attn(self.attn_norm(x), mask[:, None], memory=latents)
        y = y + torch.tanh(self.mlp_gate) * self.mlp(self.mlp_norm(y))
        return torch.where(seen[..., None], y, x)
