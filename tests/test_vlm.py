"""Vision-language models (models/flamingo.py): Flamingo's resampler and gated cross-attention, the LLaVA projector.

Invariants from the Flamingo paper and open_flamingo's media masking: closed gates leave the frozen LM exactly;
text without images is the base model's; a token sees only its most recent image; cached decoding equals
recomputation; the resampler's output size is fixed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from groundup.config import VisionConfig
from groundup.generate import GenerationConfig, generate
from groundup.models import build_model
from groundup.models.flamingo import VisionLM, VisionLMConfig
from groundup.models.vit import ViT
from groundup.nn.perceiver import PerceiverResampler
from groundup.nn.xattn import media_index

V = 100
IMG = V  # the image token's id


def tiny_lm(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("llama-tiny", vocab_size=V, n_layer=4, d_model=64, n_head=4, n_kv_head=2, d_ff=128).eval()


def tiny_vit():
    torch.manual_seed(1)
    return ViT(VisionConfig(image_size=28, patch_size=7, d_model=48, n_head=4, n_layer=2)).eval()


def vlm(kind: str, open_gates: bool = True, seed: int = 0) -> VisionLM:
    model = VisionLM(tiny_lm(seed), tiny_vit(), VisionLMConfig(kind=kind, vision_dim=48, cross_every=2, n_latents=8,
                                                               resampler_heads=4, pool=2)).eval()
    if open_gates:  # trained gates are open; random connector weights stand in for trained ones
        torch.manual_seed(2)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("_gate"):
                    p.fill_(0.7)
                elif p.requires_grad and p.dim() >= 2:
                    p.normal_(0, 0.2)
    return model


def features(model: VisionLM, n: int, seed: int = 3) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return model.encode_images([rng.integers(0, 256, (28, 28, 3), dtype=np.uint8) for _ in range(n)])


def text_with_images(model: VisionLM, parts: list) -> torch.Tensor:
    """parts: ints (text tokens) and "img" (an image's tokens) -> (1, T)."""
    ids = []
    for p in parts:
        ids += [IMG] * model.tokens_per_image if p == "img" else [p]
    return torch.tensor([ids])


@pytest.mark.parametrize("kind", ["flamingo", "llava"])
def test_only_the_connector_trains(kind):
    model = vlm(kind, open_gates=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("new_embed", "resampler.", "projector.")) or ".xattn." in n
                             for n in trainable)
    assert not any(p.requires_grad for p in model.vision.parameters())


def test_closed_gates_give_the_frozen_lm_exactly():
    model = vlm("flamingo", open_gates=False)
    base = tiny_lm()
    ids = text_with_images(model, [5, "img", 6, 7, "img", 8, 9])
    media = features(model, 2)[None]
    with torch.no_grad():
        got = model(ids, media=media)
        want = base(inputs_embeds=model.embed_tokens(ids))  # the same token embeddings, no visual path
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["flamingo", "llava"])
def test_text_without_images_is_the_base_model(kind):
    model, base = vlm(kind), tiny_lm()
    ids = torch.tensor([[3, 14, 15, 92, 65, 35]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids), base(ids), rtol=0, atol=0)
        # the media of an enclosing generation do not reach a text-only row
        with model.images(features(model, 1)[None], torch.tensor([0])):
            torch.testing.assert_close(model(ids), base(ids), rtol=0, atol=0)


def test_media_index_counts_the_most_recent_image():
    marks = torch.tensor([[0, 1, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0]])
    assert media_index(marks.bool(), torch.tensor([2, 1])).tolist() == [[0, 1, 1, 1, 2, 2], [1, 1, 1, 1, 1, 1]]


def test_a_token_sees_only_its_most_recent_image():
    model = vlm("flamingo")
    ids = text_with_images(model, [5, 6, "img", 7, 8, "img", 9, 10])
    second = int((ids[0] == IMG).nonzero()[1])
    a, b = features(model, 2, seed=3), features(model, 2, seed=4)
    with torch.no_grad():
        base = model(ids, media=a[None])
        later_changed = model(ids, media=torch.stack([a[0], b[1]])[None])  # only the second image differs
    # no token reads an image after it
    torch.testing.assert_close(later_changed[0, :second], base[0, :second], rtol=0, atol=0)
    assert not torch.allclose(later_changed[0, second:], base[0, second:])
    # text before the first image is the base model's (up to the kernels' sums over a longer sequence)
    torch.testing.assert_close(base[0, :2], tiny_lm()(ids[:, :2])[0])
    # a token after the second image does not attend to the first: the cross-attention layer's output there is
    # the same whatever the first image (the logits do change, through the self-attention to earlier tokens)
    xattn = model.lm.blocks[0].xattn
    x = torch.randn(1, ids.shape[1], 64)
    index = media_index(ids == IMG, torch.tensor([2]))
    with torch.no_grad():
        ya = xattn(x, model.visual(a[None]).reshape(1, -1, 48), index, 8)
        yb = xattn(x, model.visual(torch.stack([b[0], a[1]])[None]).reshape(1, -1, 48), index, 8)
    torch.testing.assert_close(ya[0, second:], yb[0, second:], rtol=0, atol=0)
    assert not torch.allclose(ya[0, 2:second], yb[0, 2:second])


@pytest.mark.parametrize("kind", ["flamingo", "llava"])
def test_cached_generation_equals_recomputation(kind):
    model = vlm(kind)
    prompts = [text_with_images(model, [5, "img", 6, 7])[0].tolist(),
               text_with_images(model, [8, "img", 9, "img", 10, 11, 12])[0].tolist()]
    feats = features(model, 3)
    media = torch.zeros(2, 2, *feats.shape[1:])
    media[0, 0], media[1, 0], media[1, 1] = feats[0], feats[1], feats[2]
    counts = torch.tensor([1, 2])
    cfg = GenerationConfig(max_new_tokens=6, temperature=0.0)
    with model.images(media, counts):
        got = generate(model, prompts, cfg)
    for row, prompt in enumerate(prompts):  # greedy by hand: the whole sequence re-run for every token
        seq = list(prompt)
        for _ in range(6):
            with torch.no_grad():
                logits = model(torch.tensor([seq]), media=media[row: row + 1, : counts[row]])
            seq.append(int(logits[0, -1].argmax()))
        assert got[row] == seq[len(prompt):]


def test_the_resampler_output_size_is_fixed():
    torch.manual_seed(0)
    r = PerceiverResampler(32, depth=2, n_latents=5, n_head=4, max_frames=3)
    for shape in ((2, 1, 7, 32), (2, 3, 50, 32), (1, 2, 3, 4, 32)):
        assert r(torch.randn(shape)).shape == (shape[0], shape[1], 5, 32)
    with pytest.raises(ValueError, match="frames"):
        r(torch.randn(1, 1, 4, 2, 32))


def test_more_markers_than_images_is_an_error():
    model = vlm("flamingo")
    ids = text_with_images(model, [5, "img", 6, "img"])
    with pytest.raises(ValueError, match="row 0 marks 2 images .* but 1 were given"):
        model(ids, media=features(model, 1)[None])
