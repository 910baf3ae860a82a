"""Hugging Face PEFT's adapter layout <-> groundup adapters, for LoRA, IA3, prompt and prefix tuning.

    adapter_config.json          peft's config (peft_type, r, lora_alpha, target_modules, ...)
    adapter_model.safetensors    base_model.model.<HF module>.lora_A.weight / .lora_B.weight   (LoRA)
                                 base_model.model.<HF module>.ia3_l   (out, 1), or (1, in) for feedforward   (IA3)
                                 prompt_embeddings   (n_virtual_tokens, d)   (prompt tuning)
                                 prompt_embeddings   (n_virtual_tokens, n_layer * 2 * Hkv * D)   (prefix tuning:
                                 the folded prefix, groundup's (n_layer, 2, Hkv, P, D) with P moved first)

save_peft(model, dir) writes an adapter that `peft.PeftModel.from_pretrained` loads onto the transformers model
`save_hf` exports, with identical outputs; load_peft(model, dir) reads one peft wrote into a groundup model.

HF module names come from hf_keys.py's per-family key maps (one weight row = one module). GPT-2 fuses q, k, v
in one Conv1D `c_attn`, so one HF adapter there stands for up to three groundup ones:

    LoRA  export  A = [A_q; A_k; A_v] (r_q + r_k + r_v, in),  B = blockdiag(B_q, B_k, B_v) (3d, sum r)  (exact)
          import  A shared by q, k, v;  B split by rows into (d, r) blocks                          (exact)
    IA3   the (3d, 1) vector is [l_q; l_k; l_v] (ones where groundup has no adapter)
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..models.decoder import DecoderLM
from ..models.encoder import Encoder, EncoderForPreTraining
from ..peft.api import base_model, components, delete_adapter, inject, peft_state
from ..peft.config import IA3Config, LoraConfig, PeftError, PrefixTuningConfig, PromptTuningConfig
from ..peft.ia3 import IA3Linear
from ..peft.layer import features
from ..peft.lora import LoraLinear
from ..peft.prefix import prefix_from_flat, prefix_to_flat
from ..peft.saving import load_into
from .hf_config import hf_family
from .hf_keys import KeyRule, bert_rules, gpt2_rules, llama_rules

CONFIG_FILE, WEIGHTS_FILE, PREFIX = "adapter_config.json", "adapter_model.safetensors", "base_model.model."
# peft options groundup does not implement: refused on import rather than silently ignored.
UNSUPPORTED = ("use_dora", "lora_bias", "modules_to_save", "layer_replication", "trainable_token_indices",
               "target_parameters", "alora_invocation_tokens", "use_qalora", "use_bdlora")


@dataclass(frozen=True)
class ModuleMap:
    hf: str  # HF module name inside the transformers model, e.g. "transformer.h.0.attn.c_attn"
    ours: tuple[str, ...]  # groundup module name(s): three when HF fuses q, k, v
    op: str  # the weight's hf_keys op: copy | conv1d | conv1d_qkv


def module_table(rules: list[KeyRule]) -> list[ModuleMap]:
    """HF module <-> groundup module(s), read off a family's weight key rules."""
    w = ".weight"
    return [ModuleMap(r.hf[: -len(w)], tuple(o[: -len(w)] for o in r.ours), r.op) for r in rules
            if r.hf.endswith(w) and all(o.endswith(w) for o in r.ours) and r.op in ("copy", "conv1d", "conv1d_qkv")]


def _plan(model: nn.Module) -> tuple[list[ModuleMap], str | None, str]:
    """(module table, peft task_type, family) for the transformers class save_hf exports this model as."""
    base = base_model(model)
    cfg = getattr(base, "config", None)
    if isinstance(base, DecoderLM):
        family = hf_family(cfg)
        return module_table(gpt2_rules(cfg) if family == "gpt2" else llama_rules(cfg)), "CAUSAL_LM", family
    if isinstance(base, (Encoder, EncoderForPreTraining)):
        heads = isinstance(base, EncoderForPreTraining)
        rules = bert_rules(cfg, heads, pooler=heads or base.pooler is not None)
        return module_table(rules), None if heads else "FEATURE_EXTRACTION", hf_family(cfg)
    raise PeftError(f"the HF PEFT layout maps DecoderLM (GPT-2 / Llama), Encoder and EncoderForPreTraining (BERT); "
                    f"not {type(base).__name__}. Use groundup.peft.save_adapter for it")


def _out_sizes(model: nn.Module, names: tuple[str, ...]) -> list[int]:
    return [features(model.get_submodule(n))[1] for n in names]


# --- export -------------------------------------------------------------------------------------------------
def _export_lora(model: nn.Module, name: str, table: list[ModuleMap]) -> tuple[dict, dict]:
    cfg: LoraConfig = peft_state(model).configs[name]
    layers = {n: c for n, c in components(model) if isinstance(c, LoraLinear) and name in c.adapter_names()}
    tensors, ranks, alphas = {}, {}, {}
    for mm in table:
        parts = [o for o in mm.ours if o in layers]
        if not parts:
            continue
        scale = layers[parts[0]].scaling[name]
        a = torch.cat([layers[o].lora_A[name].weight.detach() for o in parts])  # (sum r, in)
        sizes, rank = _out_sizes(model, mm.ours), a.shape[0]
        b = a.new_zeros(sum(sizes), rank)  # (out, sum r): block-diagonal when HF fuses q, k, v
        row, col = 0, 0
        for o, size in zip(mm.ours, sizes, strict=True):
            if o in layers:
                part = layers[o].lora_B[name].weight.detach()  # (size, r_o)
                b[row: row + size, col: col + part.shape[1]] = part * (layers[o].scaling[name] / scale)
                col += part.shape[1]
            row += size
        tensors[f"{PREFIX}{mm.hf}.lora_A.weight"], tensors[f"{PREFIX}{mm.hf}.lora_B.weight"] = a, b
        ranks[mm.hf], alphas[mm.hf] = rank, scale * (math.sqrt(rank) if cfg.rslora else rank)
    config = {
        "peft_type": "LORA", "r": cfg.r, "lora_alpha": cfg.alpha, "lora_dropout": cfg.dropout,
        "target_modules": sorted(ranks), "use_rslora": cfg.rslora, "bias": "none", "init_lora_weights": True,
        "rank_pattern": {re.escape(h): r for h, r in ranks.items() if r != cfg.r},
        "alpha_pattern": {re.escape(h): a for h, a in alphas.items() if not math.isclose(a, cfg.alpha, rel_tol=1e-9)},
    }
    return config, tensors


def _export_ia3(model: nn.Module, name: str, table: list[ModuleMap]) -> tuple[dict, dict]:
    layers = {n: c for n, c in components(model) if isinstance(c, IA3Linear) and name in c.adapter_names()}
    tensors, targets, feedforward = {}, [], []
    for mm in table:
        parts = [o for o in mm.ours if o in layers]
        if not parts:
            continue
        ff = {layers[o].feedforward for o in parts}
        if len(mm.ours) > 1 and True in ff:
            raise PeftError(f"IA3 feedforward scaling on {parts} (fused into HF {mm.hf}) has no peft equivalent")
        vec = torch.cat([layers[o].ia3_l[name].detach() if o in layers else torch.ones(size)
                         for o, size in zip(mm.ours, _out_sizes(model, mm.ours), strict=True)])
        is_ff = True in ff
        tensors[f"{PREFIX}{mm.hf}.ia3_l"] = vec[None, :] if is_ff else vec[:, None]  # (1, in) | (out, 1)
        targets.append(mm.hf)
        if is_ff:
            feedforward.append(mm.hf)
    config = {"peft_type": "IA3", "target_modules": sorted(targets), "feedforward_modules": sorted(feedforward),
              "init_ia3_weights": True}
    return config, tensors


def _export_prompt(model: nn.Module, name: str, table: list[ModuleMap]) -> tuple[dict, dict]:
    weight = model.prompts[name].weight.detach()
    cfg = base_model(model).config
    config = {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": weight.shape[0], "token_dim": weight.shape[1],
              "num_transformer_submodules": 1, "num_attention_heads": cfg.n_head, "num_layers": cfg.n_layer,
              "prompt_tuning_init": "RANDOM", "prompt_tuning_init_text": None, "tokenizer_name_or_path": None}
    return config, {"prompt_embeddings": weight}


def _export_prefix(model: nn.Module, name: str, table: list[ModuleMap]) -> tuple[dict, dict]:
    prefix = model.export_state(name)["prefix"]  # (L, 2, Hkv, P, D)
    L, _, H, P, D = prefix.shape
    config = {"peft_type": "PREFIX_TUNING", "num_virtual_tokens": P, "token_dim": H * D, "num_attention_heads": H,
              "num_layers": L, "num_transformer_submodules": 1, "encoder_hidden_size": H * D,
              "prefix_projection": False}
    return config, {"prompt_embeddings": prefix_to_flat(prefix)}


EXPORTERS: dict[str, Callable[[nn.Module, str, list[ModuleMap]], tuple[dict, dict]]] = {
    "lora": _export_lora, "ia3": _export_ia3, "prompt": _export_prompt, "prefix": _export_prefix,
}


def save_peft(model: nn.Module, out_dir: str | os.PathLike, adapter_name: str | None = None) -> Path:
    """Write adapter `adapter_name` (default: the active one) in Hugging Face PEFT's layout, for the transformers
    model that groundup.interop.save_hf exports from the same base model."""
    state = peft_state(model)
    name = adapter_name or state.active
    if state.method not in EXPORTERS:
        raise PeftError(f"the HF PEFT layout covers {sorted(EXPORTERS)} here; save {state.method} adapters with "
                        "groundup.peft.save_adapter")
    if name not in state.configs:
        raise PeftError(f"no adapter {name!r}; this model has {list(state.configs)}")
    table, task_type, family = _plan(model)
    config, tensors = EXPORTERS[state.method](model, name, table)
    config.update(task_type=task_type, base_model_name_or_path=None, inference_mode=True, revision=None)
    if state.method not in ("prompt", "prefix"):
        config.update(fan_in_fan_out=family == "gpt2", modules_to_save=None)  # GPT-2's Conv1D stores (in, out)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    return out


# --- import -------------------------------------------------------------------------------------------------
def _pattern_value(patterns: dict[str, Any], key: str, default: Any) -> Any:
    """peft's get_pattern_key: the first pattern p with re.match(rf'(.*\\.)?({p})$', key)."""
    return next((v for p, v in (patterns or {}).items() if re.match(rf"(.*\.)?({p})$", key)), default)


def _by_module(tensors: dict[str, torch.Tensor], suffixes: tuple[str, ...], where: str) -> dict[str, dict]:
    """{HF module: {suffix: tensor}} from peft keys '<PREFIX><module>.<suffix>'; anything else is refused."""
    out: dict[str, dict] = {}
    bad = []
    for key, t in tensors.items():
        hit = next((s for s in suffixes if key.startswith(PREFIX) and key.endswith("." + s)), None)
        if hit is None:
            bad.append(key)
            continue
        out.setdefault(key[len(PREFIX): -len(hit) - 1], {})[hit] = t
    if bad:
        raise PeftError(f"{where}: tensors groundup cannot map {bad[:6]} (expected '{PREFIX}<module>.{suffixes[0]}')")
    return out


def _lookup(table: list[ModuleMap], hf: str, where: str, family: str) -> ModuleMap:
    found = next((mm for mm in table if mm.hf == hf), None)
    if found is None:
        raise PeftError(f"{where}: the adapter targets HF module {hf!r}, which a {family} model exported by save_hf "
                        "does not have; the adapter was made for another architecture or size")
    return found


def _import_lora(model, config, tensors, name, table, family, where):
    modules = _by_module(tensors, ("lora_A.weight", "lora_B.weight"), where)
    rslora, alpha0, r0 = bool(config.get("use_rslora")), float(config.get("lora_alpha", 8)), int(config.get("r", 8))
    ours, ranks, alphas = {}, {}, {}
    for hf, pair in modules.items():
        mm = _lookup(table, hf, where, family)
        a, b = pair["lora_A.weight"], pair["lora_B.weight"]  # (r, in), (out, r)
        alpha = float(_pattern_value(config.get("alpha_pattern"), hf, alpha0))
        sizes = _out_sizes(model, mm.ours)
        if b.shape[0] != sum(sizes):
            raise PeftError(f"{where}: {hf}.lora_B has {b.shape[0]} rows; this model's {hf} has {sum(sizes)} outputs")
        for o, b_part in zip(mm.ours, b.split(sizes), strict=True):
            ours[f"{o}.lora_A.weight"], ours[f"{o}.lora_B.weight"] = a, b_part
            ranks[o], alphas[o] = a.shape[0], alpha
    cfg = LoraConfig(
        r=r0, alpha=alpha0, dropout=float(config.get("lora_dropout", 0.0)), target_modules=tuple(sorted(ranks)),
        rank_pattern={o: r for o, r in ranks.items() if r != r0}, rslora=rslora,
        alpha_pattern={o: a for o, a in alphas.items() if a != alpha0},
    )
    return cfg, ours


def _import_ia3(model, config, tensors, name, table, family, where):
    modules = _by_module(tensors, ("ia3_l",), where)
    ff_cfg = config.get("feedforward_modules") or []
    ours, targets, feedforward = {}, [], []
    for hf, entry in modules.items():
        mm, vec = _lookup(table, hf, where, family), entry["ia3_l"]
        is_ff = bool(re.fullmatch(ff_cfg, hf)) if isinstance(ff_cfg, str) else any(hf.endswith(t) for t in ff_cfg)
        if vec.dim() != 2 or vec.shape[0 if is_ff else 1] != 1:
            raise PeftError(f"{where}: {hf}.ia3_l has shape {tuple(vec.shape)}; expected (1, in) for a feedforward "
                            "module, (out, 1) otherwise")
        sizes = [features(model.get_submodule(o))[0] for o in mm.ours] if is_ff else _out_sizes(model, mm.ours)
        if vec.numel() != sum(sizes) or (is_ff and len(mm.ours) > 1):
            raise PeftError(f"{where}: {hf}.ia3_l has {vec.numel()} entries; this model's {hf} needs {sum(sizes)}")
        for o, part in zip(mm.ours, vec.flatten().split(sizes), strict=True):
            ours[f"{o}.ia3_l"] = part
            targets.append(o)
            if is_ff:
                feedforward.append(o)
    return IA3Config(target_modules=tuple(sorted(targets)), feedforward_modules=tuple(sorted(feedforward))), ours


def _import_prompt(model, config, tensors, name, table, family, where):
    weight = tensors.get("prompt_embeddings")
    d = base_model(model).config.d_model
    if weight is None or len(tensors) != 1:
        raise PeftError(f"{where}: a prompt-tuning adapter holds exactly 'prompt_embeddings'; got {sorted(tensors)}")
    if int(config.get("num_transformer_submodules") or 1) != 1:
        raise PeftError(f"{where}: num_transformer_submodules={config['num_transformer_submodules']} (encoder-decoder "
                        "prompts) is not supported; groundup prompts decoder-only and encoder-only models")
    if weight.dim() != 2 or weight.shape[1] != d:
        raise PeftError(f"{where}: prompt_embeddings {tuple(weight.shape)} do not fit this model (d_model={d}); "
                        "the adapter was made for another model")
    return PromptTuningConfig(n_virtual_tokens=weight.shape[0]), {"prompt.weight": weight}


def _import_prefix(model, config, tensors, name, table, family, where):
    """peft saves the prefix its encoder produces (with or without its projection MLP) as one flat tensor."""
    weight = tensors.get("prompt_embeddings")
    cfg = base_model(model).config
    L, H, D = cfg.n_layer, cfg.n_kv_head, cfg.head_dim
    if weight is None or len(tensors) != 1:
        raise PeftError(f"{where}: a prefix-tuning adapter holds exactly 'prompt_embeddings'; got {sorted(tensors)}")
    if weight.dim() != 2 or weight.shape[1] != L * 2 * H * D:
        raise PeftError(f"{where}: prompt_embeddings {tuple(weight.shape)} do not fit this model ({L} layers x 2 x "
                        f"{H} key/value heads x {D} = {L * 2 * H * D} per virtual token); the adapter was made for "
                        "another model")
    prefix = prefix_from_flat(weight, L, H, D)  # (L, 2, Hkv, P, D)
    return PrefixTuningConfig(n_virtual_tokens=weight.shape[0], reparam_hidden=None), {"prefix": prefix.contiguous()}


IMPORTERS = {"LORA": _import_lora, "IA3": _import_ia3, "PROMPT_TUNING": _import_prompt,
             "PREFIX_TUNING": _import_prefix}


def load_peft(model: nn.Module, path: str | os.PathLike, adapter_name: str = "default") -> nn.Module:
    """Load a Hugging Face PEFT adapter directory into a groundup model (the base the adapter was trained on, e.g.
    from load_hf) and return the model to use (a PromptModel / PrefixModel for prompt / prefix tuning). The adapter
    becomes active."""
    path = Path(path)
    where = str(path)
    if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a PEFT adapter directory ({CONFIG_FILE} + {WEIGHTS_FILE}); an old "
                                "adapter_model.bin must be re-saved with safe_serialization=True")
    config = json.loads((path / CONFIG_FILE).read_text())
    kind = config.get("peft_type")
    if kind not in IMPORTERS:
        raise PeftError(f"{where}: peft_type={kind!r} is not supported; groundup imports {sorted(IMPORTERS)}")
    used = [k for k in UNSUPPORTED if config.get(k)] + (["bias"] if config.get("bias", "none") != "none" else [])
    if used:
        raise PeftError(f"{where}: adapter_config.json uses {used}, which groundup does not implement; "
                        "re-train without them")
    table, _, family = _plan(model)
    cfg, ours = IMPORTERS[kind](model, config, load_file(str(path / WEIGHTS_FILE)), adapter_name, table, family, where)
    model = inject(model, cfg, adapter_name)
    try:
        load_into(model, adapter_name, ours, where)
    except PeftError:
        delete_adapter(model, adapter_name)
        raise
    return model
