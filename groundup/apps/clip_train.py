"""Training a CLIP with the one training loop: `groundup pretrain` with a CLIP preset.

    data.images (emoji | fashion-mnist | emoji+fashion-mnist) minus data.held_out classes
        ─> ImageTextData (captions: Unicode names / templates; a Fashion class is one contrastive group)
        ─> CLIP(ClipConfig from model.preset + overrides) ─> train(..., "clip") ─> ckpt/
        ─> zero-shot on Fashion-MNIST's test split: the held-out classes (names only ever seen as words) and the seen
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..config import ConfigError
from ..data.image_text import (
    CAPTION_SOURCES,
    CAPTION_TEMPLATES,
    FASHION_CLASSES,
    ImageTextData,
    caption_pairs,
    fashion_mnist,
)
from ..jobs.train import PretrainJob
from ..models.clip import CLIP, CLIP_PRESETS, clip_preset, zero_shot_classifier
from ..tokenizer_clip import ClipTokenizer
from ..train import TrainResult, train
from ..vision.preprocess import preprocess, spec_at

RESULT_FILE = "test_metrics.json"


def is_clip(job: PretrainJob) -> bool:
    return job.model.get("preset") in CLIP_PRESETS


def _held_out(names: list[str]) -> list[int]:
    unknown = [n for n in names if n not in FASHION_CLASSES]
    if unknown:
        raise ConfigError(f"--data.held_out names {unknown}, not Fashion-MNIST classes; use some of "
                          f"{list(FASHION_CLASSES)}")
    if len(names) == 1:
        raise ConfigError("--data.held_out names one class; zero-shot on held-out classes chooses among at least two")
    return [FASHION_CLASSES.index(n) for n in names]


def pretrain_clip(job: PretrainJob) -> TrainResult:
    """Train a CLIP from scratch on image-caption pairs; prints and writes its zero-shot accuracy."""
    from ..pretrain import check_job

    sources = job.data.images.split("+") if job.data.images else []
    if not sources or set(sources) - set(CAPTION_SOURCES):
        raise ConfigError(f"--data.images={job.data.images!r}: a CLIP trains on image-caption pairs from "
                          f"{' | '.join(CAPTION_SOURCES)} or both joined by '+' (emoji+fashion-mnist)")
    overrides = dict(job.model)
    cfg = clip_preset(overrides.pop("preset"), **overrides)
    held = _held_out(job.data.held_out)
    check_job(job)
    vision = cfg.vision
    spec = spec_at(vision.preprocess, vision.image_size)
    pairs, groups = caption_pairs(sources, held, seed=job.train.seed, size=vision.image_size,
                                  gray=spec.channels == 1)
    tokenizer = ClipTokenizer(context_length=cfg.text.block_size)
    data = ImageTextData(pairs, tokenizer, spec, job.data.val_fraction, job.train.seed, groups=groups)
    cfg.extra["held_out"] = job.data.held_out
    torch.manual_seed(job.train.seed)  # the initial weights are part of the run
    model = CLIP(cfg)
    result = train(model, "clip", data, job.train)
    if result.metrics_csv is not None and "fashion-mnist" in sources:  # rank 0
        scores = fashion_zero_shot(model, tokenizer, held, spec)
        out = Path(job.train.out_dir) / RESULT_FILE
        out.write_text(json.dumps({**scores, "step": result.step}) + "\n")
        print("\n" + result.summary("nats/pair"), flush=True)
        for name, acc in scores.items():
            print(f"zero-shot {name}: {acc:.2%}", flush=True)
        print(f"({out})", flush=True)
    return result


@torch.no_grad()
def fashion_zero_shot(model: CLIP, tokenizer: ClipTokenizer, held: list[int], spec) -> dict[str, float]:
    """Zero-shot accuracy on Fashion-MNIST's test images by the class names alone (prompt-ensembled templates):
    seen-class images among the seen names, held-out images among the held-out names and among all ten."""
    images, labels = fashion_mnist(split="test")
    pixels = preprocess(images[..., None], spec)
    model.eval()
    emb = torch.cat([model.encode_image(pixels[i:i + 1000]) for i in range(0, len(pixels), 1000)])
    sims = (emb @ zero_shot_classifier(model, tokenizer, list(FASHION_CLASSES), CAPTION_TEMPLATES).t()).numpy()
    seen = [c for c in range(len(FASHION_CLASSES)) if c not in held]

    def accuracy(classes: list[int], among: list[int]) -> float:
        rows = np.isin(labels, classes)
        cols = np.array(among)
        return float((cols[sims[rows][:, cols].argmax(1)] == labels[rows]).mean())

    scores = {f"seen classes among {len(seen)} names": accuracy(seen, seen)}
    if held:
        scores[f"held-out classes among their {len(held)} names"] = accuracy(held, held)
        scores["held-out classes among all 10 names"] = accuracy(held, list(range(len(FASHION_CLASSES))))
    return scores
