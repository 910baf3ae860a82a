"""A vision-language task from the local image-caption assets: emoji and Fashion-MNIST questions in LLaVA JSON.

    emoji "red apple"   ─> "<image>\\nWhat is in this image?" -> "A red apple."
                            "<image>\\nWhat colour is it?"     -> "Red."   (when the name holds a colour word)
    Fashion-MNIST coat  ─> "<image>\\nWhat is in this image?" -> "A coat."

Train and test never share an image: the emoji are split by a seeded permutation, Fashion-MNIST's test records
come from its own test split. Images are written as PNG beside the JSON (paths relative to it), so the files are
ordinary LLaVA data for any trainer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import PIL.Image

from groundup.data.image_text import FASHION_CLASSES, emoji_pairs, fashion_mnist

WHAT = "What is in this image?"
COLOUR = "What colour is it?"
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "brown", "black", "white", "pink")


def _a(noun: str) -> str:
    return ("An " if noun[0] in "aeiou" else "A ") + noun + "."


def _record(image: str, question: str, reply: str) -> dict:
    return {"image": image, "conversations": [{"from": "human", "value": f"<image>\n{question}"},
                                              {"from": "gpt", "value": reply}]}


def emoji_records(caption: str, image: str) -> list[dict]:
    out = [_record(image, WHAT, _a(caption))]
    colour = next((w for w in caption.split() if w in COLOURS), None)
    if colour is not None:
        out.append(_record(image, COLOUR, colour.capitalize() + "."))
    return out


def write_vlm_task(out_dir: str | os.PathLike, seed: int = 0, test_fraction: float = 0.2,
                   fashion_train_per_class: int = 100, fashion_test_per_class: int = 20) -> dict[str, int]:
    """Write out_dir/{train,test}.json and out_dir/images/; returns the number of records per split."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction}: give a fraction between 0 and 1, e.g. 0.2")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    splits: dict[str, list[dict]] = {"train": [], "test": []}
    pairs = emoji_pairs()
    n_test = int(len(pairs) * test_fraction)
    for rank, i in enumerate(rng.permutation(len(pairs)).tolist()):
        image, caption = pairs[i]
        name = f"images/emoji_{i:04d}.png"
        image.save(out / name)
        splits["test" if rank < n_test else "train"] += emoji_records(caption, name)
    for split, per_class in (("train", fashion_train_per_class), ("test", fashion_test_per_class)):
        images, labels = fashion_mnist(split=split)
        for c, cls in enumerate(FASHION_CLASSES):
            for i in rng.permutation(np.flatnonzero(labels == c))[:per_class].tolist():
                name = f"images/fashion_{split}_{i:05d}.png"
                PIL.Image.fromarray(images[i]).save(out / name)
                splits[split].append(_record(name, WHAT, _a(cls)))
    for split, records in splits.items():
        order = rng.permutation(len(records)).tolist()
        (out / f"{split}.json").write_text(json.dumps([records[i] for i in order], indent=1))
    return {split: len(records) for split, records in splits.items()}
