"""Preference data: JSONL pairs {"prompt", "chosen", "rejected"} -> token rows for reward models and DPO.

    prompt  p p p p                 tokenized alone, as at inference
    chosen  p p p p c c c <eos>     labels on c c c <eos> only (the response the policy would generate)
    rejected p p p p r r <eos>      the same prompt, the other response

A malformed line (not JSON, a missing or empty field, chosen equal to rejected) raises PreferenceFormatError naming
its line; a pair that does not fit the context is refused by line too (truncating one response would compare a
cut answer with a whole one).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from groundup.data.instruct import IGNORE_INDEX
from groundup.data.instruct_jsonl import jsonl_objects
from groundup.tokenizer import Tokenizer

FIELDS = ("prompt", "chosen", "rejected")


class PreferenceFormatError(ValueError):
    """A malformed preference record; the message names its line and the field."""


@dataclass(frozen=True)
class Preference:
    prompt: str
    chosen: str
    rejected: str
    line: int = 0
    margin: float = 0.0  # how much more the chosen is preferred (e.g. a rating gap); 0 = unknown


def parse_preference(record: object, line: int) -> Preference:
    where = f"line {line}"
    if not isinstance(record, dict):
        raise PreferenceFormatError(f"{where}: expected a JSON object with {list(FIELDS)}")
    for name in FIELDS:
        value = record.get(name)
        if not isinstance(value, str) or (name != "prompt" and not value.strip()):
            raise PreferenceFormatError(f"{where}: {name!r} must be a non-empty string"
                                        + (" (the prompt may be empty)" if name == "prompt" else ""))
    if record["chosen"] == record["rejected"]:
        raise PreferenceFormatError(f"{where}: 'chosen' equals 'rejected'; a pair needs two different responses")
    margin = record.get("margin", 0.0)
    if not isinstance(margin, (int, float)) or isinstance(margin, bool) or margin < 0:
        raise PreferenceFormatError(f"{where}: 'margin' must be a number >= 0 (how much more 'chosen' is preferred)")
    return Preference(record["prompt"], record["chosen"], record["rejected"], line, float(margin))


def load_preferences(path: str | os.PathLike) -> list[Preference]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no preference data at {path}: give a JSONL file of "
                                '{"prompt": ..., "chosen": ..., "rejected": ...} lines')
    return [parse_preference(record, n) for n, record in jsonl_objects(path)]


def load_prompts(path: str | os.PathLike) -> list[tuple[int, str]]:
    """(line, prompt) of a JSONL of {"prompt": ...} lines (the prompts RL samples responses to)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no prompts at {path}: give a JSONL file of {{\"prompt\": ...}} lines")
    out = []
    for n, record in jsonl_objects(path):
        prompt = record.get("prompt") if isinstance(record, dict) else None
        if not isinstance(prompt, str) or not prompt.strip():
            raise PreferenceFormatError(f"{path} line {n}: 'prompt' must be a non-empty string")
        out.append((n, prompt))
    if not out:
        raise PreferenceFormatError(f"{path} has no prompts")
    return out


def end_id(tokenizer: Tokenizer) -> int | None:
    """The token that ends a response: eos, or an encoder tokenizer's [SEP]."""
    return tokenizer.eos_id if tokenizer.eos_id is not None else tokenizer.sep_id


def response_row(tokenizer: Tokenizer, prompt: str, response: str) -> tuple[list[int], int]:
    """(prompt + response + end ids, prompt length): an empty prompt is the first of bos, [CLS], eos."""
    lead = next(i for i in (tokenizer.bos_id, tokenizer.cls_id, end_id(tokenizer)) if i is not None)
    ids = tokenizer.encode(prompt) if prompt else [lead]
    return ids + tokenizer.encode(response) + [end_id(tokenizer)], len(ids)


class PreferenceData:
    """Batches of pairs: chosen_ids / chosen_labels and rejected_ids / rejected_labels (right-padded, labels shifted
    and -100 outside the response), and margin. A seeded permutation puts val_fraction of the pairs in "val"."""

    def __init__(self, pairs: Sequence[Preference], tokenizer: Tokenizer, block_size: int, val_fraction: float = 0.0,
                 seed: int = 0) -> None:
        if not pairs:
            raise PreferenceFormatError("no preference pairs to train on")
        if end_id(tokenizer) is None:
            raise ValueError("PreferenceData: the tokenizer has no eos token to end the responses")
        self.pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else end_id(tokenizer)
        self.prompted = any(p.prompt for p in pairs)  # False: every pair compares two whole texts
        self.rows = []
        for p in pairs:
            sides = []
            for response in (p.chosen, p.rejected):
                ids, n_prompt = response_row(tokenizer, p.prompt, response)
                if len(ids) - 1 > block_size:
                    raise PreferenceFormatError(f"line {p.line}: prompt + response take {len(ids)} tokens; the context "
                                                f"holds {block_size + 1}: shorten the prompt or the responses")
                sides.append((ids, n_prompt))
            self.rows.append((sides, p.margin))
        order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed)).tolist()
        n_val = int(len(pairs) * val_fraction)
        self.split_rows = {"train": order[n_val:], "val": order[:n_val]}
        self.reference: torch.Tensor | None = None  # (n, 2) a frozen reference's log-probs (align.precompute_reference)

    def batch(self, which: Sequence[int], with_reference: bool = True) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for side, name in enumerate(("chosen", "rejected")):
            seqs = [self.rows[i][0][side] for i in which]
            width = max(len(ids) for ids, _ in seqs) - 1
            ids_t = torch.full((len(which), width), self.pad_id, dtype=torch.long)
            labels = torch.full((len(which), width), IGNORE_INDEX, dtype=torch.long)
            for b, (ids, n_prompt) in enumerate(seqs):
                t = torch.tensor(ids)
                ids_t[b, : len(ids) - 1] = t[:-1]
                labels[b, n_prompt - 1: len(ids) - 1] = t[n_prompt:]  # label t = token t + 1, response only
            out[f"{name}_ids"], out[f"{name}_labels"] = ids_t, labels
        out["margin"] = torch.tensor([self.rows[i][1] for i in which])
        if with_reference and self.reference is not None:
            out["ref_chosen"], out["ref_rejected"] = self.reference[list(which)].unbind(-1)
        return out

    def get_batch(self, split: str, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        rows = self.split_rows[split]
        if not rows:
            raise ValueError(f"PreferenceData has no {split!r} pairs; set val_fraction > 0 to evaluate")
        return self.batch([rows[i] for i in torch.randint(len(rows), (batch_size,), generator=generator).tolist()])
