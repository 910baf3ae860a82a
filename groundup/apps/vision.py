"""Training a Vision Transformer with the one training loop: `groundup pretrain` with a vision preset.

    data.images (fashion-mnist | digits | folder) ─> ImageClassData (preprocessed once, seeded val split)
        ─> ViT(VisionConfig from model.preset + overrides, n_class = the data's classes)
        ─> train(..., "image_classification") ─> ckpt/ (config.json names the classes) ─> test accuracy
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import VISION_PRESETS, ConfigError, VisionConfig, vision_preset
from ..data.images import ImageClassData, accuracy, image_source
from ..jobs.train import PretrainJob
from ..models.vit import ViT
from ..train import TrainResult, train
from ..vision.preprocess import spec_at

RESULT_FILE = "test_metrics.json"


def is_vision(job: PretrainJob) -> bool:
    return job.model.get("preset") in VISION_PRESETS


def vision_config(job: PretrainJob, n_class: int | None = None) -> VisionConfig:
    overrides = dict(job.model)
    name = overrides.pop("preset")
    given = overrides.get("n_class")
    if n_class is not None and given not in (None, n_class):
        raise ConfigError(f"--model.n_class={given} but data.images={job.data.images!r} has {n_class} classes; "
                          "drop --model.n_class (it follows the data)")
    if n_class is not None:
        overrides["n_class"] = n_class
    return vision_preset(name, **overrides)


def pretrain_vision(job: PretrainJob) -> TrainResult:
    """Train a ViT from scratch on labelled images; prints and writes its test accuracy."""
    from ..pretrain import check_job

    if not job.data.images:
        raise ConfigError(f"model.preset={job.model['preset']!r} is a vision model: set --data.images to "
                          "fashion-mnist, digits or a folder of class folders")
    shape = vision_config(job)
    check_job(job)
    spec = spec_at(shape.preprocess, shape.image_size)
    if spec.channels != shape.n_channels:
        raise ConfigError(f"--model.n_channels={shape.n_channels} but the {shape.preprocess!r} preprocessing gives "
                          f"{spec.channels}-channel images; set --model.preprocess or --model.n_channels to match")
    source = image_source(job.data.images, spec, seed=job.train.seed)
    data = ImageClassData(source, spec, job.data.val_fraction, job.train.seed, job.data.augment)
    cfg = vision_config(job, n_class=len(data.classes))
    cfg.extra["classes"] = data.classes  # so classify can print names
    torch.manual_seed(job.train.seed)  # the initial weights are part of the run
    model = ViT(cfg)
    result = train(model, "image_classification", data, job.train)
    if result.metrics_csv is not None:  # rank 0
        pixels, labels = data.test_set()
        acc = accuracy(model, pixels, labels)
        out = Path(job.train.out_dir) / RESULT_FILE
        out.write_text(json.dumps({"test_accuracy": acc, "test_images": len(labels), "step": result.step}) + "\n")
        print("\n" + result.summary("nats/image"), flush=True)
        print(f"test accuracy:   {acc:.2%} on {len(labels)} held-out images ({out})", flush=True)
    return result
