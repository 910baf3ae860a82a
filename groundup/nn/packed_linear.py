"""Inference-only linear layers whose weights are laid out once for the CPU kernels that read them fastest.

Decoding multiplies a few rows by every weight matrix, so its speed is how fast the weights stream from
memory. Stock F.linear on CPU falls short of that in two cases, measured on this project's machines:
  * bf16: the (out, in) weight is re-laid out on every call; a batch-1 product reads ~6 GB/s against
    ~13 GB/s in fp32. oneDNN can pack the weight once into its blocked layout (PackedLinear), on CPUs with
    native bf16 (runtime.fast_path("onednn_bf16_pack")); elsewhere bf16 stays stock nn.Linear.
  * fp32 with 2-16 rows (batched decoding): F.linear is ~2x slower than x @ W^T with W^T stored
    contiguously (TransposedLinear); at 1 row and at prompt lengths the two are equal.
  * fp32 with many rows (an encoder over whole images: a ViT's 257 tokens per image): oneDNN's packed kernel
    beat F.linear (MKL) 1.6-1.8x on an AMD EPYC (bench/vit_inference.py), so pack_for_inference(model,
    many_rows=True) packs fp32 weights for every row count.
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F
from torch import nn

from groundup import runtime

log = logging.getLogger(__name__)


class PackedLinear(nn.Module):
    """y = x W^T + b with W also held in oneDNN's packed layout. For a bf16 decode step it serves up to
    max_packed_rows rows (prompts keep stock F.linear, as fast or faster there); max_packed_rows=None packs
    every row count (fp32 encoders)."""

    def __init__(self, linear: nn.Linear, max_packed_rows: int | None = 16) -> None:
        super().__init__()
        self.max_packed_rows = max_packed_rows
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight.detach()  # (out, in), shared with the original layer: no copy
        self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, None)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)  # (N, in)
        if self.max_packed_rows is not None and x2.shape[0] > self.max_packed_rows:
            return F.linear(x, self.weight, self.bias)
        y = torch.ops.mkldnn._linear_pointwise(x2, self.packed, self.bias, "none", [], "")
        return y.view(*x.shape[:-1], self.out_features)  # (..., out)


class TransposedLinear(nn.Module):
    """y = x W^T + b with W^T stored contiguously (in, out)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight_t = linear.weight.detach().t().contiguous()  # (in, out)
        self.bias = None if linear.bias is None else linear.bias.detach()

    @property
    def weight(self) -> torch.Tensor:
        """(out, in), a view: code that reads a linear layer's weight (e.g. a LoRA A/B pair) keeps working."""
        return self.weight_t.t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)  # (N, in)
        y = x2 @ self.weight_t if self.bias is None else torch.addmm(self.bias, x2, self.weight_t)
        return y.view(*x.shape[:-1], self.out_features)  # (..., out)


def fast_layout(dtype: torch.dtype) -> type[nn.Module] | None:
    """The decode layout for weights of `dtype` on this machine, or None (stock nn.Linear is the best there)."""
    if dtype == torch.float32:
        return TransposedLinear
    if dtype == torch.bfloat16 and runtime.fast_path("onednn_bf16_pack"):
        return PackedLinear
    return None


@torch.no_grad()
def pack_for_inference(model: nn.Module, many_rows: bool = False) -> int:
    """Swap every nn.Linear of a CPU model for the layout its dtype decodes fastest with here, in place;
    returns how many were swapped (0 off the CPU, or where no layout beats nn.Linear). The model is then for
    inference only: reload it to train or save. bf16 layers keep their weight beside the packed copy, so packing
    doubles a bf16 model's weight memory; fp32 layers keep only the transposed copy. many_rows: the model runs
    whole sequences (an image encoder), not decode steps: fp32 weights are packed by oneDNN for every row count
    (their weight kept beside). If packing fails anyway (a kernel this machine lacks), the layers stay as they
    are, with one log line."""
    weight = next(model.parameters())
    fast = fast_layout(weight.dtype) if weight.device.type == "cpu" else None
    if many_rows and fast is TransposedLinear:
        fast = functools.partial(PackedLinear, max_packed_rows=None)
    if fast is None:
        return 0
    swapped = 0
    model.eval()
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                try:
                    setattr(module, name, fast(child))
                except RuntimeError as err:
                    log.warning("groundup: %s failed on %s (%s); keeping plain linear layers",
                                getattr(fast, "__name__", "PackedLinear"), runtime.machine().describe(),
                                str(err).splitlines()[0])
                    return swapped
                swapped += 1
    return swapped
