"""quantize(model, fmt): swap the linear layers of the blocks for QuantLinear, in place (DESIGN rule 5).

    model ──quantize(model, "nf4")──> same model, q/k/v/o and gate/up/down (any linear-like module outside `skip`)
                                      now QuantLinear; embeddings, norms and lm_head untouched
          ──inject(model, LoraConfig(...))──> QLoRA: LoRA wrappers over the QuantLinear layers

What is swapped: nn.Linear, and PackedLinear / TransposedLinear (a model already packed for inference; their float
weight is read back). lm_head stays in floating point (it is skipped by name, and when the embeddings are tied
it *is* the embedding matrix, which a table lookup needs in float), unless `head` names a format: then the output
projection gets a quantized copy (the embedding table keeps its float weight). A small model's head is a large part
of the bytes read per decoded token (SmolLM2-135M: 28M of its 135M weights), so `head="int8"` pays off when
decoding. The order that pays off for decoding is quantize first, then pack_for_inference, which packs only the
linear layers left in float.

The swap is recorded in model.config.extra["quantization"] (format, group size, module names), which a saved
checkpoint's config.json carries, so load_checkpoint / load_pretrained rebuild the QuantLinear layers before the
weights are loaded (rebuild_quantized).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..nn.packed_linear import PackedLinear, TransposedLinear
from . import formats
from .formats import QuantError
from .linear import QuantLinear

HEAD = "lm_head"
# Hyena's filter network generates its long filters from a few thousand weights: rounding them reshapes every filter
DEFAULT_SKIP = (HEAD, "filter")
CONFIG_KEY = "quantization"


@dataclass
class QuantReport:
    """Bytes counted from the tensors themselves (numel x element size), before and after the swap."""

    fmt: str
    modules: int  # layers swapped
    weight_bytes_before: int  # the swapped layers' float weights and biases
    weight_bytes_after: int  # the same layers' quantized buffers (codes, scales, kernel copies) and biases
    model_bytes_before: int  # every parameter and buffer of the model (a tied tensor once)
    model_bytes_after: int

    def summary(self) -> str:
        mb = lambda b: f"{b / 2**20:.1f} MiB"
        return (f"{self.fmt}: {self.modules} linear layers, weights {mb(self.weight_bytes_before)} -> "
                f"{mb(self.weight_bytes_after)} ({self.weight_bytes_before / max(1, self.weight_bytes_after):.2f}x "
                f"smaller); whole model {mb(self.model_bytes_before)} -> {mb(self.model_bytes_after)}")


def tensor_bytes(module: nn.Module) -> int:
    """Bytes of every parameter and buffer of `module`, each storage counted once (tied weights)."""
    seen, total = set(), 0
    for t in list(module.parameters()) + list(module.buffers()):
        if t is not None and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def _float_weight(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(weight (out, in), bias) of a float linear layer this module swap understands; None for anything else."""
    if type(module) is nn.Linear or isinstance(module, PackedLinear):
        return module.weight.detach(), None if module.bias is None else module.bias.detach()
    if isinstance(module, TransposedLinear):
        return module.weight_t.t(), None if module.bias is None else module.bias.detach()
    return None


def _skipped(name: str, skip: Sequence[str]) -> bool:
    """name is, ends with or sits inside a module named in skip."""
    return any(name == s or name.endswith("." + s) or name.startswith(s + ".") or f".{s}." in name for s in skip)


def _shared(model: nn.Module) -> set[int]:
    """data_ptrs of tensors reachable under more than one name (tied weights): never quantized."""
    owners: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        owners[p.data_ptr()] = owners.get(p.data_ptr(), 0) + 1
    return {ptr for ptr, n in owners.items() if n > 1}


def _check_quantizable(model: nn.Module, fmt: str) -> None:
    formats.check_format(fmt)
    done = (getattr(getattr(model, "config", None), "extra", None) or {}).get(CONFIG_KEY)
    if done or any(isinstance(m, QuantLinear) for m in model.modules()):
        was = done["format"] if done else "another format"
        raise QuantError(f"this model is already quantized ({was}); quantize a float model: load it again "
                         "(load_pretrained) before quantizing to another format")
    if getattr(model, "peft_state", None) is not None:
        raise QuantError("this model carries PEFT adapters; quantize first, then inject (QLoRA: quantize(model, "
                         "'nf4') then inject(model, LoraConfig(...)))")


def targets(model: nn.Module, fmt: str, group_size: int, skip: Sequence[str]) -> list[tuple[str, nn.Module]]:
    """The (name, module) pairs quantize swaps, every shape checked before anything changes."""
    shared = _shared(model)
    found = []
    for name, module in model.named_modules():
        wb = _float_weight(module)
        if not name or wb is None or _skipped(name, skip) or wb[0].data_ptr() in shared:
            continue
        try:
            formats.check_shape(fmt, wb[0].shape[0], wb[0].shape[1], group_size)
        except QuantError as e:
            raise QuantError(f"{name} (out={wb[0].shape[0]}, in={wb[0].shape[1]}): {e}") from None
        found.append((name, module))
    if not found:
        raise QuantError(f"{type(model).__name__} has no linear layer to quantize outside skip={list(skip)}")
    return found


def _record(model: nn.Module, entry: dict) -> None:
    cfg = getattr(model, "config", None)
    if cfg is not None and dataclasses.is_dataclass(cfg):  # a new config: never edit one another model shares
        model.config = dataclasses.replace(cfg, extra={**cfg.extra, CONFIG_KEY: entry})


@torch.no_grad()
def quantize(model: nn.Module, fmt: str, group_size: int = 32, skip: Sequence[str] = DEFAULT_SKIP,
             head: str | None = None) -> QuantReport:
    """Quantize `model`'s linear layers (all but `skip`, and never a tied weight) to int8 / int4 / nf4, in place.
    `group_size` (int4 only): 32, 64 or 128 weights per scale and zero. `head`: also quantize the output projection
    (`lm_head`, a copy when tied to the embeddings) to this format; None keeps it in float. Returns the memory
    report; the model keeps it as model.quant_report. Quantized weights are buffers: they never train."""
    _check_quantizable(model, fmt)
    if head is not None:
        formats.check_format(head)
    if fmt == "int4" and group_size not in formats.INT4_GROUP_SIZES:
        raise QuantError(f"group_size={group_size} is not supported for int4; use one of "
                         f"{list(formats.INT4_GROUP_SIZES)}")
    plan = targets(model, fmt, group_size, skip)
    model_before = tensor_bytes(model)
    before = after = 0
    for name, module in plan:
        weight, bias = _float_weight(module)
        layer = QuantLinear.from_linear(fmt, weight, bias, group_size)
        if bias is not None:
            layer.bias.requires_grad_(module.bias.requires_grad)
        before += weight.numel() * weight.element_size() + (0 if bias is None else bias.numel() * bias.element_size())
        after += tensor_bytes(layer)
        model.set_submodule(name, layer)
    entry = {"format": fmt, "group_size": group_size, "modules": [n for n, _ in plan]}
    if head is not None:
        weight, bias = _head_weight(model)
        before += weight.numel() * weight.element_size()
        layer = QuantLinear.from_linear(head, weight, bias, group_size)
        after += tensor_bytes(layer)
        model.set_submodule(HEAD, layer)
        entry["head"] = head
    _record(model, entry)
    report = QuantReport(fmt, len(plan), before, after, model_before, tensor_bytes(model))
    model.quant_report = report
    return report


def _head_weight(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    module = getattr(model, HEAD, None)
    wb = None if module is None else _float_weight(module)
    if wb is None:
        raise QuantError(f"head=...: {type(model).__name__} has no float linear `{HEAD}` to quantize; "
                         "use head=None")
    return wb


def rebuild_quantized(model: nn.Module, entry: dict) -> None:
    """Swap in empty QuantLinear layers where a saved model had them (entry = config.extra['quantization']),
    so its state dict loads; the weights come from the checkpoint."""
    fmt, group_size = entry.get("format"), int(entry.get("group_size", 32))
    formats.check_format(fmt)
    for name in entry.get("modules", []):
        module = model.get_submodule(name)
        wb = _float_weight(module)
        if wb is None:
            raise QuantError(f"config.extra.quantization names {name}, which is a {type(module).__name__}, not a "
                             "linear layer; the checkpoint does not match its config")
        n_out, n_in = wb[0].shape
        model.set_submodule(name, QuantLinear.empty(fmt, n_in, n_out, wb[1] is not None, group_size))
    if entry.get("head"):
        weight, bias = _head_weight(model)
        model.set_submodule(HEAD, QuantLinear.empty(entry["head"], weight.shape[1], weight.shape[0], bias is not None,
                                                    group_size))


@torch.no_grad()
def dequantize(model: nn.Module) -> nn.Module:
    """Swap every QuantLinear back to nn.Linear holding its dequantized weight (in the bias's dtype, else fp32),
    in place: e.g. to merge a LoRA adapter trained over a quantized base. The quantization error stays, except in
    a head that `head=` quantized as a copy of tied embeddings: it is tied to the (float) embeddings again, as the
    config says, so that a saved model holds one matrix."""
    cfg = getattr(model, "config", None)
    entry = (getattr(cfg, "extra", None) or {}).get(CONFIG_KEY) or {}
    for name, module in list(model.named_modules()):
        if not isinstance(module, QuantLinear):
            continue
        if name == HEAD and entry.get("head") and getattr(cfg, "tie_embeddings", False):
            model.set_submodule(name, _tied_head(model, module))
        else:
            dtype = module.bias.dtype if module.bias is not None else torch.float32
            linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                               device=module.qweight.device, dtype=dtype)
            linear.weight.copy_(module.dequantize(dtype))
            if module.bias is not None:
                linear.bias.copy_(module.bias)
            model.set_submodule(name, linear)
    if cfg is not None and dataclasses.is_dataclass(cfg) and CONFIG_KEY in cfg.extra:
        model.config = dataclasses.replace(cfg, extra={k: v for k, v in cfg.extra.items() if k != CONFIG_KEY})
    return model


def _tied_head(model: nn.Module, head: QuantLinear) -> nn.Linear:
    """An output projection sharing the embedding matrix (DecoderLM's tie), in place of its quantized copy."""
    embedding = model.embed.tok_emb.weight
    linear = nn.Linear(head.in_features, head.out_features, bias=False, device=embedding.device, dtype=embedding.dtype)
    linear.weight = embedding
    return linear
