"""LiT's cached locked tower: precomputed pooled features give the same logits, loss and gradients as running the
frozen tower, ImageTextData carries them in its batches, and class groups reach the batches as positives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from groundup.data.image_text import ImageTextData
from groundup.models.clip import (
    CLIP,
    CLIP_TEXT,
    CLIP_VISION,
    ClipConfig,
    cache_locked_tower,
    contrastive_loss,
    locked_tower_features,
)
from groundup.vision.preprocess import ImageSpec

SOT, EOT, T = 10, 11, 6
SPEC = ImageSpec(size=8, resize=None, mean=(0.5,), std=(0.5,), interpolation="bilinear", channels=1)
VISION = dict(CLIP_VISION, image_size=8, patch_size=4, n_channels=1, n_layer=1, n_head=2, d_model=16)
TEXT = dict(CLIP_TEXT, vocab_size=12, block_size=T, n_layer=1, n_head=2, d_model=16)


class WordTokenizer:
    """Caption "w3 w1" -> [sot, 3, 1, eot, 0, 0]: the two calls ImageTextData makes of a tokenizer."""

    eot_id = EOT

    def __call__(self, texts: list[str]) -> torch.Tensor:
        ids = torch.zeros(len(texts), T, dtype=torch.long)
        for i, text in enumerate(texts):
            row = [SOT] + [int(w[1:]) for w in text.split()] + [EOT]
            ids[i, : len(row)] = torch.tensor(row)
        return ids


def model(lock: str, text_pool: str = "eot") -> CLIP:
    torch.manual_seed(0)
    text = dict(TEXT, arch="encoder") if text_pool == "mean" else TEXT
    return CLIP(ClipConfig.from_dict({"vision": VISION, "text": text, "embed_dim": 16, "eot_id": EOT,
                                      "lock": lock, "text_pool": text_pool}))


def data(**kw) -> ImageTextData:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (8, 8), dtype=np.uint8) for _ in range(12)]
    captions = [f"w{1 + i % 4} w{1 + (i * 3) % 7}" for i in range(12)]  # 12 rows, some captions repeated
    return ImageTextData(list(zip(images, captions, strict=True)), WordTokenizer(), SPEC, val_fraction=0.0, **kw)


@pytest.mark.parametrize(("lock", "text_pool"), [("image", "eot"), ("text", "eot"), ("text", "mean")])
def test_cached_features_give_the_logits_loss_and_gradients_of_the_locked_tower(lock: str, text_pool: str):
    clip, source = model(lock, text_pool), data()
    full = source.get_batch("train", 8, torch.Generator().manual_seed(1))
    key = cache_locked_tower(clip, source)
    assert key == f"{lock}_features"
    cached = source.get_batch("train", 8, torch.Generator().manual_seed(1))  # the same rows
    assert "pixels" not in cached if lock == "image" else "input_ids" not in cached  # the raw input is not carried
    clip.train()
    ref, _ = clip(full["pixels"], full["input_ids"], full["attention_mask"])
    ref_loss = contrastive_loss(ref, full["caption_ids"])
    ref_loss.backward()
    ref_grads = {n: p.grad.clone() for n, p in clip.named_parameters() if p.requires_grad}
    clip.zero_grad()
    got, _ = clip(cached.get("pixels"), cached.get("input_ids"), cached.get("attention_mask"), **{key: cached[key]})
    assert_close(got, ref, rtol=1e-5, atol=1e-5)
    contrastive_loss(got, cached["caption_ids"]).backward()
    for name, grad in ref_grads.items():  # the trainable tower and both projections learn the same
        assert_close(clip.get_parameter(name).grad, grad, rtol=1e-4, atol=1e-6, msg=name)


def test_locked_features_are_the_towers_pooled_output_in_chunks():
    clip, source = model("image"), data()
    feats = locked_tower_features(clip, source.pixels, batch_size=5)  # 12 rows in chunks 5, 5, 2
    assert feats.shape == (12, 16)
    assert_close(feats, clip.eval().image_features(source.pixels).detach())


def test_an_unlocked_tower_cannot_be_cached_and_a_missing_input_is_named():
    with pytest.raises(ValueError, match="locks no tower"):
        cache_locked_tower(model(""), data())
    with pytest.raises(ValueError, match="pixels=None"):
        model("image")(None, torch.full((2, T), EOT))


def test_groups_reach_batches_as_caption_ids_and_features_are_checked():
    labels = [i % 3 for i in range(12)]
    source = data(groups=labels)
    batch = source.get_batch("train", 12, torch.Generator().manual_seed(0))
    rows = [int(r) for r in torch.randperm(12, generator=torch.Generator().manual_seed(0))]
    assert batch["caption_ids"].tolist() == [labels[r] for r in rows]
    with pytest.raises(ValueError, match="one int per pair"):
        data(groups=[0, 1])
    with pytest.raises(ValueError, match=r"must be \(N=12"):
        source.set_features("image_features", torch.zeros(3, 4))
    with pytest.raises(ValueError, match="use one of"):
        source.set_features("pixels", torch.zeros(12, 4))
