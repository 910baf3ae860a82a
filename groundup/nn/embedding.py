"""Input embeddings: token (+ segment) (+ absolute position), optionally scaled and normalised."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import ModelConfig
from .norm import LayerNorm
from .position import sinusoidal_table


class Embeddings(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int | None = None, segments: bool = False) -> None:
        super().__init__()
        self.block_size = cfg.block_size
        self.tok_emb = nn.Embedding(vocab_size or cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.d_model) if cfg.pos == "learned" else None
        self.seg_emb = nn.Embedding(cfg.n_segment, cfg.d_model) if segments and cfg.n_segment else None
        self.norm = LayerNorm(cfg.d_model, cfg.norm_eps) if cfg.embed_norm else None
        self.scale = math.sqrt(cfg.d_model) if cfg.embed_scale else 1.0
        self.sinusoidal = cfg.pos == "sinusoidal"
        if self.sinusoidal:
            self.register_buffer("pos_table", sinusoidal_table(cfg.block_size, cfg.d_model), persistent=False)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self, input_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids (B, T) or inputs_embeds (B, T, d); position_ids (B|1, T). Returns (B, T, d)."""
        x = self.tok_emb(input_ids) if inputs_embeds is None else inputs_embeds
        if self.scale != 1.0:
            x = x * self.scale
        if self.pos_emb is not None or self.sinusoidal:
            if int(position_ids.max()) >= self.block_size:
                raise ValueError(
                    f"position {int(position_ids.max())} is beyond block_size={self.block_size} of this model's "
                    "absolute positions; shorten the input to at most block_size tokens"
                )
            x = x + (self.pos_emb(position_ids) if self.pos_emb is not None else self.pos_table[position_ids])
        if self.seg_emb is not None:
            segment = token_type_ids if token_type_ids is not None else torch.zeros_like(x[..., 0], dtype=torch.long)
            x = x + self.seg_emb(segment)
        if self.norm is not None:
            x = self.norm(x)
        return self.drop(x)
