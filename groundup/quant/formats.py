"""Weight-only quantization formats as pure functions: weight (out, in) -> small tensors -> weight again.

    int8  symmetric, one fp32 scale per output row:        w ~ q * scale,             q in [-127, 127]
    int4  asymmetric, groups of `group_size` along `in`:   w ~ (q - 8) * scale + zero, q in [0, 15]
    nf4   4-bit NormalFloat (Dettmers et al. 2023, QLoRA): w ~ NF4[q] * absmax,        blocks of 64 along `in`,
          absmax itself double-quantized: (absmax - mean) as int8 with one fp32 scale per 256 blocks

int4 uses the convention of PyTorch's fused CPU kernel (`_weight_int4pack_mm_for_cpu`: `zero` is the value of
code 8) and keeps scale and zero in bf16 in the kernel's (in / group, out, 2) layout, so the kernel reads them
as stored; codes are chosen with those rounded values, so the rounding does not add to the error. Two 4-bit
codes share a byte, the even `in` index in the low nibble (a portable layout; the CPU kernel's own
ISA-dependent layout is made from it when a layer is built, see linear.py).

The second level of NF4 uses a linear int8 grid, where the paper uses an 8-bit float; the size is the same
(4 + 8/64 + 32/(64*256) bits per weight) and the error of a scale is at most half its int8 step.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

Format = Literal["int8", "int4", "nf4"]
FORMATS: tuple[str, ...] = get_args(Format)
INT4_GROUP_SIZES = (32, 64, 128)
NF4_BLOCK = 64  # weights per absmax (the paper's blocksize)
NF4_SCALE_BLOCK = 256  # absmax values per second-level scale
# The 16 NF4 levels: quantiles of N(0, 1) scaled to [-1, 1], with an exact zero (QLoRA, appendix E).
NF4_LEVELS = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
])
TINY = 1e-12  # a scale for an all-zero row / group / block (any positive value decodes zeros exactly)


class QuantError(ValueError):
    """A model, format or option that cannot be quantized as asked; the message names the field and the fix."""


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise QuantError(f"quantization format {fmt!r} is unknown; use one of {list(FORMATS)}")
    return fmt


def check_shape(fmt: str, out_features: int, in_features: int, group_size: int) -> None:
    """Refuse a weight shape the format cannot hold, naming the module dimension and what would fit."""
    if fmt == "int4":
        if group_size not in INT4_GROUP_SIZES:
            raise QuantError(f"group_size={group_size} is not supported for int4; use one of {list(INT4_GROUP_SIZES)}")
        if in_features % group_size:
            fits = [g for g in INT4_GROUP_SIZES if in_features % g == 0]
            fix = f"use group_size from {fits}" if fits else "no int4 group size divides it: use int8 or nf4"
            raise QuantError(f"group_size={group_size} does not divide in_features={in_features}; {fix}, "
                             "or leave this module out (skip=...)")
    if fmt == "nf4" and in_features % NF4_BLOCK:
        raise QuantError(f"nf4 needs in_features divisible by its blocksize {NF4_BLOCK}, got {in_features}; "
                         "use int8 for this model, or leave this module out (skip=...)")


# --- 4-bit packing (portable layout) ---------------------------------------------------------------------
def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """(N, K) integer codes in [0, 15] -> (N, K/2) uint8, k even in the low nibble."""
    codes = codes.to(torch.uint8)
    return codes[:, 0::2] | (codes[:, 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """(N, K/2) uint8 -> (N, K) uint8 codes in [0, 15]."""
    return torch.stack([packed & 15, packed >> 4], dim=-1).view(packed.shape[0], -1)  # (N, K/2, 2) -> (N, K)


# --- int8 ------------------------------------------------------------------------------------------------
def quantize_int8(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """{"qweight": int8 (N, K), "scale": fp32 (N,)}: scale = row absmax / 127, q = round(w / scale)."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / 127).clamp(min=TINY)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return {"qweight": q, "scale": scale}


def dequantize_int8(t: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (t["qweight"].float() * t["scale"][:, None]).to(dtype)


# --- int4 ------------------------------------------------------------------------------------------------
def quantize_int4(weight: torch.Tensor, group_size: int = 32) -> dict[str, torch.Tensor]:
    """{"qweight": uint8 (N, K/2), "scales_zeros": bf16 (K/g, N, 2)}; each group's [min, max] on 16 levels."""
    n, k = weight.shape
    check_shape("int4", n, k, group_size)
    w = weight.detach().float().view(n, k // group_size, group_size)  # (N, G, g)
    lo, hi = w.amin(dim=-1), w.amax(dim=-1)  # (N, G)
    scale = ((hi - lo) / 15).clamp(min=TINY).to(torch.bfloat16).float()
    zero = (lo + 8 * scale).to(torch.bfloat16).float()  # the value of code 8
    q = torch.round((w - (zero - 8 * scale)[..., None]) / scale[..., None]).clamp(0, 15)
    scales_zeros = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous()  # (G, N, 2)
    return {"qweight": pack_nibbles(q.view(n, k)), "scales_zeros": scales_zeros.to(torch.bfloat16)}


def dequantize_int4(t: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    codes = unpack_nibbles(t["qweight"])
    n, k = codes.shape
    sz = t["scales_zeros"].float().transpose(0, 1)  # (N, G, 2)
    groups = sz.shape[1]
    w = (codes.view(n, groups, k // groups).float() - 8) * sz[..., :1] + sz[..., 1:]  # (N, G, g)
    return w.view(n, k).to(dtype)


# --- nf4 -------------------------------------------------------------------------------------------------
def _double_quantize(absmax: torch.Tensor) -> dict[str, torch.Tensor]:
    """absmax (B,) fp32 -> int8 codes of (absmax - mean) with one fp32 scale per NF4_SCALE_BLOCK values."""
    offset = absmax.mean()
    centred = absmax - offset
    pad = -centred.numel() % NF4_SCALE_BLOCK
    blocks = torch.cat([centred, centred.new_zeros(pad)]).view(-1, NF4_SCALE_BLOCK)  # (B2, 256)
    scale = (blocks.abs().amax(dim=1) / 127).clamp(min=TINY)
    codes = torch.round(blocks / scale[:, None]).clamp(-127, 127).to(torch.int8).view(-1)[: absmax.numel()].clone()
    return {"absmax_q": codes, "absmax_scale": scale, "absmax_offset": offset.view(1)}


def nf4_absmax(t: dict[str, torch.Tensor]) -> torch.Tensor:
    """The per-block absmax (B,) fp32 as the double quantization gives it back."""
    codes = t["absmax_q"]
    pad = -codes.numel() % NF4_SCALE_BLOCK
    full = torch.cat([codes, codes.new_zeros(pad)]).view(-1, NF4_SCALE_BLOCK).float()  # (B2, 256)
    return (full * t["absmax_scale"][:, None]).view(-1)[: codes.numel()] + t["absmax_offset"]


def quantize_nf4(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """{"qweight": uint8 (N, K/2), "absmax_q": int8 (N*K/64,), "absmax_scale": fp32, "absmax_offset": fp32 (1,)};
    each weight is the NF4 level nearest to w / (its block's exact absmax)."""
    n, k = weight.shape
    check_shape("nf4", n, k, NF4_BLOCK)
    w = weight.detach().float().view(n, k // NF4_BLOCK, NF4_BLOCK)  # (N, K/64, 64)
    absmax = w.abs().amax(dim=-1).clamp(min=TINY)  # (N, K/64)
    levels = NF4_LEVELS.to(w.device)
    midpoints = (levels[1:] + levels[:-1]) / 2
    codes = torch.bucketize((w / absmax[..., None]).contiguous(), midpoints)  # index of the nearest level
    return {"qweight": pack_nibbles(codes.view(n, k)), **_double_quantize(absmax.view(-1))}


def nf4_pair_table(dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.Tensor:
    """(256, 2): the two NF4 levels a packed byte holds (low nibble first), for a one-gather decode."""
    byte = torch.arange(256, device=device)
    levels = NF4_LEVELS.to(device)
    return torch.stack([levels[byte & 15], levels[byte >> 4]], dim=-1).to(dtype)


def dequantize_nf4(t: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32,
                   table: torch.Tensor | None = None) -> torch.Tensor:
    """Table lookup (one gather per byte, two weights) times the block absmax, in `dtype`."""
    packed = t["qweight"]
    n, k = packed.shape[0], packed.shape[1] * 2
    table = nf4_pair_table(dtype, packed.device) if table is None else table
    levels = torch.nn.functional.embedding(packed.int(), table).view(n, k // NF4_BLOCK, NF4_BLOCK)  # (N, K/64, 64)
    absmax = nf4_absmax(t).view(n, k // NF4_BLOCK, 1).to(dtype)
    return (levels * absmax).view(n, k)


QUANTIZE = {"int8": lambda w, g: quantize_int8(w), "int4": quantize_int4, "nf4": lambda w, g: quantize_nf4(w)}
DEQUANTIZE = {"int8": dequantize_int8, "int4": dequantize_int4, "nf4": dequantize_nf4}


def quantize_weight(fmt: str, weight: torch.Tensor, group_size: int = 32) -> dict[str, torch.Tensor]:
    """The tensors `fmt` stores for `weight` (out, in)."""
    if weight.dim() != 2:
        raise QuantError(f"expected a 2-D (out, in) weight, got shape {tuple(weight.shape)}")
    return QUANTIZE[check_format(fmt)](weight, group_size)


def dequantize_weight(fmt: str, tensors: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return DEQUANTIZE[check_format(fmt)](tensors, dtype)
