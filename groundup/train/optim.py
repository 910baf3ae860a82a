"""AdamW with decoupled weight decay on matrices only, and a warmup + cosine learning-rate schedule.

Weight decay (Loshchilov & Hutter, 2019) is applied to parameters with dim >= 2 (linear weights,
embeddings) and not to biases or norm gains, as in GPT-2 / nanoGPT: decaying a LayerNorm gain toward
0 or a bias toward 0 only hurts. Frozen parameters (requires_grad=False, e.g. a PEFT base model)
are left out of the optimizer entirely.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from groundup.train.config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed (dim >= 2) and not decayed (dim < 2). Shared (tied) tensors appear once."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for p in model.parameters():  # .parameters() already yields each shared tensor once
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 else no_decay).append(p)
    if not decay and not no_decay:
        raise ValueError("model has no trainable parameters (all requires_grad=False); nothing to optimize")
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over `model`'s trainable parameters: the fused kernel on CUDA, the foreach kernels elsewhere.

    (torch's CPU fused AdamW measured ~20x slower than foreach on a small model here, so CPU uses foreach.)
    """
    groups = param_groups(model, cfg.weight_decay)
    kwargs = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    on_cuda = all(p.is_cuda for g in groups for p in g["params"])
    if on_cuda:
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):  # fused unsupported for these dtypes
            pass
    return torch.optim.AdamW(groups, foreach=True, **kwargs)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (0-based).

    Linear warmup: lr * (step + 1) / warmup_steps for step < warmup_steps (full lr at the last
    warmup step). Then cosine decay from lr at step=warmup_steps to min_lr at step=max_steps, and
    min_lr after that (Loshchilov & Hutter, 2017, without restarts).
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if step >= cfg.max_steps:
        return cfg.min_lr
    ratio = (step - cfg.warmup_steps) / (cfg.max_steps - cfg.warmup_steps)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))  # 1 -> 0
    return cfg.min_lr + coeff * (cfg.lr - cfg.min_lr)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
