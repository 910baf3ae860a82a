"""CLIP: the contrastive loss, the temperature and its clamp, zero-shot classification, LiT locking, training."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from groundup.config import ConfigError
from groundup.models.clip import (
    CLIP,
    CLIP_TEXT,
    CLIP_VISION,
    ClipConfig,
    clip_preset,
    contrastive_loss,
    zero_shot_classifier,
    zero_shot_predict,
)
from groundup.train import TrainConfig, load_checkpoint, train
from groundup.train.objectives import OBJECTIVES

SOT, EOT, N_PAIRS = 10, 11, 8


VISION = dict(CLIP_VISION, image_size=8, patch_size=4, n_channels=1, n_layer=1, n_head=2, d_model=16)
TEXT = dict(CLIP_TEXT, vocab_size=12, block_size=6, n_layer=1, n_head=2, d_model=16)


def tiny(**overrides) -> ClipConfig:
    return ClipConfig.from_dict({"vision": VISION, "text": TEXT, "embed_dim": 16, "eot_id": EOT, **overrides})


class Pairs:
    """8 fixed random images, caption k = [sot, k + 1, eot, pad...], drawn in a random order each batch."""

    def __init__(self) -> None:
        self.pixels = torch.randn(N_PAIRS, 1, 8, 8, generator=torch.Generator().manual_seed(0))
        self.ids = torch.zeros(N_PAIRS, 6, dtype=torch.long)
        self.ids[:, 0], self.ids[:, 1], self.ids[:, 2] = SOT, torch.arange(1, N_PAIRS + 1), EOT
        self.mask = (self.ids != 0).long()

    def get_batch(self, split: str, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        order = torch.randperm(N_PAIRS, generator=generator)[:batch_size]
        return {"pixels": self.pixels[order], "input_ids": self.ids[order], "attention_mask": self.mask[order]}


def run_cfg(tmp_path: Path, **overrides) -> TrainConfig:
    base = dict(out_dir=str(tmp_path / "run"), max_steps=2, batch_size=N_PAIRS, lr=3e-3, min_lr=3e-4, warmup_steps=0,
                eval_every=0, ckpt_every=0, dtype="fp32", progress=False, log_every=1, device="cpu")
    return TrainConfig(**{**base, **overrides})


def test_contrastive_loss_matches_a_hand_computed_3x3_case():
    L = [[2.0, 0.0, 1.0], [0.0, 3.0, 0.0], [1.0, 1.0, 1.0]]
    rows = [-math.log(math.exp(L[i][i]) / sum(math.exp(x) for x in L[i])) for i in range(3)]  # image -> text
    cols = [-math.log(math.exp(L[j][j]) / sum(math.exp(L[i][j]) for i in range(3))) for j in range(3)]  # text -> image
    expected = (sum(rows) / 3 + sum(cols) / 3) / 2
    assert contrastive_loss(torch.tensor(L)).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match=r"square \(B, B\)"):
        contrastive_loss(torch.zeros(2, 3))


def test_temperature_starts_at_0_07_and_the_clamp_holds_after_a_huge_step():
    model = CLIP(tiny())
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07), rel=1e-6)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    for sign, bound in ((-1.0, math.log(100)), (1.0, 0.0)):  # push far above, then far below
        (sign * 1e6 * model.logit_scale).backward()
        opt.step()
        opt.zero_grad()
        assert abs(model.logit_scale.item() - bound) > 1  # the step really left [0, ln 100]
        model.clamp_logit_scale()
        assert model.logit_scale.item() == pytest.approx(bound, abs=1e-6)


def test_the_training_loop_clamps_the_temperature_after_every_step(tmp_path: Path):
    model = CLIP(tiny(init_logit_scale=4.6))  # just under ln 100 = 4.605; AdamW steps of lr=0.1 cross it

    def push_up(model, batch):
        loss = -model.logit_scale * 1e3 + 0 * contrastive_loss(model(batch["pixels"], batch["input_ids"])[0])
        return loss, {"loss": loss.detach()}

    train(model, push_up, Pairs(), run_cfg(tmp_path, lr=0.1, min_lr=0.1, max_steps=3))
    assert model.logit_scale.item() == pytest.approx(math.log(100), abs=1e-6)


def stub_zero_shot(n_class: int = 3) -> tuple[CLIP, Callable]:
    """A CLIP whose pooled features are known: text "<template> <class k>" -> e_k ± 0.5 e_last (the sign per
    template, so only the templates' mean is e_k), image filled with k -> e_k; the projections are identities."""
    d = n_class + 1
    cfg = tiny(embed_dim=d, vision=dict(VISION, d_model=d, n_head=1), text=dict(TEXT, d_model=d, n_head=1))
    model = CLIP(cfg)
    with torch.no_grad():
        model.visual_projection.weight.copy_(torch.eye(d))
        model.text_projection.weight.copy_(torch.eye(d))
    eye = torch.eye(d)
    model.text_features = lambda ids, mask=None: eye[ids[:, 0]] + 0.5 * (1 - 2 * ids[:, 1:2].float()) * eye[-1]
    model.image_features = lambda pixels: eye[pixels[:, 0, 0, 0].long()]
    names = [f"class{k}" for k in range(n_class)]

    def tokenizer(texts: list[str]) -> torch.Tensor:  # "a classK" -> [K, 0], "the classK" -> [K, 1]
        return torch.tensor([[names.index(t.split()[1]), t.split()[0] == "the"] for t in texts])

    return model, tokenizer


def test_zero_shot_recovers_the_known_classes():
    model, tokenizer = stub_zero_shot()
    clf = zero_shot_classifier(model, tokenizer, ["class0", "class1", "class2"], ["a {}", "the {}"])
    assert_close(clf, torch.eye(4)[:3])  # the ±0.5 e_last of the two templates cancel in the mean
    labels = torch.tensor([2, 0, 1, 2])
    probs = zero_shot_predict(model, clf, labels.float()[:, None, None, None].expand(4, 1, 8, 8))
    assert probs.argmax(dim=1).tolist() == labels.tolist()
    s = 1 / 0.07  # exp(logit_scale): cosine 1 with the right class, 0 with the two others
    assert_close(probs.max(dim=1).values, torch.full((4,), math.exp(s) / (math.exp(s) + 2)))


def test_zero_shot_bad_inputs_are_refused():
    model, tokenizer = stub_zero_shot()
    with pytest.raises(ValueError, match="classnames holds 1 name"):
        zero_shot_classifier(model, tokenizer, ["class0"], ["a {}"])
    with pytest.raises(ValueError, match=r"template 'a photo' has no '\{\}'"):
        zero_shot_classifier(model, tokenizer, ["class0", "class1"], ["a {}", "a photo"])
    with pytest.raises(ValueError, match=r"classifier \(2, 3\) must be \(n_class, embed_dim=4\)"):
        zero_shot_predict(model, torch.zeros(2, 3), torch.zeros(1, 1, 8, 8))


def test_text_is_read_at_end_of_text_or_averaged_over_the_mask():
    ids = Pairs().ids[:2]
    model = CLIP(tiny()).eval()
    after = ids.clone()
    after[:, 3:] = 5  # tokens after <end_of_text>: a causal tower read there never sees them
    assert_close(model.encode_text(after), model.encode_text(ids))
    with pytest.raises(ValueError, match=r"rows \[1\] hold no end-of-text id 11"):
        model.encode_text(torch.tensor([[SOT, 1, EOT], [SOT, 1, 2]]))
    bert = CLIP(tiny(text_pool="mean", text=dict(TEXT, arch="encoder"))).eval()
    mask = (ids != 0).long()
    assert_close(bert.encode_text(after, mask), bert.encode_text(ids, mask))  # padding is masked out of the mean
    assert bert.encode_text(after, mask).norm(dim=-1).allclose(torch.ones(2))


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"text_pool='mean' needs text.arch='encoder'"):
        tiny(text_pool="mean")
    with pytest.raises(ConfigError, match=r"ClipConfig.lock='both'"):
        tiny(lock="both")
    with pytest.raises(ConfigError, match=r"ClipConfig.eot_id=49407 is not an id"):
        tiny(eot_id=49407)
    cfg = clip_preset("clip-tiny-64", vision={"n_layer": 1})
    assert (cfg.vision.n_layer, cfg.vision.image_size, cfg.vision.n_channels) == (1, 64, 3)
    assert ClipConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("lock", ["image", "text"])
def test_lit_keeps_the_locked_tower_fixed_and_in_eval_mode(tmp_path: Path, lock: str):
    model = CLIP(tiny(lock=lock))
    locked, free = (model.visual, model.text) if lock == "image" else (model.text, model.visual)
    model.train()
    assert not locked.training and free.training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = train(model, "clip", Pairs(), run_cfg(tmp_path))
    tower = "visual." if lock == "image" else "text."
    for name, value in model.state_dict().items():
        same = torch.equal(value, before[name])
        if name.startswith(tower):
            assert same, f"{name} of the locked tower changed"
        elif name.startswith(("visual.", "text.")) and name.endswith("weight") and "norm" not in name:
            assert not same, f"{name} of the trained tower did not change"
    # LiT locks the tower, not its projection (see CLIP.__init__)
    assert not torch.equal(model.visual_projection.weight, before["visual_projection.weight"])
    assert not any(p.requires_grad for p in locked.parameters())
    # the locked tower is saved with the rest (it may hold pretrained weights nothing else can rebuild)
    rebuilt = load_checkpoint(result.checkpoint).model
    assert all(torch.equal(v, rebuilt.state_dict()[k]) for k, v in model.state_dict().items())
    assert not any(p.requires_grad for p in rebuilt.locked_tower().parameters())


def test_tiny_clip_learns_8_pairs_and_its_checkpoint_rebuilds_it(tmp_path: Path):
    assert "clip" in OBJECTIVES
    torch.manual_seed(0)
    model = CLIP(tiny(embed_dim=32, vision=dict(VISION, d_model=32), text=dict(TEXT, d_model=32)))
    data = Pairs()
    run = run_cfg(tmp_path, max_steps=40, warmup_steps=5, lr=1e-2, min_lr=1e-3, weight_decay=0.0, log_every=20)
    result = train(model, "clip", data, run)
    assert result.losses[0] > 0.7 * math.log(N_PAIRS)
    assert result.losses[-1] < 0.1 * math.log(N_PAIRS)
    logits, _ = model.eval()(data.pixels, data.ids, data.mask)
    assert logits.argmax(dim=1).tolist() == list(range(N_PAIRS))  # every image picks its own caption
    rebuilt = load_checkpoint(result.checkpoint).model.eval()  # config.json "family": "clip" -> CLIP
    assert isinstance(rebuilt, CLIP)
    assert_close(rebuilt(data.pixels, data.ids, data.mask)[0], logits)
