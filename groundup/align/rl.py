"""The small formulas of reinforcement learning from feedback, shared by PPO and GRPO.

    KL per token (Schulman 2020, "Approximating KL divergence"), r = ref / policy probability of the sampled token:
        k1 = log pi - log ref                   unbiased, can be negative
        k3 = (r - 1) - log r                    unbiased, never negative, lower variance
    GAE (Schulman et al. 2016): delta_t = r_t + gamma V_{t+1} - V_t,  A_t = delta_t + gamma lambda A_{t+1}
    adaptive KL coefficient (Ziegler et al. 2019): beta *= 1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon
    group-relative advantages (Shao et al. 2024, GRPO): each sample's reward minus its group's mean, over the
    group's standard deviation
"""

from __future__ import annotations

from typing import Literal

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    return x.mean() if mask is None else (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor | None = None, shift_mean: bool = True,
           eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked entries (population variance); shift_mean=False keeps the mean."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    return out if shift_mean else out + mean


def kl_per_token(logp: torch.Tensor, ref_logp: torch.Tensor, kind: Literal["k1", "k3"] = "k1") -> torch.Tensor:
    """The KL estimate of each sampled token from the policy's and the reference's log-probs of it."""
    if kind == "k1":
        return logp - ref_logp
    if kind == "k3":
        log_r = ref_logp - logp
        return torch.expm1(log_r) - log_r
    raise ValueError(f"kind={kind!r}: use 'k1' or 'k3'")


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns), each (B, T), over the masked (response) positions; the value after the last
    response token is 0 (the episode ends)."""
    B, T = rewards.shape
    advantages = torch.zeros_like(rewards)
    last = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    next_value = torch.zeros_like(last)
    for t in reversed(range(T)):
        m = mask[:, t].to(rewards.dtype)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * m
        advantages[:, t] = last
        next_value = torch.where(m.bool(), values[:, t], next_value)
    return advantages, advantages + values * mask


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """(N,) rewards of N / group_size prompts x group_size samples (a prompt's samples consecutive) -> each
    sample's advantage within its group; a group whose samples all scored the same gets 0."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    g = rewards.view(-1, group_size)
    return ((g - g.mean(-1, keepdim=True)) / (g.std(-1, keepdim=True) + eps)).view(-1)


class AdaptiveKL:
    """The KL coefficient that steers the measured KL toward `target` (Ziegler et al. 2019)."""

    def __init__(self, init: float = 0.2, target: float = 6.0, horizon: int = 10000) -> None:
        self.value, self.target, self.horizon = init, target, horizon

    def update(self, kl: float, n_steps: int) -> float:
        error = max(-0.2, min(0.2, kl / self.target - 1))
        self.value *= 1 + error * n_steps / self.horizon
        return self.value
