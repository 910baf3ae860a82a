"""Hugging Face <-> groundup state-dict key maps, one explicit table per family.

State-dict keys are API (DESIGN rule 10): the names transformers uses live here and nowhere else.
A table is a list of KeyRule rows; each row ties one HF tensor to one or more groundup tensors and
says how the values change on the way:

    copy         same tensor                                   (Llama, BERT: both use nn.Linear)
    conv1d       transpose: GPT-2's Conv1D stores (in, out)    (c_proj, c_fc)
    conv1d_qkv   transpose + split in three: fused c_attn       (in, 3*d) -> q_proj, k_proj, v_proj (d, in)
    split_qkv    split in three: fused c_attn bias              (3*d,)    -> q, k, v biases
    experts_gate_up  Mixtral's fused experts (transformers 5 in memory): (E, 2F, d) -> E gate_proj + E up_proj
    experts_down     (E, d, F) -> E down_proj (files written by save_pretrained keep one w1/w2/w3 per expert)

A tensor HF may leave out of a file because it is tied to another one (GPT-2's lm_head, BERT's MLM
decoder) is `optional`; older files spell some tensors twice (`aliases`), and carry buffers that
are not weights at all (IGNORED patterns, e.g. GPT-2's causal-mask `attn.bias`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from ..config import ModelConfig

OPS = ("copy", "conv1d", "conv1d_qkv", "split_qkv", "experts_gate_up", "experts_down")


class HFFormatError(ValueError):
    """A Hugging Face checkpoint does not fit groundup's key map / model; the message says what and how to fix."""


@dataclass(frozen=True)
class KeyRule:
    hf: str  # the HF state-dict name (the one a fresh save_pretrained writes)
    ours: tuple[str, ...]  # the groundup name(s): several when HF fuses tensors
    op: str = "copy"
    optional: bool = False  # a tied tensor HF may store only once (under its partner's name)
    aliases: tuple[str, ...] = ()  # other names the same tensor has in older files
    write_aliases: bool = False  # export: store the tensor under its aliases too (HF expects them there)


# HF tensors that are buffers, not weights: accepted and dropped on import.
IGNORED: dict[str, tuple[str, ...]] = {
    "gpt2": (r"(.*\.)?h\.\d+\.attn\.(masked_)?bias",),
    "llama": (r"(.*\.)?layers\.\d+\.self_attn\.rotary_emb\.inv_freq",),
    "bert": (r"(.*\.)?embeddings\.position_ids",),
    # A headless BertModel becomes groundup's Encoder body, with the file's pooler when it has one (sentence
    # embeddings are mean-pooled, Reimers & Gurevych 2019, but the pooler is kept so that export writes it back).
    "bert_body": (r"(.*\.)?embeddings\.position_ids",),
}
# Names from TensorFlow-era files (the original BERT release) that transformers still renames on load.
LEGACY_NAMES = ((re.compile(r"(LayerNorm|layer_norm)\.gamma$"), r"\1.weight"),
                (re.compile(r"(LayerNorm|layer_norm)\.beta$"), r"\1.bias"))


def legacy_renamed(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LayerNorm.gamma/.beta -> .weight/.bias, as transformers does for old BERT files."""
    out = {}
    for name, t in tensors.items():
        for pattern, repl in LEGACY_NAMES:
            name = pattern.sub(repl, name)
        out[name] = t
    return out


def _wb(hf: str, ours: str, bias: bool, op: str = "copy") -> list[KeyRule]:
    """weight (+ bias) rows of one Linear / LayerNorm; a Conv1D's bias is copied, never transposed."""
    rows = [KeyRule(f"{hf}.weight", (f"{ours}.weight",), op)]
    return rows + [KeyRule(f"{hf}.bias", (f"{ours}.bias",))] if bias else rows


def gpt2_rules(cfg: ModelConfig, prefix: str = "transformer.") -> list[KeyRule]:
    """GPT2LMHeadModel (prefix 'transformer.') or GPT2Model (prefix '') <-> DecoderLM."""
    p = prefix
    rows = [
        KeyRule(f"{p}wte.weight", ("embed.tok_emb.weight",)),
        KeyRule(f"{p}wpe.weight", ("embed.pos_emb.weight",)),
    ]
    for i in range(cfg.n_layer):
        h, b = f"{p}h.{i}", f"blocks.{i}"
        qkv = tuple(f"{b}.attn.{n}_proj" for n in "qkv")
        rows += _wb(f"{h}.ln_1", f"{b}.attn_norm", True)
        rows += [
            KeyRule(f"{h}.attn.c_attn.weight", tuple(f"{n}.weight" for n in qkv), "conv1d_qkv"),
            KeyRule(f"{h}.attn.c_attn.bias", tuple(f"{n}.bias" for n in qkv), "split_qkv"),
        ]
        rows += _wb(f"{h}.attn.c_proj", f"{b}.attn.o_proj", True, "conv1d")
        rows += _wb(f"{h}.ln_2", f"{b}.mlp_norm", True)
        rows += _wb(f"{h}.mlp.c_fc", f"{b}.mlp.up_proj", True, "conv1d")
        rows += _wb(f"{h}.mlp.c_proj", f"{b}.mlp.down_proj", True, "conv1d")
    rows += _wb(f"{p}ln_f", "norm", True)
    rows.append(KeyRule("lm_head.weight", ("lm_head.weight",), optional=cfg.tie_embeddings))
    return rows


def _moe_rules(cfg: ModelConfig, h: str, b: str, fused: bool) -> list[KeyRule]:
    """Mixtral's sparse MoE block <-> groundup's MoE: router `gate`, experts w1/w3/w2 = gate/up/down_proj."""
    experts = range(cfg.n_expert)
    if fused:  # transformers 5's own layout: block_sparse_moe renamed to mlp, experts stacked in 3-D tensors
        gate_up = tuple(f"{b}.mlp.experts.{j}.{n}_proj.weight" for n in ("gate", "up") for j in experts)
        down = tuple(f"{b}.mlp.experts.{j}.down_proj.weight" for j in experts)
        return [KeyRule(f"{h}.mlp.gate.weight", (f"{b}.mlp.gate.weight",)),
                KeyRule(f"{h}.mlp.experts.gate_up_proj", gate_up, "experts_gate_up"),
                KeyRule(f"{h}.mlp.experts.down_proj", down, "experts_down")]
    rows = [KeyRule(f"{h}.block_sparse_moe.gate.weight", (f"{b}.mlp.gate.weight",))]
    for j in experts:
        for hf_name, ours in (("w1", "gate_proj"), ("w2", "down_proj"), ("w3", "up_proj")):
            rows.append(KeyRule(f"{h}.block_sparse_moe.experts.{j}.{hf_name}.weight",
                                (f"{b}.mlp.experts.{j}.{ours}.weight",)))
    return rows


def llama_rules(cfg: ModelConfig, prefix: str = "model.", fused_experts: bool = False) -> list[KeyRule]:
    """LlamaForCausalLM / MistralForCausalLM (SmolLM2 is a Llama) / MixtralForCausalLM <-> DecoderLM. HF's
    rotary layout is already groundup's half-split one, so q/k weights need no permutation."""
    p = prefix
    rows = [KeyRule(f"{p}embed_tokens.weight", ("embed.tok_emb.weight",))]
    for i in range(cfg.n_layer):
        h, b = f"{p}layers.{i}", f"blocks.{i}"
        for name in ("q", "k", "v", "o"):
            rows += _wb(f"{h}.self_attn.{name}_proj", f"{b}.attn.{name}_proj", cfg.bias)
        if cfg.n_expert:
            rows += _moe_rules(cfg, h, b, fused_experts)
        for name in ("gate", "up", "down") if not cfg.n_expert else ():
            rows += _wb(f"{h}.mlp.{name}_proj", f"{b}.mlp.{name}_proj", cfg.bias)
        rows.append(KeyRule(f"{h}.input_layernorm.weight", (f"{b}.attn_norm.weight",)))
        rows.append(KeyRule(f"{h}.post_attention_layernorm.weight", (f"{b}.mlp_norm.weight",)))
    rows.append(KeyRule(f"{p}norm.weight", ("norm.weight",)))
    rows.append(KeyRule("lm_head.weight", ("lm_head.weight",), optional=cfg.tie_embeddings))
    return rows


_BERT_LAYER = {
    "attention.self.query": "attn.q_proj",
    "attention.self.key": "attn.k_proj",
    "attention.self.value": "attn.v_proj",
    "attention.output.dense": "attn.o_proj",
    "attention.output.LayerNorm": "attn_norm",  # post-norm: LayerNorm(x + attn(x))
    "intermediate.dense": "mlp.up_proj",
    "output.dense": "mlp.down_proj",
    "output.LayerNorm": "mlp_norm",  # post-norm: LayerNorm(x + mlp(x))
}


def bert_rules(cfg: ModelConfig, heads: bool, prefix: str | None = None, pooler: bool = False) -> list[KeyRule]:
    """BertForPreTraining (heads=True) <-> EncoderForPreTraining, or a headless BertModel (heads=False;
    keys without the 'bert.' prefix by default, as sentence-transformers' MiniLM stores them) <-> Encoder,
    with BERT's pooler when `pooler` (a BertModel's default; the pre-training heads always have one)."""
    hf = prefix if prefix is not None else ("bert." if heads else "")
    ours = "encoder." if heads else ""
    rows = [
        KeyRule(f"{hf}embeddings.word_embeddings.weight", (f"{ours}embed.tok_emb.weight",)),
        KeyRule(f"{hf}embeddings.position_embeddings.weight", (f"{ours}embed.pos_emb.weight",)),
    ]
    if cfg.n_segment:
        rows.append(KeyRule(f"{hf}embeddings.token_type_embeddings.weight", (f"{ours}embed.seg_emb.weight",)))
    rows += _wb(f"{hf}embeddings.LayerNorm", f"{ours}embed.norm", True)
    for i in range(cfg.n_layer):
        for hf_name, our_name in _BERT_LAYER.items():
            rows += _wb(f"{hf}encoder.layer.{i}.{hf_name}", f"{ours}blocks.{i}.{our_name}", True)
    if heads or pooler:
        rows += _wb(f"{hf}pooler.dense", "pooler.dense", True)
    if not heads:
        return rows
    rows += _wb("cls.predictions.transform.dense", "mlm_head.dense", True)
    rows += _wb("cls.predictions.transform.LayerNorm", "mlm_head.norm", True)
    rows += [
        KeyRule("cls.predictions.decoder.weight", ("mlm_head.decoder.weight",), optional=cfg.tie_embeddings),
        # HF ties the decoder's bias to this per-token bias; older files store both names.
        KeyRule("cls.predictions.bias", ("mlm_head.decoder.bias",), aliases=("cls.predictions.decoder.bias",),
                write_aliases=not cfg.tie_embeddings),  # transformers 5 ties the two only with tied embeddings
        KeyRule("cls.seq_relationship.weight", ("nsp_head.weight",)),
        KeyRule("cls.seq_relationship.bias", ("nsp_head.bias",)),
    ]
    return rows


def _to_ours(op: str, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
    if op == "copy":
        return (t,)
    if op == "conv1d":
        return (t.t(),)  # (in, out) -> (out, in)
    if op == "conv1d_qkv":
        return tuple(w.t() for w in t.chunk(3, dim=1))  # (in, 3d) -> 3 × (d, in)
    if op == "experts_gate_up":
        gate, up = t.chunk(2, dim=1)  # (E, 2F, d) -> 2 × (E, F, d)
        return (*gate.unbind(0), *up.unbind(0))  # 2E × (F, d)
    if op == "experts_down":
        return t.unbind(0)  # (E, d, F) -> E × (d, F)
    return t.chunk(3, dim=0)  # split_qkv: (3d,) -> 3 × (d,)


def _to_hf(op: str, ts: list[torch.Tensor]) -> torch.Tensor:
    if op == "copy":
        return ts[0]
    if op == "conv1d":
        return ts[0].t()
    if op == "conv1d_qkv":
        return torch.cat([w.t() for w in ts], dim=1)  # 3 × (d, in) -> (in, 3d)
    if op == "experts_gate_up":
        n = len(ts) // 2
        return torch.cat([torch.stack(ts[:n]), torch.stack(ts[n:])], dim=1)  # 2E × (F, d) -> (E, 2F, d)
    if op == "experts_down":
        return torch.stack(ts)  # E × (d, F) -> (E, d, F)
    return torch.cat(ts, dim=0)


def hf_to_groundup(
    rules: list[KeyRule], tensors: dict[str, torch.Tensor], ignored: Iterable[str] = (), where: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Rename (and reshape) HF tensors to groundup names. Raises HFFormatError listing every required
    HF tensor that is absent and every HF tensor no rule (nor ignore pattern) accounts for."""
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    missing: list[str] = []
    for rule in rules:
        names = [n for n in (rule.hf, *rule.aliases) if n in tensors]
        if not names:
            if not rule.optional:
                missing.append(rule.hf)
            continue
        first = tensors[names[0]]
        for other in names[1:]:  # an older file's duplicate spelling must hold the same values
            if not torch.equal(tensors[other], first):
                raise HFFormatError(f"{where}: {names[0]} and {other} should be the same tied tensor but differ")
        used.update(names)
        for name, value in zip(rule.ours, _to_ours(rule.op, first), strict=True):
            out[name] = value.contiguous()
    patterns = [re.compile(p) for p in ignored]
    unknown = sorted(k for k in tensors if k not in used and not any(p.fullmatch(k) for p in patterns))
    if missing or unknown:
        raise HFFormatError(
            f"{where} does not match its config's architecture: missing tensors {_few(missing)}, "
            f"unexpected tensors {_few(unknown)}. Check that config.json belongs to these weights "
            "(n_layer, bias, tie_word_embeddings, head classes) or re-save the model with save_pretrained"
        )
    return out


def groundup_to_hf(rules: list[KeyRule], state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """groundup state dict -> HF tensors; tied (optional) tensors are stored once, as transformers does."""
    out = {}
    for rule in rules:
        if rule.optional:
            continue
        out[rule.hf] = _to_hf(rule.op, [state[n].detach() for n in rule.ours]).contiguous()
        for alias in rule.aliases if rule.write_aliases else ():
            out[alias] = out[rule.hf].clone()  # safetensors stores no shared memory
    return out


def _few(names: list[str], n: int = 8) -> str:
    if not names:
        return "[]"
    more = f" ... and {len(names) - n} more" if len(names) > n else ""
    return f"{names[:n]}{more} ({len(names)} total)"
