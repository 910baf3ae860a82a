"""Scaled dot-product attention (Vaswani et al. 2017) with multi-head, grouped-query
(Ainslie et al. 2023) and multi-query (Shazeer 2019) variants chosen by n_kv_head.

    x ──q_proj──> q (B, H, T, D) ──RoPE──┐
    x ──k_proj──> k (B, Hkv, S, D) ─RoPE─┼─ KV cache ─> softmax(q kᵀ/√D + mask) v ──o_proj──> y
    x ──v_proj──> v (B, Hkv, S, D) ──────┘
  (cross-attention: k and v come from the encoder's memory instead of x)

Two backends compute the same thing: "naive" spells out the maths, "sdpa" calls PyTorch's fused
kernel (flash / memory-efficient where the hardware allows).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .kv_cache import KVCache
from .position import alibi_bias, apply_rope


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
    is_causal: bool = False, backend: str = "sdpa", dropout: float = 0.0,
) -> torch.Tensor:
    """q: (B, H, T, D); k, v: (B, Hkv, S, D); mask: bool (True = attend) or additive float,
    broadcastable to (B, H, T, S). Returns (B, H, T, D).

    k, v may hold fewer rows than q, B / n each, when each n consecutive rows of q attend to one memory
    (the beams or samples of one source, in cross-attention without a mask): those rows' queries are read
    against it as one longer query, so the memory is read once, not n times."""
    if k.shape[0] != q.shape[0]:
        return _shared_memory(q, k, v, mask, backend, dropout)
    if backend == "sdpa":
        if k.shape[1] != q.shape[1] and q.shape[2] == 1 and not is_causal and (mask is None or mask.dim() == 4):
            return _decode_shared_kv(q, k, v, mask, dropout)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal, enable_gqa=k.shape[1] != q.shape[1]
        )
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)  # (B, H, S, D)
    v = v.repeat_interleave(group, dim=1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, T, S)
    if is_causal:
        mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    weights = F.dropout(scores.softmax(dim=-1), dropout)
    return weights @ v


def _shared_memory(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, backend: str, dropout: float
) -> torch.Tensor:
    B, H, T, D = q.shape
    M = k.shape[0]
    if mask is not None or B % M:
        raise ValueError(f"attention of {B} query rows against {M} memory rows: they must divide, without a mask")
    n = B // M
    folded = q.reshape(M, n, H, T, D).transpose(1, 2).reshape(M, H, n * T, D)
    y = attend(folded, k, v, None, False, backend, dropout)  # (M, H, n T, D)
    return y.reshape(M, H, n, T, D).transpose(1, 2).reshape(B, H, T, D)


def _decode_shared_kv(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout: float
) -> torch.Tensor:
    """One query position, K/V heads shared by groups of query heads (GQA / MQA decoding): fold each group's
    query heads into the query axis so every K/V head is read once. enable_gqa expands K/V to all heads on
    CPU, which costs MQA most of its decode advantage (bench/gqa.py)."""
    B, H, _, D = q.shape
    Hkv, group = k.shape[1], q.shape[1] // k.shape[1]
    if mask is not None:  # (B|1, 1|H, 1, S) -> (B|1, Hkv, group, S), head h = kv head h // group
        mask = mask.expand(mask.shape[0], H, 1, mask.shape[-1]).reshape(mask.shape[0], Hkv, group, mask.shape[-1])
    y = F.scaled_dot_product_attention(q.reshape(B, Hkv, group, D), k, v, attn_mask=mask, dropout_p=dropout)
    return y.reshape(B, H, 1, D)  # (B, H, 1, D)


def build_mask(
    n_query: int, start: int = 0, causal: bool = True, pad_mask: torch.Tensor | None = None,
    alibi_slopes: torch.Tensor | None = None, device: torch.device | str = "cpu",
) -> tuple[torch.Tensor | None, bool]:
    """One mask for every layer of a forward pass: (mask, is_causal).

    Queries sit at positions start..start+n_query, keys at 0..start+n_query. pad_mask (B, S) marks real
    tokens. Returns None + is_causal when the fused kernel's own causal mask is exact (no cache offset).
    """
    n_key = start + n_query
    if pad_mask is None and alibi_slopes is None:
        if not causal or n_query == 1:
            return None, False
        if start == 0:
            return None, True
    q_pos = torch.arange(start, n_key, device=device)
    k_pos = torch.arange(n_key, device=device)
    if causal:
        allowed = k_pos[None, :] <= q_pos[:, None]  # (T, S)
    else:
        allowed = torch.ones(n_query, n_key, dtype=torch.bool, device=device)
    allowed = allowed[None, None]  # (1, 1, T, S)
    if pad_mask is not None:
        if pad_mask.shape[1] != n_key:
            raise ValueError(f"attention_mask covers {pad_mask.shape[1]} positions; expected {n_key} (cache + input)")
        allowed = allowed & pad_mask[:, None, None, :].bool()  # (B, 1, T, S)
        # Every query may see itself, so rows that are all padding stay finite instead of NaN.
        allowed = allowed | (k_pos[None, :] == q_pos[:, None])
    if alibi_slopes is None:
        return allowed, False
    bias = alibi_bias(alibi_slopes.to(device), q_pos, k_pos)[None]  # (1, H, T, S)
    return bias.masked_fill(~allowed, float("-inf")), False


class Attention(nn.Module):
    """Self- or cross-attention; n_kv_head < n_head shares each k/v head across a group of q heads."""

    def __init__(self, cfg: ModelConfig, causal: bool = True, cross: bool = False, kv_dim: int | None = None) -> None:
        """kv_dim: the width of the memory cross-attention reads, when it differs from d_model (Flamingo's visual
        latents, in the vision encoder's width)."""
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.causal, self.cross = causal, cross
        self.backend, self.dropout = cfg.attn_backend, cfg.dropout
        inner, kv_inner = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, inner, bias=cfg.bias)
        self.k_proj = nn.Linear(kv_dim or cfg.d_model, kv_inner, bias=cfg.bias)
        self.v_proj = nn.Linear(kv_dim or cfg.d_model, kv_inner, bias=cfg.bias)
        self.o_proj = nn.Linear(inner, cfg.d_model, bias=cfg.bias)

    def project_kv(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of source (B, S, d): each (B, Hkv, S, D), before RoPE."""
        B, S, _ = source.shape
        k = self.k_proj(source).view(B, S, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, Hkv, S, D)
        v = self.v_proj(source).view(B, S, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, Hkv, S, D)
        return k, v

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, is_causal: bool = False,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None, cache: KVCache | None = None,
        layer: int = 0, start: int = 0, memory: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """memory: the encoder's output (B, S, d) for cross-attention, or its (k, v) from project_kv, which a
        decoder computes once per source instead of once per generated token."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k, v = memory if isinstance(memory, tuple) else self.project_kv(x if memory is None else memory)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(layer, start, k, v)
        dropout = self.dropout if self.training else 0.0
        y = attend(q, k, v, mask, is_causal, self.backend, dropout)  # (B, H, T, D)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))  # (B, T, d_model)
