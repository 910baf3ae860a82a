"""Helpers for parity tests against transformers."""

from __future__ import annotations

import torch


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random everything (biases and norm gains too), so any swapped or transposed tensor shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            is_gain = p.dim() == 1 and name.endswith("weight") and ("norm" in name.lower() or "ln_" in name)
            p.copy_(1.0 + 0.1 * noise if is_gain else 0.1 * noise)
    return model.eval()
