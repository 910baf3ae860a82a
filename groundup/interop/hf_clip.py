"""Hugging Face CLIPModel <-> groundup CLIP: config mapping and the key table.

    HF (a fresh save_pretrained's names)                         groundup CLIP
    text_model.embeddings.token_embedding / position_embedding   text.embed.tok_emb / pos_emb
    vision_model.embeddings.class_embedding (d,)                 visual.cls_token (1, 1, d)
    vision_model.embeddings.patch_embedding (no bias)            visual.patch_embed
    vision_model.embeddings.position_embedding.weight (1+N, d)   visual.pos_embed (1, 1+N, d)
    vision_model.pre_layrnorm (sic)                              visual.pre_norm
    {text,vision}_model.encoder.layers.i.self_attn.{q,k,v}_proj  {text,visual}.blocks.i.attn.{q,k,v}_proj
        .self_attn.out_proj / .layer_norm1 / .layer_norm2        .attn.o_proj / .attn_norm / .mlp_norm
        .mlp.fc1 / .mlp.fc2                                      .mlp.up_proj / .mlp.down_proj
    text_model.final_layer_norm / vision_model.post_layernorm    text.norm / visual.norm (applied to every token:
                                                                 on the pooled CLS it is HF's post_layernorm)
    visual_projection / text_projection / logit_scale            the same

HF pools the text at the first eos_token_id, except that eos_token_id=2 (configs written before transformers
PR #24773, e.g. openai/clip-vit-base-patch32's) means the argmax of the ids: ClipConfig.eot_id=None.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..config import ConfigError, ModelConfig, VisionConfig
from ..models.clip import CLIP, ClipConfig
from .hf_keys import KeyRule, _wb, groundup_to_hf, hf_to_groundup
from .hf_vision import HF_ACT, _side

CLIP_ACT = {**HF_ACT, "quick_gelu": "quick_gelu"}  # HF hidden_act -> groundup mlp
ACT_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "quick_gelu": "quick_gelu"}
LEGACY_EOS = 2  # HF's marker for "pool at the argmax of the ids"
# CLIPTextConfig / CLIPVisionConfig defaults, for keys an older config.json leaves out
TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                     num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                     bos_token_id=49406, eos_token_id=49407, pad_token_id=1)
VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       num_channels=3, image_size=224, patch_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5)
IGNORED_CLIP = (r"(text|vision)_model\.embeddings\.position_ids",)  # buffers older files carry


def _act(sub: dict[str, Any], tower: str) -> str:
    act = sub["hidden_act"]
    if act not in CLIP_ACT:
        raise ConfigError(f"clip: {tower}_config.hidden_act={act!r} is not supported; use one of {sorted(CLIP_ACT)}")
    return CLIP_ACT[act]


def clip_config_from_hf(hf: dict[str, Any]) -> ClipConfig:
    """The ClipConfig of a CLIPModel folder's config.json."""
    archs = [a for a in hf.get("architectures") or [] if a != "CLIPModel"]
    if archs:
        raise ConfigError(f"clip: architectures {archs} are not supported; groundup imports CLIPModel (both towers "
                          "and projections): save that with CLIPModel.save_pretrained")
    text = {**TEXT_DEFAULTS, **(hf.get("text_config") or hf.get("text_config_dict") or {})}
    vision = {**VISION_DEFAULTS, **(hf.get("vision_config") or hf.get("vision_config_dict") or {})}
    eos = text["eos_token_id"]
    if not isinstance(eos, int):
        raise ConfigError(f"clip: text_config.eos_token_id={eos!r} must be one integer id (the end-of-text token)")
    text_cfg = ModelConfig(
        arch="decoder", vocab_size=text["vocab_size"], block_size=text["max_position_embeddings"],
        n_layer=text["num_hidden_layers"], n_head=text["num_attention_heads"], d_model=text["hidden_size"],
        d_ff=text["intermediate_size"], pos="learned", norm="layernorm", norm_eps=text["layer_norm_eps"],
        prenorm=True, mlp=_act(text, "text"), bias=True, tie_embeddings=False)
    vision_cfg = VisionConfig(
        image_size=_side(vision["image_size"]), patch_size=_side(vision["patch_size"]),
        n_channels=vision["num_channels"], n_layer=vision["num_hidden_layers"], n_head=vision["num_attention_heads"],
        d_model=vision["hidden_size"], d_ff=vision["intermediate_size"], norm_eps=vision["layer_norm_eps"],
        mlp=_act(vision, "vision"), pool="cls", pre_norm=True, patch_bias=False, preprocess="clip")
    return ClipConfig(
        vision=vision_cfg, text=text_cfg, embed_dim=hf.get("projection_dim", 512), text_pool="eot",
        eot_id=None if eos == LEGACY_EOS else eos, init_logit_scale=float(hf.get("logit_scale_init_value", 2.6592)),
        extra={"hf_model_type": "clip", "hf_text_ids": {k: text[k] for k in ("bos_token_id", "pad_token_id")}})


def _unfit(cfg: ClipConfig) -> list[str]:
    """The fields of a groundup CLIP that a CLIPModel cannot hold, each with the value it needs."""
    t, v = cfg.text, cfg.vision
    need = [("text_pool", cfg.text_pool, "eot"), ("text.pos", t.pos, "learned"), ("text.norm", t.norm, "layernorm"),
            ("text.prenorm", t.prenorm, True), ("text.bias", t.bias, True), ("text.n_kv_head", t.n_kv_head, t.n_head),
            ("text.head_dim", t.head_dim, t.d_model // t.n_head), ("text.n_expert", t.n_expert, 0),
            ("text.layer_scale", t.layer_scale, None), ("text.embed_norm", t.embed_norm, False),
            ("text.embed_scale", t.embed_scale, False), ("vision.pre_norm", v.pre_norm, True),
            ("vision.patch_bias", v.patch_bias, False), ("vision.pool", v.pool, "cls"),
            ("vision.layer_scale", v.layer_scale, None), ("vision.hf_pooler", v.hf_pooler, False)]
    out = [f"{name}={have!r} (CLIPModel: {want!r})" for name, have, want in need if have != want]
    out += [f"{name}.mlp={kind!r} (CLIPModel: one of {sorted(ACT_TO_HF)})"
            for name, kind in (("text", t.mlp), ("vision", v.mlp)) if kind not in ACT_TO_HF]
    if cfg.eot_id == LEGACY_EOS:
        out.append("eot_id=2 (HF reads eos_token_id=2 as 'pool at the argmax of the ids': use None for that)")
    return out


def clip_config_to_hf(cfg: ClipConfig) -> dict[str, Any]:
    unfit = _unfit(cfg)
    if unfit:
        raise ConfigError(f"save_hf: a Hugging Face CLIPModel cannot hold this CLIP: {'; '.join(unfit)}; save it as a "
                          "groundup checkpoint instead")
    t, v = cfg.text, cfg.vision
    ids = {"bos_token_id": 49406, "pad_token_id": 1, **cfg.extra.get("hf_text_ids", {})}
    text = {"model_type": "clip_text_model", "vocab_size": t.vocab_size, "hidden_size": t.d_model,
            "intermediate_size": t.d_ff, "num_hidden_layers": t.n_layer, "num_attention_heads": t.n_head,
            "max_position_embeddings": t.block_size, "hidden_act": ACT_TO_HF[t.mlp], "layer_norm_eps": t.norm_eps,
            "attention_dropout": 0.0, "projection_dim": cfg.embed_dim, **ids,
            "eos_token_id": LEGACY_EOS if cfg.eot_id is None else cfg.eot_id}
    vision = {"model_type": "clip_vision_model", "hidden_size": v.d_model, "intermediate_size": v.d_ff,
              "num_hidden_layers": v.n_layer, "num_attention_heads": v.n_head, "num_channels": v.n_channels,
              "image_size": v.image_size, "patch_size": v.patch_size, "hidden_act": ACT_TO_HF[v.mlp],
              "layer_norm_eps": v.norm_eps, "attention_dropout": 0.0, "projection_dim": cfg.embed_dim}
    return {"model_type": "clip", "architectures": ["CLIPModel"], "projection_dim": cfg.embed_dim,
            "logit_scale_init_value": cfg.init_logit_scale, "text_config": text, "vision_config": vision}


def _tower_rules(hf: str, ours: str, n_layer: int) -> list[KeyRule]:
    rows = []
    for i in range(n_layer):
        h, b = f"{hf}.encoder.layers.{i}", f"{ours}.blocks.{i}"
        for name in "qkv":
            rows += _wb(f"{h}.self_attn.{name}_proj", f"{b}.attn.{name}_proj", True)
        rows += _wb(f"{h}.self_attn.out_proj", f"{b}.attn.o_proj", True)
        rows += _wb(f"{h}.layer_norm1", f"{b}.attn_norm", True) + _wb(f"{h}.layer_norm2", f"{b}.mlp_norm", True)
        rows += _wb(f"{h}.mlp.fc1", f"{b}.mlp.up_proj", True) + _wb(f"{h}.mlp.fc2", f"{b}.mlp.down_proj", True)
    return rows


def clip_rules(cfg: ClipConfig) -> list[KeyRule]:
    rows = [KeyRule("text_model.embeddings.token_embedding.weight", ("text.embed.tok_emb.weight",)),
            KeyRule("text_model.embeddings.position_embedding.weight", ("text.embed.pos_emb.weight",))]
    rows += _tower_rules("text_model", "text", cfg.text.n_layer)
    rows += _wb("text_model.final_layer_norm", "text.norm", True)
    rows += [KeyRule("vision_model.embeddings.class_embedding", ("visual.cls_token",)),  # reshaped: RESHAPED
             KeyRule("vision_model.embeddings.patch_embedding.weight", ("visual.patch_embed.weight",)),
             KeyRule("vision_model.embeddings.position_embedding.weight", ("visual.pos_embed",))]
    rows += _wb("vision_model.pre_layrnorm", "visual.pre_norm", True)
    rows += _tower_rules("vision_model", "visual", cfg.vision.n_layer)
    rows += _wb("vision_model.post_layernorm", "visual.norm", True)
    return rows + [KeyRule(n, (n,)) for n in ("visual_projection.weight", "text_projection.weight", "logit_scale")]


# groundup name -> HF name of the tensors whose shapes differ: HF (d,) / (1 + N, d), groundup (1, 1, d) / (1, 1 + N, d)
RESHAPED = {"visual.cls_token": "vision_model.embeddings.class_embedding",
            "visual.pos_embed": "vision_model.embeddings.position_embedding.weight"}


def clip_from_hf(hf: dict[str, Any], tensors: dict[str, torch.Tensor], where: str) -> CLIP:
    """A groundup CLIP holding a CLIPModel folder's weights (every tensor accounted for, shapes checked)."""
    from .hf import load_into  # hf.py imports this module

    cfg = clip_config_from_hf(hf)
    cfg.extra.update(source=where)
    model = CLIP(cfg)
    state = hf_to_groundup(clip_rules(cfg), tensors, IGNORED_CLIP, where=where)
    for name in RESHAPED:
        state[name] = state[name].reshape(1, -1, cfg.vision.d_model)
    load_into(model, state, where)
    return model


def write_clip_hf(tmp: Path, model: CLIP, tokenizer: Any) -> None:
    """config.json + model.safetensors of a CLIPModel that transformers loads with identical outputs."""
    if tokenizer is not None:
        raise ConfigError("save_hf: a CLIP export writes the weights and config only; pass tokenizer=None (groundup's "
                          "ClipTokenizer gives the ids of OpenAI's CLIP vocabulary, as HF's CLIPTokenizer does)")
    cfg = model.config
    hf_cfg = clip_config_to_hf(cfg)
    rules, state = clip_rules(cfg), model.state_dict()
    lost = sorted(set(state) - {n for rule in rules for n in rule.ours})
    if lost:
        raise ConfigError(f"save_hf: no CLIPModel name for groundup tensors {lost[:8]}; CLIPModel cannot hold them")
    tensors = groundup_to_hf(rules, state)
    tensors[RESHAPED["visual.cls_token"]] = tensors[RESHAPED["visual.cls_token"]].reshape(cfg.vision.d_model)
    tensors[RESHAPED["visual.pos_embed"]] = tensors[RESHAPED["visual.pos_embed"]].reshape(-1, cfg.vision.d_model)
    hf_cfg["torch_dtype"] = str(state["logit_scale"].dtype).removeprefix("torch.")
    (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2))
    save_file({k: v.cpu().contiguous() for k, v in tensors.items()}, str(tmp / "model.safetensors"),
              metadata={"format": "pt"})
