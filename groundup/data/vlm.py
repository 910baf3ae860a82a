"""Vision-language training data: LLaVA's conversation JSON -> token rows with the loss on the answers, and the
frozen vision encoder's features of their images, computed once.

    [{"image": "cat.png" | ["a.png", "b.png"],
      "conversations": [{"from": "human", "value": "<image>\\nWhat is in this image?"},
                        {"from": "gpt", "value": "A cat."}, ...]}, ...]

Turns are rendered with the language model's chat template (human -> user, gpt -> assistant; labels on the
assistant turns, as instruction tuning does, data/instruct.py); each <image> in the text stands for the record's
next image and becomes the model's image token(s), <|endofchunk|> its chunk-end token. Image paths are relative
to the JSON file's folder. A record whose markers and images do not match, or whose image does not decode, is an
error naming the record, before anything trains.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from groundup.data.instruct import IGNORE_INDEX, chat_segments
from groundup.models.flamingo import CHUNK_TOKEN, IMAGE_TOKEN, VisionLM
from groundup.tokenizer import Tokenizer

ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}
MARKERS = re.compile(f"({re.escape(IMAGE_TOKEN)}|{re.escape(CHUNK_TOKEN)})")


class VLMFormatError(ValueError):
    """A vision-language record that cannot be used as given (the message names the record and the field)."""


@dataclass(frozen=True)
class VLMExample:
    images: tuple[Any, ...]  # paths, PIL images or arrays, in the order of the text's <image> markers
    messages: tuple[dict[str, str], ...]  # {"role", "content"}, markers in the content
    record: int = 0  # index in the source file, for error messages


def parse_llava(records: Sequence[dict[str, Any]], root: str | os.PathLike = ".") -> list[VLMExample]:
    """LLaVA records -> examples, image paths resolved against root."""
    out = []
    for i, rec in enumerate(records):
        where = f"record {i}"
        if not isinstance(rec, dict) or not isinstance(rec.get("conversations"), list) or not rec["conversations"]:
            raise VLMFormatError(f"{where}: needs a non-empty 'conversations' list of {{'from', 'value'}} turns")
        images = rec.get("image", [])
        images = [images] if isinstance(images, str) else images
        if not isinstance(images, list) or not all(isinstance(p, str) for p in images):
            raise VLMFormatError(f"{where}: 'image' must be a file name or a list of file names")
        messages = []
        for j, turn in enumerate(rec["conversations"]):
            if not isinstance(turn, dict) or turn.get("from") not in ROLES or not isinstance(turn.get("value"), str):
                raise VLMFormatError(f"{where}, conversations[{j}]: needs 'from' (one of {sorted(ROLES)}) and a "
                                     "string 'value'")
            role = ROLES[turn["from"]]
            if role == "assistant" and IMAGE_TOKEN in turn["value"]:
                raise VLMFormatError(f"{where}, conversations[{j}]: an answer cannot hold {IMAGE_TOKEN}; images "
                                     "go in the human turns")
            messages.append({"role": role, "content": turn["value"]})
        markers = sum(m["content"].count(IMAGE_TOKEN) for m in messages)
        if markers != len(images):
            raise VLMFormatError(f"{where}: {markers} {IMAGE_TOKEN} marker(s) in the text but {len(images)} image(s)"
                                 f"; write one {IMAGE_TOKEN} where each image stands")
        if not any(m["role"] == "assistant" for m in messages):
            raise VLMFormatError(f"{where}: no 'gpt' turn to learn from")
        out.append(VLMExample(tuple(str(Path(root) / p) for p in images), tuple(messages), i))
    return out


def load_llava_json(path: str | os.PathLike) -> list[VLMExample]:
    """A LLaVA conversation file (a JSON list, or JSON lines) -> examples."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no vision-language data at {path}: give a LLaVA JSON file "
                                "(`groundup data vlm --out_dir DIR` writes one)")
    text = path.read_text(encoding="utf-8")
    try:
        records = json.loads(text) if text.lstrip().startswith("[") else [json.loads(x) for x in text.splitlines()
                                                                          if x.strip()]
    except json.JSONDecodeError as e:
        raise VLMFormatError(f"{path}: not JSON ({e}); expected a list of LLaVA records") from e
    return parse_llava(records, path.parent)


def encode_example(ex: VLMExample, tokenizer: Tokenizer, model: VisionLM, template: str | None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(token ids, is-target mask) of one conversation: the chat template's rendering, markers as the model's
    tokens (an image as tokens_per_image image tokens)."""
    token = lambda i: (tokenizer.id_to_token(i) or "") if i is not None else ""
    if template:
        segments = chat_segments(template, ex.messages, token(tokenizer.bos_id), token(tokenizer.eos_id))
    else:  # no template: the turns one after another, each answer ended by eos
        segments = [(m["content"] + ("" if m["role"] == "assistant" else "\n"), m["role"] == "assistant")
                    for m in ex.messages]
    ids: list[int] = []
    train: list[bool] = []
    for text, is_answer in segments:
        new = encode_text(model, tokenizer, text)
        ids += new
        train += [is_answer] * len(new)
        if is_answer and not template and tokenizer.eos_id is not None:
            ids.append(tokenizer.eos_id)
            train.append(True)
    return np.array(ids, dtype=np.int64), np.array(train, dtype=bool)


def encode_text(model: VisionLM, tokenizer: Tokenizer, text: str) -> list[int]:
    """Text -> ids, each <image> marker as the model's image tokens and <|endofchunk|> as its chunk token."""
    ids: list[int] = []
    for piece in MARKERS.split(text):
        if piece == IMAGE_TOKEN:
            ids += [model.image_id] * model.tokens_per_image
        elif piece == CHUNK_TOKEN:
            ids.append(model.chunk_id)
        elif piece:
            ids += tokenizer.encode(piece)
    return ids


class VLMData:
    """Batches for the causal_lm objective with images: input_ids, labels (answers only, shifted) and media, the
    frozen encoder's features (B, M, 1 + N, d) of each row's images (rows with fewer images padded with zeros).
    A seeded permutation puts val_fraction of the examples in "val"."""

    def __init__(self, examples: Sequence[VLMExample], tokenizer: Tokenizer, model: VisionLM, block_size: int,
                 val_fraction: float = 0.0, seed: int = 0, template: str | None = None,
                 known: dict[Any, torch.Tensor] | None = None) -> None:
        """known: features already computed by the same encoder, by image path; filled with this data's."""
        if not examples:
            raise VLMFormatError("no vision-language examples to train on")
        self.pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else (tokenizer.eos_id or 0)
        template = template or tokenizer.chat_template
        rows = []
        for ex in examples:
            ids, train = encode_example(ex, tokenizer, model, template)
            if len(ids) - 1 > block_size:
                raise VLMFormatError(f"record {ex.record}: {len(ids)} tokens with its images do not fit the context "
                                     f"of {block_size}; shorten the conversation or use fewer images")
            rows.append((ids, train))
        self.features, self.image_rows = image_features(examples, model, known)
        order = np.random.default_rng(seed).permutation(len(examples))
        n_val = int(len(examples) * val_fraction)
        self.split_rows = {"train": order[n_val:].tolist(), "val": order[:n_val].tolist()}
        self.rows = rows
        self.max_images = max((len(r) for r in self.image_rows), default=0)

    def batch(self, which: Sequence[int]) -> dict[str, torch.Tensor]:
        """The rows `which` as one right-padded batch."""
        width = max(len(self.rows[i][0]) for i in which) - 1
        ids = torch.full((len(which), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(which), width), IGNORE_INDEX, dtype=torch.long)
        for b, i in enumerate(which):
            tok, train = self.rows[i]
            n = len(tok) - 1
            ids[b, :n] = torch.from_numpy(tok[:-1])
            labels[b, :n] = torch.from_numpy(np.where(train[1:], tok[1:], IGNORE_INDEX))
        if not self.max_images:  # text only: the base model's inputs
            return {"input_ids": ids, "labels": labels}
        media = self.features.new_zeros(len(which), self.max_images, *self.features.shape[1:])
        for b, i in enumerate(which):
            for m, row in enumerate(self.image_rows[i]):
                media[b, m] = self.features[row]
        return {"input_ids": ids, "labels": labels, "media": media}

    def get_batch(self, split: str, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        rows = self.split_rows[split]
        if not rows:
            raise ValueError(f"VLMData has no {split!r} examples; set val_fraction > 0 to evaluate")
        pick = torch.randint(len(rows), (batch_size,), generator=generator).tolist()
        return self.batch([rows[i] for i in pick])


def image_features(examples: Sequence[VLMExample], model: VisionLM, known: dict[Any, torch.Tensor] | None = None
                   ) -> tuple[torch.Tensor, list[list[int]]]:
    """The encoder's features of every distinct image (n, 1 + N, d), and each example's rows of them; images in
    `known` (path -> features) are not encoded again, and the new ones are added to it."""
    from groundup.vision.preprocess import ImageError

    index: dict[Any, int] = {}
    images: list[Any] = []
    rows = []
    for ex in examples:
        mine = []
        for img in ex.images:
            key = img if isinstance(img, str) else id(img)
            if key not in index:
                index[key] = len(images)
                images.append(img)
            mine.append(index[key])
        rows.append(mine)
    if not images:
        return torch.empty(0), rows
    known = {} if known is None else known
    todo = [img for img in images if not isinstance(img, str) or img not in known]
    try:
        new = model.encode_images(todo) if todo else None
    except (ImageError, OSError) as e:
        record = next((ex.record for ex in examples for p in ex.images if isinstance(p, str) and p in str(e)), "?")
        raise VLMFormatError(f"record {record}: an image cannot be read: {e}") from e
    fresh = iter(new if new is not None else ())
    features = torch.stack([known[img] if isinstance(img, str) and img in known else next(fresh) for img in images])
    known.update({img: f for img, f in zip(images, features, strict=True) if isinstance(img, str)})
    return features, rows
