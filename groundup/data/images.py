"""Labelled images for classification: Fashion-MNIST, scikit-learn's digits, or a folder of class folders.

    source ─> uint8 images (N, H, W[, C]) + labels ─> preprocess once (groundup.vision: size, mean, std)
        ─> train / val (carved from train, seeded) / test tensors ─> get_batch(split, rows, generator)
           train rows optionally augmented (random shifts, horizontal flips) from the same generator

All randomness of a batch comes from the generator the training loop passes, so a resumed run draws the
same batches (train/loop.py). The test split is never used for training or model selection.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..vision.preprocess import IMAGE_EXTENSIONS, ImageError, ImageSpec, load_image, preprocess

AUGMENTS = ("shift", "flip")
DIGITS_TEST_FRACTION = 0.2  # sklearn's digits ship as one set: a seeded fifth is the test split


@dataclass
class LabelledImages:
    train: tuple[np.ndarray, np.ndarray]  # uint8 images (N, H, W) or (N, H, W, 3), int64 labels (N,)
    test: tuple[np.ndarray, np.ndarray]
    classes: list[str]


def fashion_mnist_images() -> LabelledImages:
    from .image_text import FASHION_CLASSES, fashion_mnist

    return LabelledImages(fashion_mnist(split="train"), fashion_mnist(split="test"), list(FASHION_CLASSES))


def digits_images(seed: int = 0) -> LabelledImages:
    """scikit-learn's 1,797 8x8 digits (grey levels 0..16, scaled to 0..255); a seeded fifth is held out as test."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)  # (1797, 8, 8)
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(labels))
    n_test = int(len(labels) * DIGITS_TEST_FRACTION)
    test, train = order[:n_test], order[n_test:]
    return LabelledImages((images[train], labels[train]), (images[test], labels[test]), [str(d) for d in range(10)])


def folder_images(root: str | Path, spec: ImageSpec, test_fraction: float = 0.2, seed: int = 0) -> LabelledImages:
    """root/<class>/<image files>: each sub-folder is a class (sorted by name); a seeded test_fraction of each
    class is held out as test. Images are resized with `spec` as they are read."""
    root = Path(root)
    found = root.iterdir() if root.is_dir() else []
    classes = sorted(p.name for p in found if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise ImageError(f"{root}: an image folder needs at least two class sub-folders (root/<class>/<image>); "
                         f"found {classes or 'none'}")
    rng = np.random.default_rng(seed)
    parts = {"train": ([], []), "test": ([], [])}
    for label, name in enumerate(classes):
        files = sorted(f for f in (root / name).iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise ImageError(f"{root / name}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
        n_test = max(1, int(len(files) * test_fraction)) if len(files) > 1 else 0
        for i, f in enumerate(rng.permutation(len(files))):
            img = np.asarray(load_image(files[f], spec.channels).resize((spec.size, spec.size)))
            split = "test" if i < n_test else "train"
            parts[split][0].append(img)
            parts[split][1].append(label)
    as_arrays = {k: (np.stack(x), np.array(y, dtype=np.int64)) for k, (x, y) in parts.items()}
    return LabelledImages(as_arrays["train"], as_arrays["test"], classes)


def image_source(name: str, spec: ImageSpec, seed: int = 0) -> LabelledImages:
    """'fashion-mnist' (Debian dataset-fashion-mnist), 'digits' (scikit-learn) or a folder of class folders."""
    if name == "fashion-mnist":
        return fashion_mnist_images()
    if name == "digits":
        return digits_images(seed)
    if Path(name).is_dir():
        return folder_images(name, spec, seed=seed)
    raise ValueError(f"data.images={name!r}: use 'fashion-mnist', 'digits' or a folder holding one sub-folder of "
                     "images per class")


class ImageClassData:
    """The batch source of image classification (train / val / test), images preprocessed once."""

    def __init__(self, source: LabelledImages, spec: ImageSpec, val_fraction: float = 0.1, seed: int = 0,
                 augment: tuple[str, ...] | list[str] = ()) -> None:
        unknown = sorted(set(augment) - set(AUGMENTS))
        if unknown:
            raise ValueError(f"data.augment has unknown {unknown}; use any of {list(AUGMENTS)}")
        self.classes, self.spec, self.augment = list(source.classes), spec, tuple(augment)
        images, labels = source.train
        order = np.random.default_rng(seed).permutation(len(labels))
        n_val = int(len(labels) * val_fraction)
        self.splits = {
            "train": self._tensors(images[order[n_val:]], labels[order[n_val:]]),
            "val": self._tensors(images[order[:n_val]], labels[order[:n_val]]),
            "test": self._tensors(*source.test),
        }

    def _tensors(self, images: np.ndarray, labels: np.ndarray) -> tuple[Tensor, Tensor]:
        if len(labels) == 0:
            return torch.zeros(0, self.spec.channels, self.spec.size, self.spec.size), torch.zeros(0, dtype=torch.long)
        batch = images[..., None] if images.ndim == 3 else images  # (N, H, W) grey -> (N, H, W, 1): one batch
        return preprocess(batch, self.spec), torch.from_numpy(labels).long()

    def __len__(self) -> int:
        return len(self.splits["train"][1])

    def get_batch(self, split: str, batch_size: int, generator: torch.Generator) -> dict[str, Tensor]:
        pixels, labels = self.splits[split]
        if len(labels) == 0:
            raise ValueError(f"the {split!r} split is empty; raise data.val_fraction or add images")
        rows = torch.randint(len(labels), (batch_size,), generator=generator)
        x = pixels[rows]
        if split == "train" and self.augment:
            x = self._augmented(x, generator)
        return {"pixels": x, "labels": labels[rows]}

    def _augmented(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Random shifts of up to 1/8 of the side (zero-padded, as a padded random crop) and left-right flips."""
        B, _, H, W = x.shape
        if "flip" in self.augment:
            flip = torch.rand(B, generator=generator) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        if "shift" in self.augment:
            pad = max(1, H // 8)
            padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), value=float(self._background()))
            dy, dx = (torch.randint(2 * pad + 1, (B,), generator=generator) for _ in range(2))
            ys = (dy[:, None] + torch.arange(H))[:, None, :, None]  # (B, 1, H, 1)
            xs = (dx[:, None] + torch.arange(W))[:, None, None, :]  # (B, 1, 1, W)
            x = padded[torch.arange(B)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None], ys, xs]
        return x

    def _background(self) -> float:
        """A black pixel after normalisation (the datasets here are light objects on black)."""
        return -self.spec.mean[0] / self.spec.std[0]

    def test_set(self) -> tuple[Tensor, Tensor]:
        return self.splits["test"]


@torch.no_grad()
def accuracy(model: torch.nn.Module, pixels: Tensor, labels: Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy of a classifier (model(pixels) -> logits) over a whole split, in eval mode."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(labels), batch_size):
        logits = model(pixels[i:i + batch_size].to(device))
        correct += int((logits.argmax(-1).cpu() == labels[i:i + batch_size]).sum())
    model.train(was)
    return correct / max(1, len(labels))
