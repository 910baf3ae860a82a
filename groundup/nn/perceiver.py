"""The Perceiver resampler (Alayrac et al. 2022, "Flamingo", section 2.1; Jaegle et al. 2021): a fixed number of
learned latents read any number of visual features, so the language model always sees the same number of visual
tokens per image, whatever the image's size or the number of its frames.

    features (B, M, F, N, d) + frame embedding ─> flatten frames (B, M, F N, d) ─┐
    latents (L, d) ─> layer x depth:  latents += attn(q = norm(latents), kv = [norm(features); norm(latents)])
                                      latents += ff(norm(latents))
                    ─> norm ─> (B, M, L, d)

The keys and values hold the latents too (the paper's choice: the latents also attend to each other). The
attention and feed-forward are groundup's own (nn/attention.py, nn/mlp.py) in the features' width.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from .attention import Attention
from .mlp import build_mlp
from .norm import build_norm


def resampler_config(dim: int, n_head: int, ff_mult: int) -> ModelConfig:
    """The ModelConfig of the resampler's attention and feed-forward: LayerNorm, GELU, no biases (open_flamingo)."""
    if dim % n_head:
        raise ValueError(f"the resampler's width {dim} must be divisible by its n_head={n_head}; pick a divisor")
    return ModelConfig(arch="encoder", vocab_size=1, n_layer=1, n_head=n_head, d_model=dim, d_ff=ff_mult * dim,
                       norm="layernorm", mlp="gelu", bias=False, n_segment=0)


class ResamplerLayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.media_norm = build_norm(cfg)
        self.latent_norm = build_norm(cfg)
        self.attn = Attention(cfg, causal=False, cross=True)
        self.mlp_norm = build_norm(cfg)
        self.mlp = build_mlp(cfg)

    def forward(self, features: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """features (B, S, d), latents (B, L, d) -> latents (B, L, d)."""
        q = self.latent_norm(latents)
        latents = latents + self.attn(q, memory=torch.cat([self.media_norm(features), q], dim=1))  # kv: (B, S + L, d)
        return latents + self.mlp(self.mlp_norm(latents))


class PerceiverResampler(nn.Module):
    def __init__(self, dim: int, depth: int = 2, n_latents: int = 64, n_head: int = 8, ff_mult: int = 4,
                 max_frames: int = 1) -> None:
        super().__init__()
        cfg = resampler_config(dim, n_head, ff_mult)
        self.latents = nn.Parameter(torch.randn(n_latents, dim) * 0.02)
        # one learned embedding per frame of a video-like media item; a still image is one frame (zeros at start)
        self.frame_embed = nn.Parameter(torch.zeros(max_frames, 1, dim))
        self.layers = nn.ModuleList(ResamplerLayer(cfg) for _ in range(depth))
        self.norm = build_norm(cfg)

    @property
    def n_latents(self) -> int:
        return self.latents.shape[0]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features (B, M, N, d) (M images of N features each) or (B, M, F, N, d) (F frames each) ->
        (B, M, n_latents, d)."""
        if features.dim() == 4:
            features = features[:, :, None]  # (B, M, 1, N, d)
        if features.dim() != 5 or features.shape[-1] != self.latents.shape[-1]:
            raise ValueError(f"the resampler reads features (B, images, [frames,] N, {self.latents.shape[-1]}); "
                             f"got {tuple(features.shape)}")
        B, M, F, N, d = features.shape
        if F > self.frame_embed.shape[0]:
            raise ValueError(f"{F} frames per image; this resampler has frame embeddings for "
                             f"{self.frame_embed.shape[0]} (PerceiverResampler(max_frames=...))")
        x = (features + self.frame_embed[:F].to(features.dtype)).reshape(B * M, F * N, d)  # (B M, F N, d)
        latents = self.latents.to(x.dtype).expand(B * M, -1, -1)  # (B M, L, d)
        for layer in self.layers:
            latents = layer(x, latents)
        return self.norm(latents).reshape(B, M, self.n_latents, d)  # (B, M, L, d)
