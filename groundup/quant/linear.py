"""QuantLinear: a frozen linear layer whose weight is stored int8 / int4 / NF4 (formats.py), as buffers.

    x ─┬─ CPU, int8 / int4: fused weight-only kernel (torch._weight_int8pack_mm / _weight_int4pack_mm_for_cpu),
       │     activations in bf16 (runtime.quant_activation_dtype: fp32 ones ran 7-80x slower)
       └─ elsewhere (GPU, NF4, use_kernel=False): dequantize to the compute dtype, then F.linear  (the reference)
    ─> + bias ─> y

The compute dtype is the autocast dtype inside autocast, else x's dtype. When x needs a gradient (QLoRA: adapters
below this layer), a custom autograd function dequantizes again in backward instead of keeping the dequantized
weight alive between forward and backward, so training holds only the 4/8-bit weights. The quantized tensors are
buffers: no optimizer sees them, and `model.to(dtype)` leaves them as stored (see `_apply`).

int4 on CPU: the kernel reads its own blocked layout, which depends on the CPU's vector width. The layer holds only
that layout in memory (made once when the layer is built or loaded) and writes the portable layout into every
state dict, so checkpoints load on any machine.
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F
from torch import nn

from .. import runtime
from . import formats

log = logging.getLogger(__name__)
KERNEL_DTYPE = runtime.quant_activation_dtype()
DECODE_DTYPES = (torch.bfloat16, torch.float32)  # model dtypes whose decode takes the lean path (_decode)


@functools.cache
def int4_kernel_block() -> int | None:
    """Rows per block of the CPU int4 kernel's weight layout on this machine (64 with AVX-512, 32 with AVX2),
    found by comparing our packing with the kernel's own packer; None when no layout matches (no fast path)."""
    convert = getattr(torch.ops.aten, "_convert_weight_to_int4pack_for_cpu", None)
    if convert is None or not runtime.fast_path("int4_kernel"):
        return None
    codes = torch.randint(0, 16, (128, 64), generator=torch.Generator().manual_seed(0), dtype=torch.int32)
    try:
        theirs = convert(codes, 2)
    except RuntimeError as err:
        _no_kernel("int4", err)
        return None
    for block in (64, 32, 16):
        if torch.equal(to_kernel_layout(formats.pack_nibbles(codes), block), theirs):
            return block
    _no_kernel("int4", "no known weight layout matches its packer")
    return None


# The int8 kernel reads inputs 16 at a time: other in_features crash its AVX-512 build (torch 2.13), so those layers
# take the reference path (tests/test_quant.py runs a width of 24 through it).
INT8_KERNEL_WIDTH = 16


@functools.cache
def int8_kernel_runs() -> bool:
    """Whether the CPU int8 kernel runs here and computes x W^T: one small product against F.linear."""
    if not runtime.fast_path("int8_kernel"):
        return False
    g = torch.Generator().manual_seed(0)
    w, x = torch.randint(-127, 128, (16, 32), generator=g, dtype=torch.int8), torch.randn(2, 32, generator=g)
    try:
        y = torch._weight_int8pack_mm(x.to(KERNEL_DTYPE), w, torch.ones(16, dtype=KERNEL_DTYPE)).float()
    except RuntimeError as err:
        _no_kernel("int8", err)
        return False
    if torch.allclose(y, F.linear(x.to(KERNEL_DTYPE).float(), w.float()), rtol=2e-2, atol=0.5):
        return True
    _no_kernel("int8", "its results differ from F.linear")
    return False


def _no_kernel(fmt: str, why: object) -> None:
    log.warning("groundup: the CPU %s kernel does not run here (%s); %s layers take the dequantize + F.linear path",
                fmt, str(why).splitlines()[0], fmt)


def to_kernel_layout(packed: torch.Tensor, block: int) -> torch.Tensor:
    """Portable (N, K/2) nibbles -> the kernel's: per block of `block` rows, per k, one byte holds row i (low)
    and row i + block/2 (high)."""
    codes = formats.unpack_nibbles(packed)
    n, k = codes.shape
    c = codes.view(n // block, block, k).transpose(1, 2)  # (N/b, K, b)
    half = block // 2
    return (c[..., :half] | (c[..., half:] << 4)).contiguous().view(n, k // 2)  # (N/b, K, b/2) -> (N, K/2)


def from_kernel_layout(packed: torch.Tensor, block: int) -> torch.Tensor:
    n, k = packed.shape[0], packed.shape[1] * 2
    b = packed.view(n // block, k, block // 2)  # (N/b, K, b/2)
    codes = torch.cat([b & 15, b >> 4], dim=-1).transpose(1, 2).reshape(n, k)  # (N/b, b, K) -> (N, K)
    return formats.pack_nibbles(codes)


def _out_dtype(x: torch.Tensor) -> torch.dtype:
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


class _DequantMatmul(torch.autograd.Function):
    """y = x W^T without saving the dequantized W: backward rebuilds it (grad_x = grad_y W)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: QuantLinear) -> torch.Tensor:
        ctx.layer, ctx.x_dtype = layer, x.dtype
        return layer.matmul(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        weight = ctx.layer.dequantize(grad.dtype)  # (out, in)
        return (grad @ weight).to(ctx.x_dtype), None


class QuantLinear(nn.Module):
    """y = x W^T + b with W quantized (buffers) and b kept in floating point. Build with `from_linear`."""

    def __init__(self, fmt: str, in_features: int, out_features: int, tensors: dict[str, torch.Tensor],
                 bias: torch.Tensor | None = None, group_size: int = 32) -> None:
        super().__init__()
        self.fmt = formats.check_format(fmt)
        formats.check_shape(fmt, out_features, in_features, group_size)
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        for name, t in tensors.items():
            self.register_buffer(name, t)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.use_kernel = True  # False: always the reference path (for checks)
        self.layout_block: int | None = None  # int4: qweight is in the CPU kernel's layout with this block
        self.register_buffer("kernel_scale", None, persistent=False)  # int8: bf16 scale the kernel reads
        self._kernel: str | None = None  # kernel(), cached for forward's fast path
        self._prepare_kernel()
        self.register_load_state_dict_post_hook(lambda module, keys: module._prepare_kernel())

    @classmethod
    def from_linear(cls, fmt: str, weight: torch.Tensor, bias: torch.Tensor | None = None,
                    group_size: int = 32) -> QuantLinear:
        out_features, in_features = weight.shape
        formats.check_shape(fmt, out_features, in_features, group_size)
        tensors = formats.quantize_weight(fmt, weight, group_size)
        return cls(fmt, in_features, out_features, tensors, bias, group_size)

    @classmethod
    def empty(cls, fmt: str, in_features: int, out_features: int, bias: bool, group_size: int = 32) -> QuantLinear:
        """A layer of the right shapes to load a state dict into (weights quantized from zeros)."""
        return cls.from_linear(fmt, torch.zeros(out_features, in_features),
                               torch.zeros(out_features) if bias else None, group_size)

    # --- the kernel's view of the buffers -------------------------------------------------------------------
    def kernel(self) -> str | None:
        """Which fused CPU kernel this layer can use where it lives now (None: reference path)."""
        if self.fmt == "int8" and self.kernel_scale is not None and self.in_features % INT8_KERNEL_WIDTH == 0 \
                and int8_kernel_runs():
            return "int8"
        if self.fmt == "int4" and self.layout_block is not None:
            return "int4"
        return None

    def _prepare_kernel(self) -> None:
        """(Re)build what the CPU kernel reads from the stored tensors: after construction and after loading."""
        self._kernel = None
        if self.qweight.device.type != "cpu":
            return
        if self.fmt == "int8":
            self.kernel_scale = self.scale.to(KERNEL_DTYPE)
        if self.fmt == "int4" and self.layout_block is None:
            block = int4_kernel_block()
            if block is not None and self.out_features % block == 0:
                self.qweight = to_kernel_layout(self.qweight, block)
                self.layout_block = block
        self._kernel = self.kernel()

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.layout_block is not None:  # checkpoints hold the portable layout
            destination[prefix + "qweight"] = from_kernel_layout(self.qweight, self.layout_block)

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:
        self.layout_block = None  # what is loaded is portable; the post-hook re-lays it out
        super()._load_from_state_dict(state_dict, prefix, *args)

    def _apply(self, fn, recurse: bool = True):
        """Moves (.to(device)) apply to every buffer; dtype casts (.to(bf16)) never touch the stored format."""
        stored = {n: b for n, b in self._buffers.items() if b is not None}
        super()._apply(fn, recurse)
        for name, old in stored.items():
            new = self._buffers[name]
            if new.dtype != old.dtype:
                self._buffers[name] = old.to(new.device)
        self._kernel = self.kernel() if self.qweight.device.type == "cpu" else None
        return self

    # --- the weight ---------------------------------------------------------------------------------------
    @property
    def weight(self) -> torch.Tensor:
        """The stored (integer) weight codes: tells PEFT the device, and that this weight cannot be merged into."""
        return self.qweight

    def tensors(self) -> dict[str, torch.Tensor]:
        """The format's tensors in the portable layout (what formats.dequantize_weight takes)."""
        out = {n: b for n, b in self._buffers.items() if b is not None and n != "kernel_scale"}
        if self.layout_block is not None:
            out["qweight"] = from_kernel_layout(self.qweight, self.layout_block)
        return out

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The (out, in) weight this layer computes with, in `dtype`."""
        return formats.dequantize_weight(self.fmt, self.tensors(), dtype)

    # --- forward ------------------------------------------------------------------------------------------
    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x W^T (no bias), (..., in) -> (..., out) in the compute dtype."""
        dtype = _out_dtype(x)
        x2 = x.reshape(-1, self.in_features)  # (M, in)
        if self._kernel is not None and self.use_kernel and x.device.type == "cpu":
            y = self._fused_mm(x2.to(KERNEL_DTYPE))
        else:
            y = F.linear(x2.to(dtype), self.dequantize(dtype))
        return y.to(dtype).view(*x.shape[:-1], self.out_features)  # (..., out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._kernel is not None and self.use_kernel and x.dtype in DECODE_DTYPES and not x.requires_grad \
                and not torch.is_autocast_enabled("cpu"):
            return self._decode(x)
        y = _DequantMatmul.apply(x, self) if torch.is_grad_enabled() and x.requires_grad else self.matmul(x)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def _decode(self, x: torch.Tensor) -> torch.Tensor:
        """matmul + bias for bf16 / fp32 CPU inputs, with the per-call checks and module attribute lookups taken out:
        at batch 1 this layer runs ~200 times per token, and those lookups cost a third of a small product."""
        x2 = x.reshape(-1, self.in_features).to(KERNEL_DTYPE)  # (M, in); a no-op for bf16 models
        y = self._fused_mm(x2).to(x.dtype).view(*x.shape[:-1], self.out_features)
        bias = self._parameters.get("bias")
        return y if bias is None else y + bias.to(y.dtype)

    def _fused_mm(self, x2: torch.Tensor) -> torch.Tensor:
        """(M, in) bf16 -> (M, out) bf16 through this layer's CPU kernel (buffers read directly: no per-call
        module attribute lookups)."""
        buffers = self._buffers
        if self._kernel == "int4":
            return torch._weight_int4pack_mm_for_cpu(x2, buffers["qweight"], self.group_size, buffers["scales_zeros"])
        return torch._weight_int8pack_mm(x2, buffers["qweight"], buffers["kernel_scale"])

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.fmt == "int4" else ""
        return f"{self.fmt}, in_features={self.in_features}, out_features={self.out_features}{group}, " \
               f"bias={self.bias is not None}, kernel={self.kernel()}"
