"""Inference-only linear layers with weights pre-packed for the CPU's matrix engine.

PyTorch's stock bf16 F.linear on CPU re-lays out the weight on every call, which makes a batch-1
matrix-vector product (decoding) slower in bf16 than in fp32. oneDNN can pack the weight once into
its blocked layout; the product then streams the packed weight at close to memory bandwidth.
fp32 and non-CPU models are left alone: there stock F.linear is already at the limit.
"""

from __future__ import annotations

import torch
from torch import nn


class PackedLinear(nn.Module):
    """y = x W^T + b with W held in oneDNN's packed layout (inference only: no gradient, no state dict)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, self.in_features), self.packed, self.bias, "none", [], "")
        return y.view(*x.shape[:-1], self.out_features)  # (..., out)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed=oneDNN"


def packable(model: nn.Module) -> bool:
    weight = next(model.parameters())
    return weight.device.type == "cpu" and weight.dtype == torch.bfloat16 and torch.backends.mkldnn.is_available()


@torch.no_grad()
def pack_for_inference(model: nn.Module) -> int:
    """Swap every nn.Linear of a bf16 CPU model for a PackedLinear, in place; returns how many were
    swapped (0 when the model is not bf16 on CPU). The model is then for inference only: reload it
    to train or save. Tied weights keep their embedding; the packed head is a copy (one extra
    vocab x d matrix of memory)."""
    if not packable(model):
        return 0
    swapped = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                setattr(module, name, PackedLinear(child))
                swapped += 1
    model.eval()
    return swapped

