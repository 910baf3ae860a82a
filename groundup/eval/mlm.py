"""Scoring a masked language model (BERT) on text: pseudo-log-likelihood (Salazar et al. 2020, "Masked Language
Model Scoring"). Each token is masked alone and predicted from both sides; the mean negative log-probability of
the true tokens gives the pseudo-perplexity, and how often the masked token is the top prediction the
masked-token accuracy. Unlike BERT's training masks (15%, random), every token is scored, deterministically.

    text ─ tokens ─ windows of block_size - 2 ─ [CLS] w [SEP] ─ one copy per token with that token -> [MASK]
         ─ mlm_logits at the masked position ─ log p(true token), argmax == true token
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _windows(ids: list[int], width: int) -> list[list[int]]:
    return [ids[i : i + width] for i in range(0, len(ids), width)]


@torch.inference_mode()
def pseudo_perplexity(model: nn.Module, tokenizer, text: str, batch_size: int = 64) -> dict[str, float]:
    """{"nll": mean -log p(token | the rest) in nats, "pppl": its exp, "accuracy": masked-token accuracy,
    "tokens": tokens scored}. The text is cut into windows of block_size - 2 tokens, each scored on its own."""
    if not hasattr(model, "mlm_head"):
        raise ValueError(f"{type(model).__name__} has no masked-language-model head (a sentence-embedding encoder); "
                         "pseudo-perplexity needs a BERT pretrained with MLM (groundup pretrain --config "
                         "configs/bert-mini-mlm.yaml, or a BertForPreTraining checkpoint)")
    cls, sep, mask_id = tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id
    if None in (cls, sep, mask_id):
        raise ValueError("pseudo-perplexity needs the tokenizer's [CLS], [SEP] and [MASK] tokens (WordPiece)")
    ids = tokenizer.encode(text)
    if not ids:
        raise ValueError("the text to evaluate has no tokens; give a file with some text in it")
    model.eval()
    device = next(model.parameters()).device
    total, correct, count = 0.0, 0, 0
    for window in _windows(ids, model.config.block_size - 2):
        row = torch.tensor([cls, *window, sep], device=device)  # (T,)
        n = len(window)
        for first in range(0, n, batch_size):
            where = torch.arange(first, min(first + batch_size, n), device=device) + 1  # masked columns (b,)
            batch = row.repeat(len(where), 1)  # (b, T)
            batch[torch.arange(len(where), device=device), where] = mask_id
            logits = model(batch).mlm_logits[torch.arange(len(where), device=device), where].float()  # (b, V)
            true = row[where]  # (b,)
            total -= logits.log_softmax(-1).gather(1, true[:, None]).sum().item()
            correct += int((logits.argmax(-1) == true).sum())
            count += len(where)
    nll = total / count
    return {"nll": nll, "pppl": math.exp(nll), "accuracy": correct / count, "tokens": count}
