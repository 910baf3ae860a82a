"""Perplexity of an encoder-decoder model's targets given their sources, scored as it was trained: the
decoder reads <bos> + target and predicts target + <eos> (teacher forcing), so every target token and the
<eos> that ends it is predicted exactly once."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100


def _pad(rows: list[list[int]], value: int, device: torch.device) -> torch.Tensor:
    out = torch.full((len(rows), max(map(len, rows))), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out.to(device)  # (B, max length)


def _check_lengths(pairs: list[tuple[list[int], list[int]]], block: int) -> None:
    for n, (src, tgt) in enumerate(pairs, 1):
        if not src:
            raise ValueError(f"pair {n} has an empty source; give every pair some source text")
        if len(src) > block or len(tgt) + 1 > block:
            raise ValueError(f"pair {n}: source of {len(src)} tokens or target of {len(tgt)} (+ <eos>) does not fit "
                             f"the model's context (block_size={block}); shorten it")


@torch.inference_mode()
def target_perplexity(model: nn.Module, pairs: list[tuple[list[int], list[int]]], bos_id: int, eos_id: int,
                      batch_size: int = 32) -> dict[str, float]:
    """Mean negative log-likelihood per target token (nats, <eos> included), its exp, the token and pair counts."""
    if not pairs:
        raise ValueError("target_perplexity needs at least one (source, target) pair")
    _check_lengths(pairs, model.config.block_size)
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for first in range(0, len(pairs), batch_size):
        chunk = pairs[first : first + batch_size]
        src = _pad([s for s, _ in chunk], model.config.pad_id, device)  # (B, S)
        src_mask = _pad([[1] * len(s) for s, _ in chunk], 0, device).bool()  # (B, S)
        tgt_in = _pad([[bos_id, *t] for _, t in chunk], model.config.pad_id, device)  # (B, T)
        labels = _pad([[*t, eos_id] for _, t in chunk], IGNORE_INDEX, device)  # (B, T)
        logits = model(src, tgt_in, src_mask=src_mask).float()  # (B, T, V)
        total += F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX,
                                 reduction="sum").item()
        count += int((labels != IGNORE_INDEX).sum())
    nll = total / count
    return {"nll": nll, "ppl": math.exp(nll), "tokens": count, "pairs": len(pairs)}


def pairs_perplexity(model: nn.Module, tokenizer, pairs: list[tuple[str, str]]) -> dict[str, float]:
    """target_perplexity of text pairs, with the tokenizer's <bos> and <eos> around each target."""
    bos, eos = tokenizer.bos_id, tokenizer.eos_id
    if bos is None or eos is None:
        raise ValueError("scoring an encoder-decoder model needs the tokenizer's <bos> and <eos> tokens (a "
                         "checkpoint from groundup pretrain has them); this tokenizer lacks one")
    sources = tokenizer.encode_batch([s for s, _ in pairs])
    targets = tokenizer.encode_batch([t for _, t in pairs])
    return target_perplexity(model, list(zip(sources, targets, strict=True)), bos, eos)
