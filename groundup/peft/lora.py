"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") as a module swap.

    x ──> base_layer (frozen W, b) ─────────────────────────┐
    └──> dropout ──> lora_A[name] (r, in) ──> lora_B[name] (out, r) ──> × alpha/r ──(+)──> y

B starts at zero, so a fresh adapter leaves the model unchanged; only A and B train. Merging adds
(alpha/r) B A into W, after which the layer costs nothing extra at inference.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
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
    start_merge,
)


class LoraLinear(nn.Module):
    """A linear layer plus named low-rank adapters; `rows` (a RowPlan) gives each batch row its own adapter."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.in_features, self.out_features = features(base_layer)
        init_state(self, base_layer)
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()
        self.scaling: dict[str, float] = {}

    @staticmethod
    def accepts(module: nn.Module) -> bool:
        return linear_like(module)

    def adapter_names(self) -> list[str]:
        return list(self.lora_A.keys())

    def add_adapter(self, name: str, r: int, scaling: float, dropout: float = 0.0) -> None:
        check_new(self, name)
        dtype, device = param_dtype(self.base_layer)
        a = nn.Linear(self.in_features, r, bias=False, device=device, dtype=dtype)
        b = nn.Linear(r, self.out_features, bias=False, device=device, dtype=dtype)
        nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5))  # peft's default for A
        nn.init.zeros_(b.weight)  # B = 0: the adapter starts as a no-op
        self.lora_A[name], self.lora_B[name] = a, b
        self.lora_dropout[name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling[name] = float(scaling)

    def delete_adapter(self, name: str) -> None:
        if self.merged == name:
            raise PeftError(f"adapter {name!r} is merged; unmerge(model) before deleting it")
        for table in (self.lora_A, self.lora_B, self.lora_dropout):
            del table[name]
        del self.scaling[name]
        if self.active == name:
            self.active = None

    def adapter_params(self, name: str) -> dict[str, nn.Parameter]:
        return {"lora_A.weight": self.lora_A[name].weight, "lora_B.weight": self.lora_B[name].weight}

    def delta_weight(self, name: str) -> torch.Tensor:
        """(alpha/r) B A: (out, in), what merging adds to W."""
        return (self.lora_B[name].weight @ self.lora_A[name].weight) * self.scaling[name]

    def _delta(self, name: str, x: torch.Tensor) -> torch.Tensor:
        a = self.lora_A[name].weight
        h = self.lora_dropout[name](x.to(a.dtype))
        return F.linear(F.linear(h, a), self.lora_B[name].weight) * self.scaling[name]  # (..., out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if bypass(self):
            return out
        if self.rows is None:
            return out + self._delta(self.active, x).to(out.dtype)
        self.rows.check(x.shape[0], "LoraLinear")
        for name in self.rows.order:  # one matmul pair per adapter present in the batch, never per row
            if name in self.lora_A:
                idx = self.rows.groups[name].to(x.device)
                out = out.index_add(0, idx, self._delta(name, x[idx]).to(out.dtype))
        return out

    def merge(self, name: str, keep_original: bool = True) -> None:
        weight = float_weight(self, "LoRA")
        start_merge(self, name, keep_original, ("weight",))
        with torch.no_grad():
            weight += self.delta_weight(name).to(weight.dtype)

    def unmerge(self) -> None:
        if self.merged is None:
            return
        if not restore_original(self):
            with torch.no_grad():
                self.base_layer.weight -= self.delta_weight(self.merged).to(self.base_layer.weight.dtype)
        self.merged = None
