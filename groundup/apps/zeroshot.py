"""`groundup zeroshot`: classify images by labels the model was never trained on, from text prompts alone.

    labels ─> templates ("a photo of a {}.") ─> CLIP text tower ─> one mean embedding per label (renormalised)
    images ─> the model's preprocessing ─> CLIP image tower ─> cosine x exp(logit_scale) ─> softmax ─> top-k
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..jobs.use import ZeroShotJob
from ..loading import load_pretrained
from ..models.clip import CLIP, zero_shot_classifier, zero_shot_predict
from ..nn.packed_linear import pack_for_inference
from ..tokenizer_clip import ClipTokenizer
from ..vision.preprocess import image_files, load_image, preprocess, spec_at

DEFAULT_TEMPLATES = ("a photo of a {}.",)
CLIP_VOCAB_SIZE = 49408


def parse_labels(raw: str) -> list[str]:
    labels = [x.strip() for x in raw.split(",") if x.strip()]
    if len(labels) < 2:
        raise ValueError(f"--labels={raw!r} names {len(labels)} class(es); zero-shot classification chooses among at "
                         "least two: --labels 'cat,dog'")
    if len(set(labels)) != len(labels):
        raise ValueError(f"--labels={raw!r} repeats a label; name each class once")
    return labels


def read_templates(path: str) -> list[str]:
    if not path:
        return list(DEFAULT_TEMPLATES)
    lines = [x.strip() for x in Path(path).read_text(encoding="utf-8").splitlines() if x.strip()]
    bad = [x for x in lines if "{}" not in x]
    if not lines or bad:
        raise ValueError(f"--templates={path}: " + (f"{bad[0]!r} has no {{}} for the label" if bad else "no lines")
                         + "; write one template per line, e.g. 'a photo of a {}.'")
    return lines


def require_clip(model: torch.nn.Module, name: str) -> CLIP:
    if not isinstance(model, CLIP):
        raise ValueError(f"zeroshot needs a CLIP model (an image and a text tower); {name!r} is a "
                         f"{type(model).__name__}. Train one with `groundup pretrain --model.preset=clip-tiny "
                         "--data.images=emoji+fashion-mnist` or pass a Hugging Face CLIPModel folder")
    vocab = model.config.text.vocab_size
    if vocab != CLIP_VOCAB_SIZE:
        raise ValueError(f"{name!r}: its text tower reads a {vocab}-token vocabulary, but zeroshot writes the labels "
                         f"with CLIP's BPE ({CLIP_VOCAB_SIZE} tokens); use zero_shot_classifier with that model's own "
                         "tokenizer in Python")
    return model


@torch.inference_mode()
def zeroshot(job: ZeroShotJob) -> list[list[tuple[str, float]]]:
    """Top-k (label, probability) per image, printed; the top 1 also written to --out when given."""
    labels, templates = parse_labels(job.labels), read_templates(job.templates)
    if job.top_k < 1:
        raise ValueError(f"--top_k={job.top_k}: must be at least 1")
    if not job.images:
        raise ValueError("--images is missing: give an image file or a folder of images")
    files = image_files(job.images)
    if not job.model:
        raise ValueError("--model is missing: give a CLIP checkpoint or a Hugging Face CLIPModel folder")
    model = require_clip(load_pretrained(job.model)[0], job.model)
    pack_for_inference(model, many_rows=True)
    vision = model.config.vision
    spec = spec_at(vision.preprocess, vision.image_size)
    pixels = preprocess([load_image(f, spec.channels) for f in files], spec)
    tokenizer = ClipTokenizer(context_length=model.config.text.block_size)
    probs = zero_shot_predict(model, zero_shot_classifier(model, tokenizer, labels, templates), pixels)
    k = min(job.top_k, len(labels))
    top = probs.topk(k, dim=-1)
    results = [[(labels[int(i)], float(p)) for p, i in zip(ps, ids, strict=True)]
               for ps, ids in zip(top.values, top.indices, strict=True)]
    for f, row in zip(files, results, strict=True):
        print(f"{f}\t" + "  ".join(f"{label} {p:.1%}" for label, p in row))
    if job.out:
        Path(job.out).parent.mkdir(parents=True, exist_ok=True)
        Path(job.out).write_text("".join(f"{f}\t{row[0][0]}\t{row[0][1]:.6f}\n" for f, row in zip(files, results,
                                                                                              strict=True)))
        print(f"wrote {len(files)} rows to {job.out}")
    return results
