"""Perplexity of a causal LM on a token stream, scored with a sliding window so that every token
(after the first) is predicted exactly once, with up to block_size - stride tokens of extra context."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


@torch.inference_mode()
def perplexity(model: nn.Module, ids: list[int] | torch.Tensor, stride: int | None = None) -> dict[str, float]:
    """Mean negative log-likelihood per predicted token (nats), its exp, and the token count."""
    model.eval()
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()
    block = model.config.block_size
    stride = stride or block
    if not 0 < stride <= block:
        raise ValueError(f"stride={stride} must be between 1 and the model's block_size={block}")
    if ids.numel() < 2:
        raise ValueError(f"perplexity needs at least 2 tokens; got {ids.numel()}")
    device = next(model.parameters()).device
    total, count, scored_to = 0.0, 0, 1  # position 0 has no prediction
    for begin in range(0, ids.numel() - 1, stride):
        end = min(begin + block + 1, ids.numel())
        window = ids[begin:end].to(device)
        logits = model(window[None, :-1])[0].float()  # (T, V)
        targets = window[1:].clone()
        targets[: max(scored_to - begin - 1, 0)] = -100  # already scored by an earlier window
        total += F.cross_entropy(logits, targets, ignore_index=-100, reduction="sum").item()
        count += int((targets != -100).sum())
        scored_to = end
        if end == ids.numel():
            break
    nll = total / count
    return {"nll": nll, "ppl": math.exp(nll), "tokens": count}


def text_perplexity(model: nn.Module, tokenizer, text: str, stride: int | None = None) -> dict[str, float]:
    """Perplexity of a text, plus nats and bits per character so tokenizers can be compared."""
    if not text.strip():
        raise ValueError("the text to evaluate is empty; give a file with some text in it")
    ids = tokenizer.encode(text)
    result = perplexity(model, ids, stride)
    nats = result["nll"] * result["tokens"]
    chars = len(text) - len(tokenizer.decode(ids[:1]))  # the first token is context, not predicted
    return {**result, "nats_per_char": nats / chars, "bits_per_char": nats / chars / math.log(2)}
