"""Mixtral interop: logit parity with transformers' MixtralForCausalLM in both directions (top-1 and top-2),
both on-disk layouts of the experts, the router loss against transformers' own, and what cannot be exported.

import: a random transformers model -> save_pretrained -> load_hf -> same logits as transformers.
export: a random groundup MoE decoder -> save_hf -> transformers from_pretrained -> same logits as groundup.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from hf_helpers import randomize_
from safetensors import safe_open
from safetensors.torch import save_file
from torch.testing import assert_close
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

from groundup.config import ConfigError, preset
from groundup.interop import config_from_hf, load_hf, save_hf
from groundup.interop.hf_keys import hf_to_groundup, llama_rules
from groundup.models import DecoderLM

V, D, L, H, FF, P, E = 96, 32, 2, 4, 40, 64, 4
TOL = dict(atol=1e-5, rtol=1e-4)

transformers.logging.set_verbosity_error()





def ids(length: int = 24) -> torch.Tensor:
    return torch.randint(0, V, (2, length), generator=torch.Generator().manual_seed(1))


def mixtral_hf(k: int, **extra) -> transformers.MixtralForCausalLM:
    fields = dict(
        vocab_size=V, hidden_size=D, intermediate_size=FF, num_hidden_layers=L, num_attention_heads=H,
        num_key_value_heads=2, max_position_embeddings=P, num_local_experts=E, num_experts_per_tok=k,
        rms_norm_eps=1e-5,
    )
    cfg = transformers.MixtralConfig(**{**fields, **extra})
    torch.manual_seed(0)
    return randomize_(transformers.MixtralForCausalLM(cfg))


def hf_load(path: Path) -> transformers.MixtralForCausalLM:
    """from_pretrained, asserting every tensor came from the file (none newly initialised)."""
    model, info = transformers.AutoModelForCausalLM.from_pretrained(path, output_loading_info=True,
                                                                    dtype=torch.float32)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


@pytest.mark.parametrize("k", [1, 2])
def test_mixtral_import(tmp_path, k):
    hf = mixtral_hf(k, tie_word_embeddings=k == 1)
    hf.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:  # the per-expert layout of real checkpoints
        assert "model.layers.1.block_sparse_moe.experts.3.w2.weight" in set(f.keys())
    ours, _ = load_hf(tmp_path, with_tokenizer=False)
    cfg = ours.config
    assert (cfg.n_expert, cfg.n_expert_per_token, cfg.router_norm_topk) == (E, k, True)
    assert cfg.expert_capacity_factor is None  # Mixtral never drops tokens
    with torch.no_grad():
        assert_close(ours(ids()), hf(ids()).logits, **TOL)


def test_mixtral_import_fused_expert_layout(tmp_path):
    """transformers 5 holds the experts as 3-D gate_up_proj / down_proj tensors; a file in that layout loads too."""
    hf = mixtral_hf(2)
    state = hf.state_dict()
    assert "model.layers.0.mlp.experts.gate_up_proj" in state
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    hf.config.save_pretrained(tmp_path)
    ours, _ = load_hf(tmp_path, with_tokenizer=False)
    with torch.no_grad():
        assert_close(ours(ids()), hf(ids()).logits, **TOL)


def groundup_mixtral(k: int, **overrides) -> DecoderLM:
    """A groundup MoE decoder from groundup's own preset (not from an HF config)."""
    torch.manual_seed(0)
    cfg = preset("mixtral-tiny", vocab_size=V, d_model=D, n_layer=L, n_head=H, n_kv_head=2, d_ff=FF, block_size=P,
                 n_expert=E, n_expert_per_token=k, tie_embeddings=False, **overrides)
    return randomize_(DecoderLM(cfg))


@pytest.mark.parametrize("k", [1, 2])
def test_mixtral_export_and_back(tmp_path, k):
    ours = groundup_mixtral(k, router_aux_loss_coef=0.02)
    save_hf(ours, None, tmp_path / "mixtral")
    hf_cfg = json.loads((tmp_path / "mixtral" / "config.json").read_text())
    assert hf_cfg["architectures"] == ["MixtralForCausalLM"] and hf_cfg["num_experts_per_tok"] == k
    hf = hf_load(tmp_path / "mixtral")
    assert isinstance(hf, transformers.MixtralForCausalLM)
    with torch.no_grad():
        assert_close(hf(ids()).logits, ours(ids()), **TOL)
    again, _ = load_hf(tmp_path / "mixtral", with_tokenizer=False)
    assert again.config.router_aux_loss_coef == pytest.approx(0.02)  # training setting survives the round trip
    with torch.no_grad():
        assert_close(again(ids()), ours(ids()))


def test_load_balancing_loss_matches_transformers():
    """One layer: HF's f_i sums to k over experts (ours to 1), so its loss is k times groundup's."""
    hf = mixtral_hf(2, num_hidden_layers=1, output_router_logits=True)
    hf.train()
    out = hf(ids())
    expected = load_balancing_loss_func(out.router_logits, E, 2)
    cfg = config_from_hf(hf.config.to_dict())
    ours = DecoderLM(cfg)
    ours.load_state_dict(hf_to_groundup(llama_rules(cfg, "model.", fused_experts=True), hf.state_dict()))
    ours(ids())
    assert_close(2 * ours.blocks[0].mlp.last_losses["load_balancing"], expected, **TOL)


def test_hf_aux_coefficient_translation():
    base = mixtral_hf(2).config.to_dict()
    assert config_from_hf({**base, "output_router_logits": False}).router_aux_loss_coef == 0.0  # HF adds none
    on = config_from_hf({**base, "output_router_logits": True, "router_aux_loss_coef": 0.001})
    assert on.router_aux_loss_coef == pytest.approx(0.002) and on.router_z_loss_coef == 0.0


@pytest.mark.parametrize("bad, field", [
    (dict(expert_capacity_factor=1.25), "expert_capacity_factor"),
    (dict(router_norm_topk=False), "router_norm_topk"),
    (dict(mlp="geglu"), "mlp"),
])
def test_export_refuses_what_mixtral_cannot_compute(tmp_path, bad, field):
    with pytest.raises(ConfigError, match=rf"{field}="):
        save_hf(groundup_mixtral(2, **bad), None, tmp_path / "out")
    assert not (tmp_path / "out").exists()
