"""Vision training through the one loop and the CLI: `pretrain` a ViT on images, `classify` images with it or with
frozen features, the batch source's augmentations, and the bad inputs a user may give."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cli_helpers import groundup
from PIL import Image

from groundup.config import vision_preset
from groundup.data.images import ImageClassData, LabelledImages, accuracy, digits_images, image_source
from groundup.loading import load_pretrained
from groundup.models.vit import ViT
from groundup.train import TrainConfig, train
from groundup.vision.preprocess import spec_at

DIGITS_VIT = ["--model.preset=vit-tiny", "--model.image_size=8", "--model.patch_size=2", "--model.n_layer=1",
              "--model.d_model=32", "--model.n_head=2", "--data.images=digits"]


def _quadrants(n: int, seed: int = 0) -> LabelledImages:
    """8x8 images, one bright quadrant each: the quadrant is the label (a task any working classifier learns)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    images = rng.integers(0, 40, (n, 8, 8)).astype(np.uint8)
    for img, y in zip(images, labels, strict=True):
        r, c = divmod(int(y), 2)
        img[4 * r:4 * r + 4, 4 * c:4 * c + 4] = 230
    return LabelledImages((images, labels), (images[: n // 4], labels[: n // 4]), ["tl", "tr", "bl", "br"])


def test_a_tiny_vit_learns_through_the_training_loop(tmp_path):
    spec = spec_at("gray28", 8)
    data = ImageClassData(_quadrants(256), spec, val_fraction=0.25, seed=0)
    torch.manual_seed(0)
    model = ViT(vision_preset("vit-tiny", image_size=8, patch_size=4, n_layer=1, d_model=32, n_head=2, n_class=4))
    cfg = TrainConfig(out_dir=str(tmp_path), max_steps=150, batch_size=32, lr=3e-3, warmup_steps=5, eval_every=150,
                      eval_batches=2, progress=False)
    result = train(model, "image_classification", data, cfg)
    assert result.val_loss < 0.2 < np.log(4)  # from chance (ln 4 = 1.39) to near certainty
    assert accuracy(model, *data.splits["val"]) > 0.95


def test_shift_and_flip_augment_only_the_training_rows():
    spec = spec_at("gray28", 8)
    data = ImageClassData(_quadrants(64), spec, val_fraction=0.5, seed=0, augment=["flip", "shift"])
    plain = ImageClassData(_quadrants(64), spec, val_fraction=0.5, seed=0)
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert torch.equal(data.get_batch("val", 16, gen())["pixels"], plain.get_batch("val", 16, gen())["pixels"])
    aug, orig = data.get_batch("train", 16, gen()), plain.get_batch("train", 16, gen())
    assert torch.equal(aug["labels"], orig["labels"])  # the same rows, drawn from the same generator
    assert not torch.equal(aug["pixels"], orig["pixels"])
    # every augmented image is its original flipped or not, moved by at most 1 pixel (8 // 8) with black fill
    black = -1.0  # gray28: (0 - 0.5) / 0.5
    for a, o in zip(aug["pixels"], orig["pixels"], strict=True):
        found = False
        for img in (o, o.flip(-1)):
            padded = torch.nn.functional.pad(img, (1, 1, 1, 1), value=black)
            found |= any(torch.equal(a, padded[:, dy:dy + 8, dx:dx + 8]) for dy in range(3) for dx in range(3))
        assert found
    with pytest.raises(ValueError, match="data.augment has unknown \\['rotate'\\]"):
        ImageClassData(_quadrants(8), spec, augment=["rotate"])


def test_digits_split_is_disjoint_and_seeded():
    a, b = digits_images(seed=0), digits_images(seed=0)
    assert np.array_equal(a.train[1], b.train[1]) and len(a.test[1]) == int(1797 * 0.2)
    train_rows = {img.tobytes() for img in a.train[0]}
    assert sum(img.tobytes() in train_rows for img in a.test[0]) < 5  # sklearn's digits hold a few duplicates


def test_a_folder_of_class_folders_is_a_labelled_image_source(tmp_path):
    for name, value in (("dark", 20), ("light", 230)):
        (tmp_path / name).mkdir()
        for i in range(5):
            Image.fromarray(np.full((10, 12), value + i, np.uint8)).save(tmp_path / name / f"{i}.png")
    src = image_source(str(tmp_path), spec_at("gray28", 8))
    assert src.classes == ["dark", "light"]
    assert src.train[0].shape[1:] == (8, 8) and len(src.train[1]) + len(src.test[1]) == 10
    assert sorted(set(src.test[1].tolist())) == [0, 1]  # each class keeps a share of the test split
    with pytest.raises(ValueError, match="at least two class sub-folders"):
        image_source(str(tmp_path / "dark"), spec_at("gray28", 8))
    with pytest.raises(ValueError, match="data.images='nowhere'"):
        image_source("nowhere", spec_at("gray28", 8))


def test_pretrain_a_vit_on_digits_then_classify_images_with_it(tmp_path):
    run = tmp_path / "vit"
    r = groundup("pretrain", *DIGITS_VIT, "--train.max_steps=120", "--train.batch_size=64", "--train.lr=3e-3",
                 "--train.eval_every=120", f"--train.out_dir={run}", "--train.progress=false")
    assert r.returncode == 0, r.stderr
    acc = json.loads((run / "test_metrics.json").read_text())["test_accuracy"]
    assert acc > 0.5 and f"test accuracy:   {acc:.2%}" in r.stdout  # chance is 10%
    model, tok = load_pretrained(run / "ckpt")
    assert isinstance(model, ViT) and tok is None and model.config.extra["classes"][3] == "3"

    from sklearn.datasets import load_digits  # real digit images the model did or did not see, as PNG files

    digits = load_digits()
    pics = tmp_path / "pics"
    pics.mkdir()
    for i in range(20):
        Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)).save(pics / f"{i:02d}.png")
    r = groundup("classify", f"--classifier={run / 'ckpt'}", f"--predict={pics}", f"--out={tmp_path / 'pred'}")
    assert r.returncode == 0, r.stderr
    rows = [line.split("\t") for line in (tmp_path / "pred" / "predictions.tsv").read_text().splitlines()]
    assert [f.endswith(f"{i:02d}.png") for i, (_, f) in enumerate(rows)] == [True] * 20
    hits = sum(label == str(digits.target[i]) for i, (label, _) in enumerate(rows))
    assert hits >= 10  # most of them right, at the accuracy the test split measured


def test_frozen_dinov2_features_and_logistic_regression_classify_digits(tmp_path):
    r = groundup("classify", "--model=dinov2-vits14", "--data=digits", "--image_size=28", "--limit=300",
                 f"--out={tmp_path}")
    assert r.returncode == 0, r.stderr
    acc = float(r.stdout.split("test accuracy ")[1].split()[0])
    assert acc > 0.8  # features fine-tuned for saliency still separate digits far above chance (0.1)
    assert (tmp_path / "classifier.joblib").is_file()


def test_bad_vision_inputs_get_clear_errors_and_write_nothing(tmp_path):
    out = tmp_path / "run"
    r = groundup("pretrain", "--model.preset=vit-tiny", f"--train.out_dir={out}")
    assert r.returncode != 0 and "--data.images" in r.stderr and not out.exists()
    r = groundup("pretrain", *DIGITS_VIT, "--model.n_class=3", f"--train.out_dir={out}")
    assert r.returncode != 0 and "--model.n_class=3" in r.stderr and "10 classes" in r.stderr
    r = groundup("pretrain", *DIGITS_VIT, "--model.n_channels=3", f"--train.out_dir={out}")
    assert r.returncode != 0 and "--model.n_channels=3" in r.stderr
    r = groundup("pretrain", *DIGITS_VIT, "--model.image_size=9", f"--train.out_dir={out}")
    assert r.returncode != 0 and "not a multiple of patch_size" in r.stderr
    assert not out.exists()
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    r = groundup("classify", "--classifier=nowhere", f"--predict={bad}", f"--out={out}")
    assert r.returncode != 0
    r = groundup("classify", "--model=all-minilm-l6-v2", "--data=digits", f"--out={out}")
    assert r.returncode != 0 and "needs a vision model" in r.stderr and not out.exists()
