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


@torch.inference_mode()
def window_perplexity(
    model: nn.Module, ids: list[int] | torch.Tensor, context: int, score_last: int | None = None,
    batch_size: int = 8,
) -> dict[str, float]:
    """Perplexity in non-overlapping windows of `context` tokens, each scored on its own with no history
    carried over (Press et al. 2022's "nonoverlapping inference", the protocol of ALiBi's extrapolation plots).

    Window w predicts tokens w*context+1 .. (w+1)*context; tokens past the last full window are dropped, so
    give context-multiples + 1 tokens to score the same tokens at several contexts. `score_last` counts only
    the last score_last predictions of each window: each of those then sees >= context - score_last tokens.
    `context` may exceed block_size for ALiBi / RoPE models (extrapolation); absolute positions refuse it.
    """
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()
    cfg = model.config
    if not isinstance(context, int) or context < 1:
        raise ValueError(f"window_perplexity(context={context!r}): must be a positive number of tokens")
    if cfg.pos in ("learned", "sinusoidal") and context > cfg.block_size:
        raise ValueError(
            f"window_perplexity(context={context}) is beyond block_size={cfg.block_size}: pos={cfg.pos!r} has no "
            "position past its table; use context <= block_size, or a model with pos='alibi' or 'rope'"
        )
    score = context if score_last is None else score_last
    if not 1 <= score <= context:
        raise ValueError(f"window_perplexity(score_last={score_last}): must be between 1 and context={context}")
    n_windows = (ids.numel() - 1) // context
    if n_windows < 1:
        raise ValueError(f"window_perplexity needs at least context + 1 = {context + 1} tokens; got {ids.numel()}")
    model.eval()
    device = next(model.parameters()).device
    windows = ids[: n_windows * context + 1]
    total = 0.0
    for first in range(0, n_windows, batch_size):
        rows = range(first, min(first + batch_size, n_windows))
        batch = torch.stack([windows[w * context : (w + 1) * context + 1] for w in rows]).to(device)  # (B, ctx+1)
        logits = model(batch[:, :-1])[:, -score:].float()  # (B, score, V)
        total += F.cross_entropy(logits.flatten(0, 1), batch[:, -score:].flatten(), reduction="sum").item()
    count = n_windows * score
    nll = total / count
    return {"nll": nll, "ppl": math.exp(nll), "tokens": count, "windows": n_windows}
