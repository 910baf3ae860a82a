"""Hugging Face ViTModel / Dinov2Model <-> groundup ViT: config mapping and one key table per family.

    HF (a fresh save_pretrained's names)                      groundup ViT
    embeddings.cls_token / .position_embeddings               cls_token / pos_embed
    embeddings.patch_embeddings.projection                    patch_embed (the strided Conv2d)
    encoder.layer.i.attention.attention.{query,key,value}     blocks.i.attn.{q,k,v}_proj
    encoder.layer.i.attention.output.dense                    blocks.i.attn.o_proj
    ViT:    layernorm_before / layernorm_after                blocks.i.attn_norm / mlp_norm
            intermediate.dense / output.dense                 blocks.i.mlp.up_proj / down_proj
    Dinov2: norm1 / norm2, mlp.fc1 / mlp.fc2                  the same
            layer_scale1 / layer_scale2 .lambda1              blocks.i.attn_scale / mlp_scale .gamma
    layernorm (+ ViT's pooler.dense)                          norm (+ pooler)

Dinov2's mask_token (used only by masked-image pretraining) is dropped on import and written as zeros on export.
"""

from __future__ import annotations

from typing import Any

import torch

from ..config import ConfigError, VisionConfig
from .hf_keys import KeyRule, _wb

VISION_TYPES = ("vit", "dinov2")
HF_ACT = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}


def vision_config_from_hf(hf: dict[str, Any], tensors: dict[str, torch.Tensor]) -> VisionConfig:
    """The VisionConfig of a ViTModel / Dinov2Model folder (its pooler is kept when the file has one)."""
    kind = hf.get("model_type")
    archs = [a for a in hf.get("architectures") or [] if a not in ("ViTModel", "Dinov2Model")]
    if archs:
        raise ConfigError(f"{kind}: architectures {archs} are not supported; groundup imports the backbones "
                          "ViTModel and Dinov2Model (save the backbone with model.vit.save_pretrained / "
                          "model.dinov2.save_pretrained)")
    if hf.get("qkv_bias", True) is not True:
        raise ConfigError(f"{kind}: qkv_bias=False is not supported (groundup's ViT blocks have q/k/v biases)")
    if hf.get("use_swiglu_ffn"):
        raise ConfigError("dinov2: use_swiglu_ffn=True (the giant model's MLP) is not supported; use a GELU model")
    act = hf.get("hidden_act", "gelu")
    if act not in HF_ACT:
        raise ConfigError(f"{kind}: hidden_act={act!r} is not supported; use one of {sorted(HF_ACT)}")
    d = hf["hidden_size"]
    dinov2 = kind == "dinov2"
    return VisionConfig(
        image_size=_side(hf.get("image_size", 224)), patch_size=_side(hf.get("patch_size", 16)),
        n_channels=hf.get("num_channels", 3), n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"],
        d_model=d, d_ff=int(d * hf.get("mlp_ratio", 4)) if dinov2 else hf.get("intermediate_size", 4 * d),
        norm_eps=hf.get("layer_norm_eps", 1e-6 if dinov2 else 1e-12), mlp=HF_ACT[act],
        layer_scale=float(hf.get("layerscale_value", 1.0)) if dinov2 else None, pool="cls",
        hf_pooler="pooler.dense.weight" in tensors,
        preprocess="imagenet", extra={"hf_model_type": kind})


def _side(value: int | list[int]) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ConfigError(f"a non-square image or patch size {value} is not supported; use a square one")
        return int(value[0])
    return int(value)


def vision_family(cfg: VisionConfig) -> str:
    """The HF model type a groundup ViT exports to: LayerScale means Dinov2, otherwise ViT."""
    if cfg.n_class:
        raise ConfigError("save_hf exports a ViT backbone (ViTModel / Dinov2Model); this one has a classification "
                          "head: export its backbone, or save it as a groundup checkpoint")
    if cfg.pre_norm or not cfg.patch_bias:  # CLIP's vision tower: only CLIPModel has ln_pre and a bias-free patch
        raise ConfigError("save_hf: ViTModel / Dinov2Model have no pre-norm (VisionConfig.pre_norm) and always a patch "
                          "bias (patch_bias); this is a CLIP vision tower: export the whole groundup CLIP (CLIPModel)")
    if cfg.layer_scale is not None:
        if cfg.hf_pooler or cfg.d_ff % cfg.d_model:
            raise ConfigError("Dinov2Model has no pooler and an MLP of mlp_ratio x d_model; this ViT has neither")
        return "dinov2"
    return "vit"


def vision_config_to_hf(cfg: VisionConfig) -> dict[str, Any]:
    kind = vision_family(cfg)
    act = {v: k for k, v in HF_ACT.items() if k != "gelu_pytorch_tanh"}[cfg.mlp]
    out = {"model_type": kind, "architectures": ["Dinov2Model" if kind == "dinov2" else "ViTModel"],
           "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
           "hidden_act": act, "layer_norm_eps": cfg.norm_eps, "image_size": cfg.image_size,
           "patch_size": cfg.patch_size, "num_channels": cfg.n_channels, "qkv_bias": True,
           "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    if kind == "dinov2":
        return {**out, "mlp_ratio": cfg.d_ff // cfg.d_model, "layerscale_value": cfg.layer_scale,
                "use_swiglu_ffn": False}
    return {**out, "intermediate_size": cfg.d_ff}


def vision_rules(cfg: VisionConfig, kind: str) -> list[KeyRule]:
    rows = [KeyRule("embeddings.cls_token", ("cls_token",)),
            KeyRule("embeddings.position_embeddings", ("pos_embed",))]
    rows += _wb("embeddings.patch_embeddings.projection", "patch_embed", True)
    for i in range(cfg.n_layer):
        h, b = f"encoder.layer.{i}", f"blocks.{i}"
        for hf_name, ours in (("query", "q"), ("key", "k"), ("value", "v")):
            rows += _wb(f"{h}.attention.attention.{hf_name}", f"{b}.attn.{ours}_proj", True)
        rows += _wb(f"{h}.attention.output.dense", f"{b}.attn.o_proj", True)
        if kind == "dinov2":
            rows += _wb(f"{h}.norm1", f"{b}.attn_norm", True) + _wb(f"{h}.norm2", f"{b}.mlp_norm", True)
            rows += _wb(f"{h}.mlp.fc1", f"{b}.mlp.up_proj", True) + _wb(f"{h}.mlp.fc2", f"{b}.mlp.down_proj", True)
            rows += [KeyRule(f"{h}.layer_scale1.lambda1", (f"{b}.attn_scale.gamma",)),
                     KeyRule(f"{h}.layer_scale2.lambda1", (f"{b}.mlp_scale.gamma",))]
        else:
            rows += _wb(f"{h}.layernorm_before", f"{b}.attn_norm", True)
            rows += _wb(f"{h}.layernorm_after", f"{b}.mlp_norm", True)
            rows += _wb(f"{h}.intermediate.dense", f"{b}.mlp.up_proj", True)
            rows += _wb(f"{h}.output.dense", f"{b}.mlp.down_proj", True)
    rows += _wb("layernorm", "norm", True)
    if cfg.hf_pooler:
        rows += _wb("pooler.dense", "pooler", True)
    return rows


IGNORED_VISION = (r"embeddings\.mask_token",)


def extra_export_tensors(cfg: VisionConfig, kind: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """What HF's class holds that groundup's ViT does not compute with: Dinov2's (unused) mask token."""
    return {"embeddings.mask_token": torch.zeros(1, cfg.d_model, dtype=dtype)} if kind == "dinov2" else {}
