"""The Vision Transformer: patches, positions, pooling, LayerScale, Hugging Face ViT / Dinov2 parity both ways."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from torch.testing import assert_close

from groundup.config import ConfigError, VisionConfig, vision_preset
from groundup.interop import load_hf, save_hf
from groundup.models.vit import ViT

pytestmark = pytest.mark.filterwarnings("ignore")
transformers.logging.set_verbosity_error()
TINY = dict(image_size=28, patch_size=7, n_channels=3, n_layer=2, n_head=4, d_model=32)


def randomize_(model: torch.nn.Module) -> torch.nn.Module:
    """Every tensor non-trivial (LayerNorm and LayerScale near 1, the rest small noise): a wrong key is visible."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1 + 0.1 * noise if name.endswith(("norm.weight", "gamma", "lambda1")) else 0.1 * noise)
    return model.eval()


def pixels(size: int = 28, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_patches_positions_and_pooling():
    model = ViT(VisionConfig(**TINY)).eval()
    feats = model.features(pixels())
    assert feats.shape == (2, 1 + 4 * 4, 32)  # CLS + a 4x4 grid of 7-pixel patches
    assert_close(model(pixels()), feats[:, 0])  # pool="cls"
    mean = ViT(VisionConfig(**TINY, pool="mean"))
    mean.load_state_dict(model.state_dict())
    assert_close(mean.eval()(pixels()), feats[:, 1:].mean(dim=1))
    assert ViT(VisionConfig(**TINY, n_class=5))(pixels()).shape == (2, 5)
    assert model.positions(4, 4) is model.pos_embed
    bigger = model.positions(6, 5)
    assert bigger.shape == (1, 1 + 30, 32)
    assert_close(bigger[:, 0], model.pos_embed[:, 0])  # the CLS position is never resized
    assert model.features(pixels(42)).shape == (2, 1 + 36, 32)


def test_an_image_that_is_not_a_multiple_of_the_patch_size_is_refused():
    model = ViT(VisionConfig(**TINY))
    with pytest.raises(ValueError, match=r"30x30 is not a multiple of the patch size 7.*28x28"):
        model(pixels(30))
    with pytest.raises(ValueError, match=r"expects pixels \(B, 3, H, W\)"):
        model(torch.zeros(2, 1, 28, 28))
    with pytest.raises(ConfigError, match="image_size=30 is not a multiple of patch_size=7"):
        VisionConfig(**{**TINY, "image_size": 30})


def test_layer_scale_starts_at_its_value_and_scales_each_branch():
    cfg = VisionConfig(**TINY, layer_scale=1e-5)
    model = ViT(cfg).eval()
    assert torch.equal(model.blocks[0].attn_scale.gamma, torch.full((32,), 1e-5))
    x = torch.randn(2, 17, 32)
    assert_close(model.blocks[0](x), x, atol=1e-3, rtol=0)  # near-zero branches: the block is near identity
    assert ViT(VisionConfig(**TINY)).blocks[0].attn_scale is None


def hf_model(kind: str, size: int = 28):
    if kind == "vit":
        cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                                     image_size=size, patch_size=7, hidden_act="gelu")
        return randomize_(transformers.ViTModel(cfg))
    cfg = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=4,
                                    image_size=size, patch_size=7, layerscale_value=0.5)
    return randomize_(transformers.Dinov2Model(cfg))


@pytest.mark.parametrize("kind", ["vit", "dinov2"])
def test_hugging_face_backbones_load_with_the_same_outputs(kind, tmp_path):
    theirs = hf_model(kind)
    theirs.save_pretrained(tmp_path / "hf")
    ours, tok = load_hf(tmp_path / "hf")
    assert tok is None and isinstance(ours, ViT)
    x = pixels()
    with torch.no_grad():
        expected = theirs(pixel_values=x)
        assert_close(ours.features(x), expected.last_hidden_state, atol=1e-5, rtol=1e-4)
        if kind == "vit":  # the pooler came along, so an export can write it back
            assert_close(torch.tanh(ours.pooler(ours.features(x)[:, 0])), expected.pooler_output, atol=1e-5,
                         rtol=1e-4)
        else:  # another size: both resize the 4x4 position grid bicubically
            assert_close(ours.features(pixels(42)), theirs(pixel_values=pixels(42)).last_hidden_state, atol=1e-5,
                         rtol=1e-4)


@pytest.mark.parametrize("kind", ["vit", "dinov2"])
def test_a_groundup_vit_exports_to_the_hugging_face_class(kind, tmp_path):
    cfg = VisionConfig(**TINY, layer_scale=0.5 if kind == "dinov2" else None, hf_pooler=kind == "vit",
                       norm_eps=1e-6 if kind == "dinov2" else 1e-12)
    ours = randomize_(ViT(cfg))
    out = save_hf(ours, None, tmp_path / "out")
    assert json.loads((out / "config.json").read_text())["model_type"] == kind
    cls = transformers.Dinov2Model if kind == "dinov2" else transformers.ViTModel
    theirs, info = cls.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        assert_close(theirs.eval()(pixel_values=pixels()).last_hidden_state, ours.features(pixels()), atol=1e-5,
                     rtol=1e-4)
    with pytest.raises(ConfigError, match="classification head"):
        save_hf(ViT(VisionConfig(**TINY, n_class=3)), None, tmp_path / "head")


def test_a_tiny_vit_overfits_a_batch():
    torch.manual_seed(0)
    model = ViT(vision_preset("vit-tiny", n_layer=2, d_model=64))
    x = torch.randn(16, 1, 28, 28)
    y = torch.arange(16) % 10
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05 and (model.eval()(x).argmax(-1) == y).all()
