"""What this machine offers, asked once, and the two answers the rest of groundup needs from it:
which dtype is fastest here (to train, to run inference) and whether a given fast path runs here.

Why it matters: bf16 is fast only where the hardware multiplies it natively (AVX512-BF16 or AMX on x86,
Ampere+ GPUs). Elsewhere PyTorch emulates it: a 1024x1024 GEMM ran at 0.8 GFLOP/s in bf16 vs 50 in fp32 on an
AVX2-only Zen 3, and oneDNN's bf16 weight packing refuses to run at all. So `dtype="auto"` (the default
everywhere) resolves here, and every fast path asks `fast_path(name)` before it is taken.

`machine()` reads torch's own probes once. torch's dispatch level counts, not only the silicon: with
`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2` an AVX-512 machine runs (and is treated) as an AVX2 one, and
with `ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16` an AMX one as AVX512-BF16 without AMX: how to try each branch end to
end. Tests simulate machines by replacing `machine()`'s answer (`simulate`).
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_CHOICES = ("auto", *DTYPES)
Task = Literal["train", "infer"]
FastPath = Literal["onednn_bf16_pack", "int8_kernel", "int4_kernel"]


@dataclass(frozen=True)
class Machine:
    cpu_isa: str  # torch's CPU dispatch level: "AVX512", "AVX2", "DEFAULT", "SVE256", ...
    cpu_bf16: bool  # bf16 dot products in hardware (AVX512-BF16 or AMX), at the AVX512 dispatch level
    amx: bool  # Intel AMX tiles (bf16 / int8 matrix units)
    onednn_bf16: bool  # oneDNN's bf16 kernels (weight packing) run here
    cuda: bool
    cuda_bf16: bool  # the CUDA device multiplies bf16 natively (Ampere or newer)
    cuda_name: str = ""
    mps: bool = False

    def describe(self, device: str = "cpu") -> str:
        """One line a user can check against their hardware, e.g. 'CPU AVX2, no native bf16'."""
        if device == "cuda":
            return f"CUDA {self.cuda_name or 'device'}, {'native bf16' if self.cuda_bf16 else 'no native bf16'}"
        if device == "mps":
            return "Apple MPS"
        units = " + AMX" if self.amx else ""
        return f"CPU {self.cpu_isa}{units}, {'native bf16' if self.cpu_bf16 else 'no native bf16'}"


def _onednn_allows(unit: str) -> bool:
    """Whether ONEDNN_MAX_CPU_ISA (oneDNN's own cap, e.g. AVX512_CORE_BF16) leaves `unit` ("amx" or "bf16") on."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").lower()
    if cap in ("", "all", "default") or "amx" in cap:
        return True
    return unit == "bf16" and any(s in cap for s in ("bf16", "fp16", "avx10"))


def probe() -> Machine:
    """Ask torch (cpuinfo underneath) what this process can use."""
    isa = torch.backends.cpu.get_cpu_capability()
    x86_512 = isa == "AVX512"  # below it torch's bf16 kernels are the emulated ones, whatever the silicon has
    amx = x86_512 and torch.cpu._is_amx_tile_supported() and _onednn_allows("amx")
    cpu_bf16 = x86_512 and (torch.cpu._is_avx512_bf16_supported() or amx) and _onednn_allows("bf16")
    # (AVX2 CPUs with AVX-NE-CONVERT also pack bf16, but auto runs them in fp32, so they are not asked)
    onednn = x86_512 and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    cuda = torch.cuda.is_available()
    return Machine(
        cpu_isa=isa, cpu_bf16=cpu_bf16, amx=amx, onednn_bf16=onednn, cuda=cuda,
        cuda_bf16=cuda and torch.cuda.is_bf16_supported(including_emulation=False),
        cuda_name=torch.cuda.get_device_name() if cuda else "", mps=torch.backends.mps.is_available(),
    )


_simulated: list[Machine] = []
_warned: set[tuple[str, str]] = set()  # (device, field) pairs already warned about emulated bf16


@functools.cache
def _probed() -> Machine:
    return probe()


def machine() -> Machine:
    return _simulated[-1] if _simulated else _probed()


@contextmanager
def simulate(m: Machine) -> Iterator[Machine]:
    """Answer `machine()` with `m` inside the block (tests of every branch on whatever machine runs them)."""
    _simulated.append(m)
    _warned.clear()
    try:
        yield m
    finally:
        _simulated.pop()
        _warned.clear()


def native_bf16(device: str) -> bool:
    m = machine()
    return {"cuda": m.cuda_bf16, "cpu": m.cpu_bf16, "mps": False}.get(device, False)


# On AMX, bf16 autocast pays once a micro-step's linear layers are big enough: below rows x d_model^2 = 2^24 the
# casts cost more than the tiles save (768 rows x 128^2 ran at 0.73x fp32, 3072 x 128^2 at 1.29x, 768 x 192^2 at
# 1.18x: bench/dtype_auto.py). AVX512-BF16 without AMX lost to fp32 at every size measured (0.6-0.76x).
AMX_MIN_TRAIN_WORK = 2**24


def best_dtype(device: str, task: Task, work: int | None = None) -> str:
    """The fastest correct dtype for `task` on `device`: bf16 where the hardware multiplies it, fp32 elsewhere.

    Training in bf16 means autocast (fp32 master weights). On CPU it pays only with AMX and only for matmuls of
    at least AMX_MIN_TRAIN_WORK; `work` is rows x context x d_model^2 of one micro-step (None: assume large)."""
    if device == "cpu" and task == "train":
        return "bf16" if machine().amx and (work is None or work >= AMX_MIN_TRAIN_WORK) else "fp32"
    return "bf16" if native_bf16(device) else "fp32"


class EmulatedBf16Warning(UserWarning):
    """bf16 was asked for where the hardware only emulates it: correct, but several times slower than fp32."""


def resolve_dtype(requested: str, device: str, task: Task, field: str = "dtype", work: int | None = None) -> str:
    """'auto' -> best_dtype; an explicit name is kept (checked), with one warning when bf16 will be emulated."""
    if requested not in DTYPE_CHOICES:
        raise ValueError(f"{field}={requested!r} is unknown; use one of {list(DTYPE_CHOICES)} (auto picks the "
                         "fastest for this machine)")
    if requested == "auto":
        return best_dtype(device, task, work)
    if requested == "bf16" and not native_bf16(device) and (device, field) not in _warned:
        _warned.add((device, field))
        warnings.warn(f"{field}=bf16 on {machine().describe(device)}: bf16 is emulated here and runs several times "
                      f"slower than fp32 (results stay correct); use {field}=auto or fp32 for speed",
                      EmulatedBf16Warning, stacklevel=2)
    if requested == "fp16" and device == "cpu":
        raise ValueError(f"{field}=fp16 needs a GPU; on CPU use auto, bf16 or fp32")
    return requested


def torch_dtype(requested: str, device: str = "cpu", task: Task = "infer", field: str = "dtype") -> torch.dtype:
    """resolve_dtype as a torch dtype (what load_pretrained and .to() take)."""
    return DTYPES[resolve_dtype(requested, device, task, field)]


def dtype_note(requested: str, resolved: str, device: str = "cpu") -> str:
    """'dtype auto -> fp32 (CPU AVX2, no native bf16)': printed where a user sees the choice."""
    return f"dtype {requested} -> {resolved} ({machine().describe(device)})"


def fast_path(name: FastPath) -> bool:
    """Whether a fast path runs on this machine (its callers keep a general path for when it does not).

    onednn_bf16_pack: oneDNN's packed bf16 weights (nn/packed_linear.py), which need AVX512-BF16/AMX or
    AVX-NE-CONVERT. int8_kernel / int4_kernel: PyTorch's fused weight-only CPU kernels (quant/linear.py); they
    have AVX2 and AVX512 code paths, and elsewhere (ARM, older x86) a generic loop not measured here, so there
    the dequantize + F.linear reference path is taken."""
    m = machine()
    if name == "onednn_bf16_pack":
        return m.onednn_bf16
    if name == "int8_kernel":
        return m.cpu_isa in ("AVX2", "AVX512") and hasattr(torch, "_weight_int8pack_mm")
    if name == "int4_kernel":
        return m.cpu_isa in ("AVX2", "AVX512") and hasattr(torch, "_weight_int4pack_mm_for_cpu")
    raise ValueError(f"fast path {name!r} is unknown; use one of onednn_bf16_pack, int8_kernel, int4_kernel")


def quant_activation_dtype() -> torch.dtype:
    """The activation dtype of the CPU int8 / int4 kernels: bf16 on every machine. Their bf16 entry points are the
    vectorized ones at both the AVX2 and the AVX512 dispatch level: bf16 activations ran 6-70x faster than fp32
    on both (bench/dtype_auto.py, BENCHMARKS.md), so an fp32 model casts in and out around them."""
    return torch.bfloat16
