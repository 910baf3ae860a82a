"""GPT-2 state dict (HF GPT2LMHeadModel, or nanoGPT's equivalent) -> groundup DecoderLM state dict.

An explicit key-map table, kept here until groundup/interop/hf.py takes it over. Two foreign
details: HF GPT-2 stores its projections as Conv1D, whose weight is (in, out), the transpose of
nn.Linear's (out, in); and c_attn is q, k, v fused along the output dimension, so it is split
into q_proj / k_proj / v_proj.
"""

from __future__ import annotations

import torch
from torch import nn

# groundup key <- GPT-2 key, outside the blocks.
TOP = {
    "embed.tok_emb.weight": "transformer.wte.weight",
    "embed.pos_emb.weight": "transformer.wpe.weight",
    "norm.weight": "transformer.ln_f.weight",
    "norm.bias": "transformer.ln_f.bias",
}
# groundup blocks.{i}.<key> <- GPT-2 transformer.h.{i}.<key>, for each parameter kind.
BLOCK = {
    "attn_norm": "ln_1",
    "attn.o_proj": "attn.c_proj",
    "mlp_norm": "ln_2",
    "mlp.up_proj": "mlp.c_fc",
    "mlp.down_proj": "mlp.c_proj",
}
LINEARS = {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}  # Conv1D in HF, nn.Linear in nanoGPT
QKV = ("attn.q_proj", "attn.k_proj", "attn.v_proj")  # <- thirds of attn.c_attn


def gpt2_to_groundup(sd: dict[str, torch.Tensor], n_layer: int, conv1d: bool = True) -> dict[str, torch.Tensor]:
    """Map a GPT-2 state dict onto groundup names. conv1d=True for HF (transpose weights),
    False for nanoGPT (already nn.Linear layout)."""

    def linear(key: str) -> torch.Tensor:  # (out, in), nn.Linear layout
        return sd[key].t().contiguous() if conv1d else sd[key]

    out = {ours: sd[theirs] for ours, theirs in TOP.items()}
    for i in range(n_layer):
        src, dst = f"transformer.h.{i}.", f"blocks.{i}."
        for ours, theirs in BLOCK.items():
            w = src + theirs + ".weight"
            out[dst + ours + ".weight"] = linear(w) if theirs in LINEARS else sd[w]
            out[dst + ours + ".bias"] = sd[src + theirs + ".bias"]
        w_qkv = linear(src + "attn.c_attn.weight")  # (3d, d)
        b_qkv = sd[src + "attn.c_attn.bias"]  # (3d,)
        for name, w, b in zip(QKV, w_qkv.chunk(3, dim=0), b_qkv.chunk(3, dim=0), strict=True):
            out[dst + name + ".weight"] = w.contiguous()  # (d, d)
            out[dst + name + ".bias"] = b.contiguous()
    out["lm_head.weight"] = out["embed.tok_emb.weight"]  # tied
    return out


def load_gpt2_into(model: nn.Module, sd: dict[str, torch.Tensor], conv1d: bool = True) -> None:
    """Copy GPT-2 weights into a groundup DecoderLM; every groundup key must be filled."""
    mapped = gpt2_to_groundup(sd, model.config.n_layer, conv1d)
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    if missing or unexpected:
        raise KeyError(f"GPT-2 -> groundup key map is incomplete: missing {missing}, unexpected {unexpected}")
