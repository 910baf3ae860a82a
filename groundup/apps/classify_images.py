"""`groundup classify` on images: a vision encoder's pooled features + scikit-learn, or a fine-tuned ViT.

    data.images (fashion-mnist | digits | folder of class folders)
        ─> logreg / forest   frozen ViT / DINOv2 pooled features ─> LogisticRegression / RandomForest
        ─> finetune          the ViT's weights + a new head, trained by the one loop (image_classification)
    a saved classifier (a .joblib file, or a ViT checkpoint with a head: `pretrain` writes one) labels
    --predict images (a file or a folder) into <out>/predictions.tsv

Training images: the source's train split (capped at --limit, a seeded random subset); accuracy: its test split
(capped at --limit too), never seen in training.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..classify import ClassifyResult, _sklearn, accuracy
from ..data.images import ImageClassData, LabelledImages, image_source
from ..jobs.train import ClassifyJob
from ..loading import load_pretrained
from ..models.vit import ViT
from ..nn.packed_linear import pack_for_inference
from ..train import TrainConfig, save_checkpoint, train
from ..vision.preprocess import ImageSpec, image_files, load_image, preprocess, spec_at

IMAGE_FEATURE_FORMAT = "groundup-image-feature-classifier"
FINETUNE_LR = 1e-4  # used when train.lr is TrainConfig's default


def is_image_data(data: str) -> bool:
    return data in ("fashion-mnist", "digits") or Path(data).is_dir()


def is_image_classifier(path: str) -> bool:
    """A saved image classifier: a ViT checkpoint folder, or a .joblib that classify wrote for images."""
    p = Path(path)
    if not path or not p.exists():
        return False
    if p.is_dir():
        config = p / "config.json"
        return config.is_file() and json.loads(config.read_text()).get("family") == "vision"
    import joblib

    saved = joblib.load(p)
    return isinstance(saved, dict) and saved.get("format") == IMAGE_FEATURE_FORMAT


def require_vit(model: nn.Module, name: str, command: str) -> ViT:
    if not isinstance(model, ViT):
        raise ValueError(f"{command} on images needs a vision model (a ViT: a `pretrain` checkpoint of a vision "
                         f"preset, a Hugging Face ViT / DINOv2 folder or dinov2-vits14); {name!r} is a "
                         f"{type(model).__name__}")
    return model


def input_spec(model: ViT, image_size: int | None) -> ImageSpec:
    """The model's own preprocessing at image_size (None: the size it was trained at)."""
    return spec_at(model.config.preprocess, image_size or model.config.image_size)


@torch.inference_mode()
def image_features(model: ViT, pixels: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """(N, d) pooled features of the backbone (the head, if any, left out), in fp32."""
    model.eval()
    out = [model.pool(model.features(pixels[i:i + batch_size])).float() for i in range(0, len(pixels), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, model.config.d_model)


@dataclasses.dataclass
class ImageFeatureClassifier:
    """A frozen vision encoder's pooled features -> a fitted scikit-learn estimator."""

    estimator: Any
    labels: list[str]
    encoder: str  # what load_pretrained loads to rebuild the encoder
    image_size: int  # the side images are prepared at
    model: ViT | None = dataclasses.field(default=None, repr=False)

    def predict_pixels(self, pixels: torch.Tensor) -> list[str]:
        x = image_features(self.model, pixels).numpy()
        return [self.labels[int(i)] for i in self.estimator.predict(x)]

    @property
    def spec(self) -> ImageSpec:
        return input_spec(self.model, self.image_size)

    def save(self, path: str | Path) -> Path:
        """One joblib (pickle) file: estimator, label names, encoder name, image size. Load only files you trust."""
        import joblib

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        joblib.dump({"format": IMAGE_FEATURE_FORMAT, "estimator": self.estimator, "labels": self.labels,
                     "encoder": self.encoder, "image_size": self.image_size}, path)
        return path


@dataclasses.dataclass
class ViTClassifier:
    """A ViT with a classification head and its class names (config.json extra.classes)."""

    model: ViT

    @property
    def labels(self) -> list[str]:
        n = self.model.config.n_class
        return list(self.model.config.extra.get("classes") or [str(i) for i in range(n)])

    @property
    def spec(self) -> ImageSpec:
        return input_spec(self.model, None)

    @torch.inference_mode()
    def predict_pixels(self, pixels: torch.Tensor, batch_size: int = 256) -> list[str]:
        self.model.eval()
        ids = [self.model(pixels[i:i + batch_size]).argmax(-1) for i in range(0, len(pixels), batch_size)]
        return [self.labels[int(i)] for i in torch.cat(ids)] if ids else []

    def save(self, path: str | Path) -> Path:
        return save_checkpoint(path, self.model)


def load_image_classifier(path: str | Path) -> ImageFeatureClassifier | ViTClassifier:
    """A .joblib image feature classifier (pickle: trusted files only) or a ViT checkpoint with a head."""
    path = Path(path)
    if path.is_dir():
        model = require_vit(load_pretrained(path)[0], str(path), "classify --classifier")
        pack_for_inference(model, many_rows=True)  # predicting only
        if model.head is None:
            raise ValueError(f"{path} is a ViT without a classification head (n_class=0); train one with "
                             "`groundup classify --method finetune` or `groundup pretrain` on labelled images")
        return ViTClassifier(model)
    import joblib

    saved = joblib.load(path)
    if not isinstance(saved, dict) or saved.get("format") != IMAGE_FEATURE_FORMAT:
        raise ValueError(f"{path} is not a groundup image classifier (a .joblib written by `classify` on images, or "
                         "a ViT checkpoint folder)")
    model = require_vit(load_pretrained(saved["encoder"])[0], saved["encoder"], "classify")
    pack_for_inference(model, many_rows=True)
    return ImageFeatureClassifier(saved["estimator"], saved["labels"], saved["encoder"], saved["image_size"], model)


def _capped(split: tuple[np.ndarray, np.ndarray], limit: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = split
    if limit is None or limit >= len(labels):
        return images, labels
    keep = np.sort(np.random.default_rng(seed).permutation(len(labels))[:limit])
    return images[keep], labels[keep]


def finetune_vit(backbone: ViT, data: ImageClassData, cfg: TrainConfig) -> ViT:
    """The backbone's weights + a new head of len(data.classes) outputs, all trained by the one loop."""
    vcfg = dataclasses.replace(backbone.config, n_class=len(data.classes), hf_pooler=False,
                               extra={**backbone.config.extra, "classes": data.classes})
    torch.manual_seed(cfg.seed)  # the new head starts the same for the same seed
    model = ViT(vcfg)
    state = {k: v for k, v in backbone.state_dict().items() if not k.startswith(("head.", "pooler."))}
    model.load_state_dict(state, strict=False)
    train(model, "image_classification", data, dataclasses.replace(cfg, eval_every=0))
    return model.eval()


def classify_images(job: ClassifyJob) -> ClassifyResult:
    """classify with image data: fit on the source's train split, score on its test split, label --predict."""
    if job.classifier:
        clf, acc, majority, n_train, n_test, saved = load_image_classifier(job.classifier), None, None, 0, 0, None
    else:
        if job.method not in ("logreg", "forest", "finetune"):
            raise ValueError(f"method={job.method!r} on images: use logreg, forest (frozen features) or finetune")
        model = require_vit(load_pretrained(job.model)[0], job.model, "classify")
        spec = input_spec(model, job.image_size)
        source = image_source(job.data, spec, seed=job.seed)
        source = LabelledImages(_capped(source.train, job.limit, job.seed), _capped(source.test, job.limit, job.seed),
                                source.classes)
        data = ImageClassData(source, spec, val_fraction=0.0, seed=job.seed)
        pixels, labels = data.splits["train"]
        test_pixels, test_labels = data.test_set()
        if job.method == "finetune":
            default = TrainConfig()
            lr = FINETUNE_LR if job.train.lr == default.lr else job.train.lr
            cfg = dataclasses.replace(job.train, out_dir=str(Path(job.out) / "train"), lr=lr,
                                      min_lr=lr / 10 if job.train.min_lr == default.min_lr else job.train.min_lr)
            if job.image_size and job.image_size != model.config.image_size:
                model = _resized(model, job.image_size)
            clf = ViTClassifier(finetune_vit(model, data, cfg))
        else:
            pack_for_inference(model, many_rows=True)  # frozen: features only
            estimator = _sklearn(job.method, job.seed)
            estimator.fit(image_features(model, pixels).numpy(), labels.numpy())
            clf = ImageFeatureClassifier(estimator, data.classes, job.model, spec.size, model)
        gold = [data.classes[int(i)] for i in test_labels]
        acc = accuracy(clf.predict_pixels(test_pixels), gold)
        top = Counter(int(i) for i in labels).most_common(1)[0][0]
        majority = float((test_labels == top).float().mean())
        n_train, n_test = len(labels), len(gold)
        print(f"{job.method} on {job.model}: test accuracy {acc:.3f} on {n_test} images of {job.data} (trained on "
              f"{n_train} at {spec.size}x{spec.size}; majority class {data.classes[top]!r}: {majority:.3f})")
        out = Path(job.out)
        saved = clf.save(out / ("model" if job.method == "finetune" else "classifier.joblib"))
        print(f"wrote {saved}")
    preds = _predict_files(clf, job.predict, Path(job.out)) if job.predict else []
    return ClassifyResult(acc, majority, n_train, n_test, saved, preds)


def _resized(model: ViT, size: int) -> ViT:
    """The same weights trained on at another input side: positions resized once, bicubically."""
    grid = size // model.config.patch_size
    resized = ViT(dataclasses.replace(model.config, image_size=size))
    state = model.state_dict()
    state["pos_embed"] = model.positions(grid, grid).detach()
    resized.load_state_dict(state)
    return resized


def _predict_files(clf: ImageFeatureClassifier | ViTClassifier, paths: str, out: Path) -> list[str]:
    files = image_files(paths)
    preds = clf.predict_pixels(preprocess([load_image(f, clf.spec.channels) for f in files], clf.spec))
    path = out / "predictions.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{p}\t{f}\n" for p, f in zip(preds, files, strict=True)), encoding="utf-8")
    print(f"wrote {len(preds)} predictions to {path}")
    return preds


__all__ = ["ImageFeatureClassifier", "ViTClassifier", "classify_images", "finetune_vit", "image_features",
           "is_image_classifier", "is_image_data", "load_image_classifier"]
