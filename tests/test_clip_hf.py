"""CLIP parity with Hugging Face CLIPModel: import, then export and reload, on a tiny random model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from hf_helpers import randomize_
from torch.testing import assert_close

from groundup.config import ConfigError
from groundup.interop import load_hf, save_hf
from groundup.models.clip import CLIP, CLIP_TEXT, CLIP_VISION, ClipConfig

pytestmark = pytest.mark.filterwarnings("ignore")
transformers.logging.set_verbosity_error()
BOS, EOS = 98, 99


def hf_clip(eos: int) -> transformers.CLIPModel:
    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=100, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, eos_token_id=eos, bos_token_id=BOS,
                         pad_token_id=0),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=24)
    return randomize_(transformers.CLIPModel(cfg))  # logit_scale random too


def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """3 images; 3 captions [bos, words.., eos, pad..] of different lengths, one with a second eos in its padding."""
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(3, 3, 32, 32, generator=g)
    ids = torch.randint(1, BOS, (3, 10), generator=g)
    ids[:, 0] = BOS
    lengths = torch.tensor([6, 10, 8])
    mask = (torch.arange(10)[None] < lengths[:, None]).long()
    ids = ids * mask
    ids[torch.arange(3), lengths - 1] = EOS
    ids[2, 9] = EOS  # HF and groundup read the first eos
    return pixels, ids, mask


def same_outputs(hf: transformers.CLIPModel, model: CLIP) -> None:
    pixels, ids, mask = inputs()
    with torch.no_grad():
        out = hf(input_ids=ids, pixel_values=pixels, attention_mask=mask)
        logits_per_image, logits_per_text = model(pixels, ids, mask)
        assert_close(logits_per_image, out.logits_per_image, atol=1e-5, rtol=1e-5)
        assert_close(logits_per_text, out.logits_per_text, atol=1e-5, rtol=1e-5)
        assert_close(model.encode_image(pixels), out.image_embeds, atol=1e-5, rtol=1e-5)
        assert_close(model.encode_text(ids, mask), out.text_embeds, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("eos", [EOS, 2], ids=["eos-id", "legacy-argmax"])
def test_import_then_export_match_transformers(tmp_path: Path, eos: int):
    hf = hf_clip(eos)
    hf.save_pretrained(tmp_path / "hf")
    model, tokenizer = load_hf(tmp_path / "hf")
    assert isinstance(model, CLIP) and tokenizer is None and not model.training
    assert model.config.eot_id == (None if eos == 2 else EOS)
    same_outputs(hf, model)
    save_hf(model, None, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["text_config"]["eos_token_id"] == eos
    reloaded = transformers.CLIPModel.from_pretrained(tmp_path / "out").eval()
    same_outputs(reloaded, model)
    for name, p in hf.state_dict().items():  # every tensor written back, none left at its random init
        assert torch.equal(reloaded.state_dict()[name], p), name


def test_export_refuses_what_clipmodel_cannot_hold(tmp_path: Path):
    vision = dict(CLIP_VISION, image_size=8, patch_size=4, n_layer=1, n_head=2, d_model=16)
    text = dict(CLIP_TEXT, arch="encoder", vocab_size=12, block_size=6, n_layer=1, n_head=2, d_model=16)
    bert_text = CLIP(ClipConfig.from_dict({"vision": vision, "text": text, "embed_dim": 8, "text_pool": "mean"}))
    with pytest.raises(ConfigError, match=r"CLIPModel cannot hold this CLIP: text_pool='mean' \(CLIPModel: 'eot'\)"):
        save_hf(bert_text, None, tmp_path / "out")
    assert not (tmp_path / "out").exists()
