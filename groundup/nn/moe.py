"""Mixture of experts: a router sends each token to k of n_expert MLPs (Shazeer et al. 2017; Switch
Transformer, Fedus et al. 2021; Mixtral, Jiang et al. 2024).

    x (N tokens) ─► gate (Linear d -> E) ─► logits ─► Router ─► top-k experts + weights, kept (capacity)
         │                                                              │
         └─► sort (token, expert) pairs by expert ─► expert_e(its tokens) ─► × weight ─► scatter-add ─► y

Capacity (Switch): with a capacity factor cf, expert e takes at most ceil(cf * N * k / E) pairs; the
rest are dropped (their MoE output is 0, so the block's residual carries the token unchanged). Pairs
are served in token order, a token's higher-ranked choice first: whether a token is dropped depends
only on the tokens before it, so a causal LM stays causal within each sequence even when it drops.
cf = None (or 0) drops nothing, as Mixtral, and then each token's output depends on that token alone.

Auxiliary losses of the last forward (each layer keeps its own; moe_aux_loss sums them):
    load balancing (Switch)  E * sum_i f_i * P_i   f_i: fraction of (token, choice) pairs routed to i
                                                   (before dropping), P_i: mean router probability of i;
                                                   1.0 for perfectly uniform routing
    router z-loss (ST-MoE)   mean over tokens of logsumexp(logits)^2: keeps router logits small
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .mlp import build_mlp


@dataclass
class Routing:
    experts: torch.Tensor  # (N, k) long: the chosen experts, best first
    weights: torch.Tensor  # (N, k) float32: each choice's mixing weight
    kept: torch.Tensor  # (N, k) bool: False where the expert was full and the pair is dropped
    probs: torch.Tensor  # (N, E) float32: softmax over all experts
    capacity: int | None  # pairs each expert takes; None = unlimited


def capacity_for(n_tokens: int, k: int, n_expert: int, capacity_factor: float | None) -> int | None:
    """Switch's expert capacity ceil(cf * tokens * k / E); None (no limit) when cf is None or 0."""
    if not capacity_factor:
        return None
    return math.ceil(capacity_factor * n_tokens * k / n_expert)


def rank_within_expert(experts: torch.Tensor, n_expert: int) -> torch.Tensor:
    """For flat (token, choice) pairs in priority order, each pair's 0-based place in its expert's queue."""
    order = torch.argsort(experts, stable=True)  # (M,) pairs grouped by expert, priority order kept
    counts = torch.bincount(experts, minlength=n_expert)  # (E,)
    starts = torch.cumsum(counts, 0) - counts  # (E,) first slot of each expert in `order`
    ranks = torch.empty_like(experts)
    ranks[order] = torch.arange(experts.numel(), device=experts.device) - starts[experts[order]]
    return ranks


class Router(nn.Module):
    """Router logits -> top-k experts, their weights and which pairs fit the capacity. No parameters:
    the gate Linear lives on the MoE (named `gate`, as in Mixtral) so that logits can be fed directly."""

    def __init__(self, n_expert: int, k: int, capacity_factor: float | None = None, norm_topk: bool = True) -> None:
        super().__init__()
        self.n_expert, self.k, self.capacity_factor, self.norm_topk = n_expert, k, capacity_factor, norm_topk

    def forward(self, logits: torch.Tensor) -> Routing:
        """logits (N, E) -> Routing. Weights: softmax over all E experts, the top k kept; with norm_topk
        (Mixtral) divided by their sum, else the raw probabilities (Switch top-1, so the router learns
        from the LM loss: a renormalised single weight is always 1)."""
        n = logits.shape[0]
        probs = F.softmax(logits.float(), dim=-1)  # (N, E)
        weights, experts = torch.topk(probs, self.k, dim=-1)  # (N, k) each, best first
        if self.norm_topk:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        capacity = capacity_for(n, self.k, self.n_expert, self.capacity_factor)
        if capacity is None:
            kept = torch.ones_like(experts, dtype=torch.bool)
        else:  # flat pairs in token order (row-major over (N, k)): earlier tokens and better choices first
            kept = (rank_within_expert(experts.reshape(-1), self.n_expert) < capacity).view(n, self.k)  # (N, k)
        return Routing(experts, weights, kept, probs, capacity)


def load_balancing_loss(probs: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """Switch Transformer's auxiliary loss E * sum_i f_i * P_i; f counts all k choices of every token."""
    n_expert = probs.shape[-1]
    f = torch.bincount(experts.reshape(-1), minlength=n_expert).float() / experts.numel()  # (E,) sums to 1
    p = probs.mean(dim=0)  # (E,)
    return n_expert * (f * p).sum()


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE's z-loss: mean over tokens of logsumexp(logits)^2."""
    return torch.logsumexp(logits.float(), dim=-1).pow(2).mean()


class MoE(nn.Module):
    """Drop-in for a block's MLP: `gate` (router Linear) + `experts` (a ModuleList of the usual MLP / GatedMLP,
    so each expert's linears are experts.{j}.gate_proj / up_proj / down_proj).

    After each forward: last_load (E,) pairs each expert processed, last_dropped pairs dropped for
    capacity, last_losses {'load_balancing', 'z'} unweighted; aux_loss() is their weighted sum."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_expert, self.k = cfg.n_expert, cfg.n_expert_per_token
        self.gate = nn.Linear(cfg.d_model, cfg.n_expert, bias=False)
        self.experts = nn.ModuleList(build_mlp(cfg) for _ in range(cfg.n_expert))
        self.router = Router(cfg.n_expert, cfg.n_expert_per_token, cfg.expert_capacity_factor, cfg.router_norm_topk)
        self.aux_loss_coef, self.z_loss_coef = cfg.router_aux_loss_coef, cfg.router_z_loss_coef
        self.last_losses: dict[str, torch.Tensor] = {}
        self.last_load: torch.Tensor | None = None
        self.last_dropped: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # (N, d)
        logits = self.gate(flat)  # (N, E)
        routing = self.router(logits)
        self.last_losses = {"load_balancing": load_balancing_loss(routing.probs, routing.experts),
                            "z": router_z_loss(logits)}
        token = torch.arange(flat.shape[0], device=x.device).repeat_interleave(self.k)  # (N*k,) token of each pair
        keep = routing.kept.reshape(-1)  # (N*k,)
        token, expert, weight = token[keep], routing.experts.reshape(-1)[keep], routing.weights.reshape(-1)[keep]
        order = torch.argsort(expert, stable=True)  # (M,) kept pairs grouped by expert
        token, weight = token[order], weight[order]
        load = torch.bincount(expert, minlength=self.n_expert)  # (E,)
        self.last_load, self.last_dropped = load.detach(), (~keep).sum().detach()
        chunks = flat[token].split(load.tolist())  # one (n_e, d) slice per expert
        # Every expert runs, even on 0 rows: its weights then get a zero gradient instead of none (DDP needs one).
        out = torch.cat([expert_mlp(chunk) for expert_mlp, chunk in zip(self.experts, chunks, strict=True)])  # (M, d)
        out = out * weight[:, None].to(out.dtype)
        y = torch.zeros(flat.shape[0], out.shape[-1], dtype=out.dtype, device=x.device)
        return y.index_add_(0, token, out).view(*shape[:-1], out.shape[-1])  # (..., d)

    def aux_loss(self) -> torch.Tensor | None:
        """coef * load-balancing + coef * z-loss of the last forward (None before any forward)."""
        if not self.last_losses:
            return None
        losses = self.last_losses
        return self.aux_loss_coef * losses["load_balancing"] + self.z_loss_coef * losses["z"]


def moe_aux_loss(model: nn.Module) -> torch.Tensor | None:
    """Sum of every MoE layer's aux_loss() from the last forward; None for a model without MoE. Walks
    modules, so it works through wrappers (DDP, PEFT) that hide the model's own attributes."""
    losses = [loss for m in model.modules() if isinstance(m, MoE) and (loss := m.aux_loss()) is not None]
    return torch.stack(losses).sum() if losses else None
