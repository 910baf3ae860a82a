"""What the commands that write a model share (convert, merge): an existing --out is replaced only with --overwrite,
the weights are written in --dtype, a quantized model is dequantized only when asked (a Hugging Face folder holds
float weights), and the result is a Hugging Face folder or a groundup checkpoint."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from .. import runtime
from ..tokenizer import Tokenizer


def check_out(out: str, overwrite: bool) -> Path:
    """--out as a Path, refused in one line when something is already there (unless --overwrite): checked before
    anything is loaded, so a mistyped path costs nothing."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"--out={out} is a file; pass the path of a directory to write")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"--out={out} already exists and is not empty; pass --overwrite to replace it (the new "
                              "one is written aside and swapped in only when complete), or choose another --out")
    return path


def out_dtype(requested: str) -> torch.dtype:
    """The --dtype the weights are written in (auto: what inference runs fastest in here), said on stderr."""
    with warnings.catch_warnings():  # nothing runs in that dtype here, so bf16's emulation cost does not apply
        warnings.simplefilter("ignore", runtime.EmulatedBf16Warning)
        name = runtime.resolve_dtype(requested, "cpu", "infer", "--dtype")
    print(f"weights written in {name}: {runtime.dtype_note(requested, name)}", file=sys.stderr, flush=True)
    return runtime.DTYPES[name]


def quantized_format(model: nn.Module) -> str | None:
    """The weight format of a model saved by `groundup quantize` (int8, int4, nf4), None for a float model."""
    from ..quant import QuantLinear

    found = sorted({m.fmt for m in model.modules() if isinstance(m, QuantLinear)})
    return ", ".join(found) or None


def float_weights(model: nn.Module, dequantize: bool, to: str, source: str) -> nn.Module:
    """The model with its quantized layers dequantized (--dequantize), or kept where the format holds them (a
    groundup checkpoint); a quantized model bound for a Hugging Face folder without --dequantize is refused."""
    fmt = quantized_format(model)
    if fmt is None:
        return model
    if dequantize:
        from ..quant import dequantize as dequantized

        print(f"dequantized the {fmt} layers of {source} (the quantization error stays in the weights)",
              file=sys.stderr, flush=True)
        return dequantized(model)
    if to == "hf":
        raise ValueError(f"--model={source} is quantized ({fmt}) and a Hugging Face folder holds float weights; pass "
                         "--dequantize to write them dequantized, or --to groundup to keep the quantized checkpoint")
    return model


def write_model(model: nn.Module, tokenizer: Tokenizer | None, out: Path, to: str, dtype: torch.dtype) -> Path:
    """Write `model` (cast to `dtype`; quantized layers keep their codes) as a Hugging Face folder or a groundup
    checkpoint, atomically."""
    from ..interop.hf import save_hf
    from ..train.checkpoint import save_checkpoint

    if to not in ("groundup", "hf"):
        raise ValueError(f"--to={to!r} is unknown; use 'hf' (a Hugging Face folder) or 'groundup' (a checkpoint)")
    model = model.to(dtype)
    return Path(save_hf(model, tokenizer, out) if to == "hf" else save_checkpoint(out, model, tokenizer=tokenizer))
