"""Sentence embeddings from an encoder: mean of the real tokens' final hidden states, L2-normalised
(the sentence-transformers recipe; Reimers & Gurevych 2019)."""

from __future__ import annotations

import torch
from torch import nn

from .models.encoder import Encoder, EncoderForPreTraining, mean_pool
from .tokenizer import Tokenizer


@torch.inference_mode()
def embed_texts(
    model: nn.Module, tokenizer: Tokenizer, texts: list[str], batch_size: int = 32, normalize: bool = True
) -> torch.Tensor:
    """(N, d) embeddings; texts longer than the model's context are truncated, as sentence-transformers does."""
    body = model.encoder if isinstance(model, EncoderForPreTraining) else model
    if not isinstance(body, Encoder):
        raise ValueError(f"embeddings need an encoder model (BERT-style); got {type(model).__name__}")
    if tokenizer.pad_id is None:
        raise ValueError("the tokenizer has no padding token ([PAD]); embeddings of a batch need one")
    body.eval()
    limit = body.config.block_size
    out = []
    for start in range(0, len(texts), batch_size):
        rows = [ids[: limit - 1] + ids[-1:] if len(ids) > limit else ids
                for ids in tokenizer.encode_batch(texts[start : start + batch_size], add_special_tokens=True)]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
        out.append(mean_pool(body(ids, None, mask), mask, normalize).float())
    return torch.cat(out) if out else torch.zeros(0, body.config.d_model)
