"""(IA)^3 (Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context
Learning"): learned vectors that rescale activations elementwise.

    attention k / v projections:   y = l ⊙ (W x + b)          l: (out,)   feedforward=False
    FFN output projection:         y = W (l ⊙ h) + b          l: (in,)    feedforward=True (h: the intermediate
                                                                          activation entering down_proj)

Vectors start at one (a no-op). Both forms fold into W (and b) exactly, so a merged model costs nothing extra.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import PeftError
from .layer import (
    bypass,
    check_new,
    features,
    float_weight,
    init_state,
    linear_like,
    param_dtype,
    restore_original,
    row_shape,
    start_merge,
)
from .rows import per_row


class IA3Linear(nn.Module):
    """A linear layer whose output (or, for feedforward=True, input) is rescaled by a named learned vector."""

    def __init__(self, base_layer: nn.Module, feedforward: bool) -> None:
        super().__init__()
        self.in_features, self.out_features = features(base_layer)
        self.feedforward = feedforward
        init_state(self, base_layer)
        self.ia3_l = nn.ParameterDict()

    @staticmethod
    def accepts(module: nn.Module) -> bool:
        return linear_like(module)

    def adapter_names(self) -> list[str]:
        return list(self.ia3_l.keys())

    def add_adapter(self, name: str) -> None:
        check_new(self, name)
        dtype, device = param_dtype(self.base_layer)
        size = self.in_features if self.feedforward else self.out_features
        self.ia3_l[name] = nn.Parameter(torch.ones(size, dtype=dtype, device=device))

    def delete_adapter(self, name: str) -> None:
        if self.merged == name:
            raise PeftError(f"adapter {name!r} is merged; unmerge(model) before deleting it")
        del self.ia3_l[name]
        if self.active == name:
            self.active = None

    def adapter_params(self, name: str) -> dict[str, nn.Parameter]:
        return {"ia3_l": self.ia3_l[name]}

    def _scale(self, like: torch.Tensor) -> torch.Tensor:
        """The active vector (F,), or per-row vectors (B, 1.., F) in a mixed batch."""
        if self.rows is None:
            return self.ia3_l[self.active]
        self.rows.check(like.shape[0], "IA3Linear")
        neutral = torch.ones_like(next(iter(self.ia3_l.values())))
        return row_shape(per_row(self.rows, dict(self.ia3_l), neutral), like)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bypass(self):
            return self.base_layer(x)
        if self.feedforward:
            return self.base_layer(x * self._scale(x).to(x.dtype))
        out = self.base_layer(x)
        return out * self._scale(out).to(out.dtype)

    def merge(self, name: str, keep_original: bool = True) -> None:
        weight = float_weight(self, "IA3")
        start_merge(self, name, keep_original)
        scale = self.ia3_l[name].detach().to(weight.dtype)
        bias = getattr(self.base_layer, "bias", None)
        with torch.no_grad():
            weight *= scale[None, :] if self.feedforward else scale[:, None]  # W (out, in)
            if not self.feedforward and bias is not None:
                bias *= scale

    def unmerge(self) -> None:
        if self.merged is None:
            return
        if not restore_original(self):
            weight, bias = self.base_layer.weight, getattr(self.base_layer, "bias", None)
            scale = self.ia3_l[self.merged].detach().to(weight.dtype)
            with torch.no_grad():
                weight /= scale[None, :] if self.feedforward else scale[:, None]
                if not self.feedforward and bias is not None:
                    bias /= scale
        self.merged = None
