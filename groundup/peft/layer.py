"""What every module-swap wrapper (LoraLinear, IA3Linear, BiasAdapter) shares, as plain functions.

A wrapper holds the original module as `base_layer` and any number of named adapters; it carries

    active    the adapter its forward applies (None: base output)
    disabled  True inside `disable(model)`: base output
    merged    the adapter folded into base_layer's weights (its forward then is just base_layer)
    rows      a RowPlan inside `adapter_rows(model, ...)`: each batch row its own adapter

Merging keeps a copy of the original tensors (unless asked not to), so unmerge restores them bit for bit.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import PeftError


def linear_like(module: nn.Module) -> bool:
    """nn.Linear, or a stand-in (e.g. a quantized linear) that says its in_features / out_features."""
    n_in, n_out = getattr(module, "in_features", None), getattr(module, "out_features", None)
    return isinstance(module, nn.Linear) or (isinstance(n_in, int) and isinstance(n_out, int))


def features(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of a linear-like module (nn.Linear or a quantized stand-in that has both)."""
    n_in, n_out = getattr(module, "in_features", None), getattr(module, "out_features", None)
    if not isinstance(n_in, int) or not isinstance(n_out, int):
        raise PeftError(f"{type(module).__name__} is not linear-like (no in_features/out_features); target nn.Linear")
    return n_in, n_out


def param_dtype(module: nn.Module) -> tuple[torch.dtype, torch.device]:
    """dtype/device for new adapter tensors: the base weight's when it is floating point, else float32."""
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor):
        return (weight.dtype if weight.is_floating_point() else torch.float32), weight.device
    p = next(module.parameters(), None)
    return (torch.float32, p.device if p is not None else torch.device("cpu"))


def init_state(layer: nn.Module, base_layer: nn.Module) -> None:
    """The shared wrapper attributes (see the module docstring)."""
    layer.base_layer = base_layer
    layer.active = None
    layer.disabled = False
    layer.merged = None
    layer.rows = None  # a RowPlan inside adapter_rows
    layer.register_buffer("original_weight", None, persistent=False)
    layer.register_buffer("original_bias", None, persistent=False)


def bypass(layer: nn.Module) -> bool:
    """True when the wrapper's forward is the base layer's alone (disabled, merged, or no adapter applies)."""
    if layer.disabled or layer.merged is not None:
        return True
    return layer.rows is None and layer.active not in layer.adapter_names()


def check_new(layer: nn.Module, name: str) -> None:
    if not isinstance(name, str) or not name or "." in name:
        raise PeftError(f"adapter name {name!r} must be a non-empty string without '.'")
    if name in layer.adapter_names():
        raise PeftError(f"adapter {name!r} already exists on this layer; pick another adapter_name or delete it first")


def float_weight(layer: nn.Module, what: str) -> torch.Tensor:
    weight = getattr(layer.base_layer, "weight", None)
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        raise PeftError(
            f"cannot merge {what} into {type(layer.base_layer).__name__}: its weight is not a floating-point tensor "
            "(quantized?); keep the adapter unmerged"
        )
    return weight


def start_merge(layer: nn.Module, name: str, keep_original: bool, kept: tuple[str, ...] = ("weight", "bias")) -> None:
    """Mark `name` merged; keep copies of the base tensors named in `kept` that the merge is about to change."""
    if layer.merged is not None:
        raise PeftError(f"adapter {layer.merged!r} is already merged; unmerge(model) before merging {name!r}")
    if name not in layer.adapter_names():
        raise PeftError(f"no adapter {name!r} on this layer; adapters: {layer.adapter_names()}")
    if keep_original:
        weight, bias = getattr(layer.base_layer, "weight", None), getattr(layer.base_layer, "bias", None)
        keep_w = isinstance(weight, torch.Tensor) and "weight" in kept
        keep_b = isinstance(bias, torch.Tensor) and "bias" in kept
        layer.original_weight = weight.detach().clone() if keep_w else None
        layer.original_bias = bias.detach().clone() if keep_b else None
    layer.merged = name


def restore_original(layer: nn.Module) -> bool:
    """Copy the kept original tensors back (exact); False when merge kept none (then the caller inverts)."""
    if layer.original_weight is None and layer.original_bias is None:
        return False
    with torch.no_grad():
        if layer.original_weight is not None:
            layer.base_layer.weight.copy_(layer.original_weight)
        if layer.original_bias is not None:
            layer.base_layer.bias.copy_(layer.original_bias)
    layer.original_weight = layer.original_bias = None
    return True


def row_shape(vector_rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B, F) per-row vectors -> (B, 1, ..., 1, F) so they broadcast against `like` (B, ..., F)."""
    return vector_rows.view(vector_rows.shape[0], *([1] * (like.dim() - 2)), vector_rows.shape[-1])
