"""groundup's own adapter format: a directory with

    adapter_config.json     {"format": "groundup-adapter", "method", "adapter_name", "config", "base_model"}
    adapter.safetensors     the adapter's tensors, named inside the base model (blocks.0.attn.q_proj.lora_A.weight)

`base_model` is a fingerprint of the model the adapter was trained on (its class and shape-defining config
fields); loading into a model whose fingerprint differs fails and names every mismatching field.
Prefix tuning is saved folded (plain per-layer prefixes, no reparameterisation MLP).
For Hugging Face PEFT's layout see groundup.interop.peft_format.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .api import adapter_params, base_model, components, delete_adapter, inject, peft_state
from .config import PeftError, PrefixTuningConfig, PromptTuningConfig, config_from_dict

CONFIG_FILE, WEIGHTS_FILE, FORMAT = "adapter_config.json", "adapter.safetensors", "groundup-adapter"
FINGERPRINT_FIELDS = (
    "arch", "vocab_size", "block_size", "n_layer", "n_head", "n_kv_head", "d_model", "d_ff", "head_dim", "pos",
    "norm", "mlp", "bias", "prenorm", "embed_norm", "n_segment", "n_class", "tie_embeddings",
)


def fingerprint(model: nn.Module) -> dict[str, Any]:
    """The class and shape-defining config fields of the model under any PEFT wrapper."""
    base = base_model(model)
    cfg = getattr(base, "config", None)
    fields = {f: getattr(cfg, f) for f in FINGERPRINT_FIELDS if hasattr(cfg, f)}
    return {"class": type(base).__name__, **fields}


def check_fingerprint(saved: dict[str, Any], model: nn.Module, where: str) -> None:
    mine = fingerprint(model)
    diff = [f"{k}: adapter {saved.get(k)!r} vs model {mine.get(k)!r}"
            for k in sorted(set(saved) | set(mine)) if saved.get(k) != mine.get(k)]
    if diff:
        raise PeftError(
            f"{where} was trained for another model ({saved.get('class')}, d_model={saved.get('d_model')}, "
            f"n_layer={saved.get('n_layer')}) than this {mine.get('class')}; mismatched fields: {'; '.join(diff)}. "
            "Load the adapter into the base model it was trained on"
        )


def _export(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    out = {}
    for prefix, comp in components(model):
        if name not in comp.adapter_names():
            continue
        state = comp.export_state(name) if hasattr(comp, "export_state") else {
            k: p.detach() for k, p in comp.adapter_params(name).items()}
        out.update({f"{prefix}.{k}" if prefix else k: v.contiguous() for k, v in state.items()})
    return out


def save_adapter(model: nn.Module, out_dir: str | os.PathLike, adapter_name: str | None = None) -> Path:
    """Write adapter `adapter_name` (default: the active one) of an injected model to `out_dir`."""
    state = peft_state(model)
    name = adapter_name or state.active
    if name not in state.configs:
        raise PeftError(f"no adapter {name!r} to save; this model has {list(state.configs)}")
    cfg = state.configs[name]
    if isinstance(cfg, PrefixTuningConfig):
        cfg = dataclasses.replace(cfg, reparam_hidden=None)  # saved folded
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "format_version": 1, "method": cfg.method, "adapter_name": name,
            "config": cfg.to_dict(), "base_model": fingerprint(model)}
    save_file({k: v.cpu() for k, v in _export(model, name).items()}, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    (out / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
    return out


def read_adapter(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    path = Path(path)
    if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(
            f"{path} is not a groundup adapter directory ({CONFIG_FILE} + {WEIGHTS_FILE}); for a Hugging Face PEFT "
            "adapter (adapter_model.safetensors) use groundup.interop.peft_format.load_peft"
        )
    try:
        meta = json.loads((path / CONFIG_FILE).read_text())
        tensors = load_file(str(path / WEIGHTS_FILE))
    except (json.JSONDecodeError, SafetensorError) as e:
        raise PeftError(f"{path}: unreadable adapter files ({e}); save the adapter again") from e
    if meta.get("format") != FORMAT:
        raise PeftError(f"{path / CONFIG_FILE} is not a groundup adapter config (format={meta.get('format')!r})")
    return meta, tensors


def load_into(model: nn.Module, name: str, tensors: dict[str, torch.Tensor], where: str) -> None:
    """Copy `tensors` into adapter `name`'s parameters; every one present with its shape, nothing extra."""
    params = adapter_params(model, name)
    missing, unexpected = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
    shapes = [f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(p.shape)}"
              for k, p in params.items() if k in tensors and tensors[k].shape != p.shape]
    if missing or unexpected or shapes:
        raise PeftError(f"{where} does not fit this model's adapter: missing {missing[:6]}, unexpected "
                        f"{unexpected[:6]}, shape mismatches {shapes[:6]}")
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(tensors[k].to(p.dtype))


def load_adapter(model: nn.Module, path: str | os.PathLike, adapter_name: str | None = None) -> nn.Module:
    """Inject the saved adapter into `model` (it must be the base model the adapter was trained on) and return the
    model to use (a PromptModel / PrefixModel for prompt / prefix tuning). The loaded adapter becomes active."""
    meta, tensors = read_adapter(path)
    check_fingerprint(meta.get("base_model", {}), model, str(path))
    cfg = config_from_dict(meta["method"], meta["config"])
    if isinstance(cfg, PromptTuningConfig):
        cfg = dataclasses.replace(cfg, init="random")  # the values come from the file, no tokenizer needed
    name = adapter_name or meta.get("adapter_name") or "default"
    model = inject(model, cfg, name)
    try:
        load_into(model, name, tensors, str(path))
    except PeftError:
        delete_adapter(model, name)
        raise
    return model
