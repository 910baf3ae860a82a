"""Training objectives: `(model, batch, counts=None) -> (loss, metrics)`.

Every loss is a cross-entropy with ignore_index=-100, summed over targets and divided by a
*denominator*. Called plainly (`counts=None`) the denominator is the number of targets in this
batch, i.e. the ordinary mean loss. The training loop instead passes `counts`: the number of
targets of the whole *global* batch (all ranks, all micro-steps), keyed like the label tensors.
Then each micro-batch's loss is its exact share of the global mean, and summing shares over
micro-steps and ranks gives the same loss (and gradient) as one big batch, even when micro-batches
hold different numbers of targets (MLM masks, padded seq2seq targets). Metrics follow the same
convention, so they are additive too.

    global batch ──► count_targets ──► counts ─┐
         │                                     ▼
         └─► rank slice ─► micro-batch ─► objective(model, micro, counts) ─► share of the mean
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from groundup.models.clip import contrastive_loss
from groundup.nn.moe import moe_aux_loss

IGNORE_INDEX = -100
Batch = dict[str, Tensor]
Metrics = dict[str, Tensor]
Objective = Callable[..., tuple[Tensor, Metrics]]


def is_label_key(key: str) -> bool:
    """Label tensors are named 'labels' or '<something>_labels' (e.g. 'nsp_labels')."""
    return key == "labels" or key.endswith("_labels")


def count_targets(batch: Batch) -> dict[str, Tensor]:
    """Number of non-ignored targets for every label tensor in `batch` (the loss denominators)."""
    return {k: (v != IGNORE_INDEX).sum() for k, v in batch.items() if is_label_key(k)}


def _need(batch: Batch, keys: tuple[str, ...], objective: str) -> None:
    missing = [k for k in keys if k not in batch]
    if missing:
        raise KeyError(
            f"objective {objective!r} needs batch keys {list(keys)}, missing {missing}; "
            f"got {sorted(batch)} (is the data object built for this objective?)"
        )


def _ce(logits: Tensor, labels: Tensor, key: str, counts: dict[str, Tensor] | None) -> Tensor:
    """Summed cross-entropy over non-ignored targets / denominator (global count or local count)."""
    if logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} do not line up with batch[{key!r}] {tuple(labels.shape)}; "
            "labels must have the logits' shape without the vocabulary dimension"
        )
    total = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(),  # (N, V)
        labels.reshape(-1),  # (N,)
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    denom = counts[key] if counts is not None else (labels != IGNORE_INDEX).sum()
    return total / denom.to(total.device).clamp(min=1)


def causal_lm(model: nn.Module, batch: Batch, counts: dict[str, Tensor] | None = None) -> tuple[Tensor, Metrics]:
    """Next-token prediction. `labels` are already shifted: labels[:, t] is the token after input_ids[:, t].
    In training, a mixture-of-experts model's router losses (nn/moe.py) are added to the loss. A batch with
    `media` (a vision-language model's image features, data/vlm.py) passes them to the model."""
    _need(batch, ("input_ids", "labels"), "causal_lm")
    media = {"media": batch["media"]} if "media" in batch else {}
    logits = model(batch["input_ids"], **media)  # (B, T, V)
    loss = _ce(logits, batch["labels"], "labels", counts)
    aux = moe_aux_loss(model) if model.training else None  # router losses regularise training; val stays CE
    if aux is None:
        return loss, {"loss": loss.detach()}
    if counts is not None:  # this micro-batch's share, so shares over micro-steps and ranks sum to the mean
        aux = aux * (batch["labels"] != IGNORE_INDEX).sum() / counts["labels"].to(aux.device).clamp(min=1)
    return loss + aux, {"loss": (loss + aux).detach(), "lm_loss": loss.detach(), "router_aux_loss": aux.detach()}


def mlm_nsp(model: nn.Module, batch: Batch, counts: dict[str, Tensor] | None = None) -> tuple[Tensor, Metrics]:
    """BERT pretraining (Devlin et al., 2018): masked-LM loss + next-sentence-prediction loss."""
    _need(batch, ("input_ids", "token_type_ids", "attention_mask", "labels", "nsp_labels"), "mlm_nsp")
    out = model(batch["input_ids"], token_type_ids=batch["token_type_ids"], attention_mask=batch["attention_mask"])
    mlm = _ce(out.mlm_logits, batch["labels"], "labels", counts)  # mlm_logits: (B, T, V)
    nsp = _ce(out.nsp_logits, batch["nsp_labels"], "nsp_labels", counts)  # nsp_logits: (B, 2)
    loss = mlm + nsp
    return loss, {"loss": loss.detach(), "mlm_loss": mlm.detach(), "nsp_loss": nsp.detach()}


def seq2seq(model: nn.Module, batch: Batch, counts: dict[str, Tensor] | None = None) -> tuple[Tensor, Metrics]:
    """Encoder-decoder teacher forcing (Vaswani et al., 2017): labels[:, t] is the target after tgt_in[:, t]."""
    _need(batch, ("src_ids", "src_mask", "tgt_in", "labels"), "seq2seq")
    logits = model(batch["src_ids"], batch["tgt_in"], src_mask=batch["src_mask"])  # (B, T_tgt, V)
    loss = _ce(logits, batch["labels"], "labels", counts)
    return loss, {"loss": loss.detach()}


def image_classification(
    model: nn.Module, batch: Batch, counts: dict[str, Tensor] | None = None
) -> tuple[Tensor, Metrics]:
    """One label per image (ViT): labels (B,) against the class logits (B, n_class)."""
    _need(batch, ("pixels", "labels"), "image_classification")
    loss = _ce(model(batch["pixels"]), batch["labels"], "labels", counts)
    return loss, {"loss": loss.detach()}


def clip(model: nn.Module, batch: Batch) -> tuple[Tensor, Metrics]:
    """CLIP (Radford et al. 2021): the symmetric contrastive loss of the batch's image/caption pairs (pixels,
    input_ids, optional attention_mask; optional caption_ids: rows sharing one are positives of each other, e.g.
    two images of one class captioned alike). The negatives are the other pairs of the same micro-batch (nothing is
    gathered across micro-steps or ranks), so there are no target counts: the loop averages the equal-sized
    micro-batches' losses."""
    for raw, cached in (("pixels", "image_features"), ("input_ids", "text_features")):
        if raw not in batch and cached not in batch:
            raise KeyError(f"objective 'clip' needs batch key {raw!r} (or {cached!r}, a locked tower's cached "
                           f"features: models.clip.cache_locked_tower); got {sorted(batch)}")
    logits_per_image, _ = model(batch.get("pixels"), batch.get("input_ids"), batch.get("attention_mask"),
                                image_features=batch.get("image_features"), text_features=batch.get("text_features"))
    loss = contrastive_loss(logits_per_image, batch.get("caption_ids"))  # (B, B) -> (); shared captions: positives
    return loss, {"loss": loss.detach()}


OBJECTIVES: dict[str, Objective] = {"causal_lm": causal_lm, "mlm_nsp": mlm_nsp, "seq2seq": seq2seq,
                                    "image_classification": image_classification, "clip": clip}


def get_objective(name_or_fn: str | Objective) -> Objective:
    """An objective by name (see OBJECTIVES) or a callable passed through unchanged."""
    if callable(name_or_fn):
        return name_or_fn
    if name_or_fn not in OBJECTIVES:
        raise KeyError(f"unknown objective {name_or_fn!r}; use one of {sorted(OBJECTIVES)} or pass a function")
    return OBJECTIVES[name_or_fn]


def token_count(batch: dict[str, Any]) -> int:
    """Tokens processed by the model for this batch (for tokens/s): every token-id tensor's size; for a batch of
    images without text, the number of images (the tokens/s column then counts images/s)."""
    tokens = sum(int(batch[k].numel()) for k in ("input_ids", "src_ids", "tgt_in", "chosen_ids", "rejected_ids")
                 if k in batch)
    return tokens or (len(batch["pixels"]) if "pixels" in batch else 0)


__all__ = [
    "IGNORE_INDEX",
    "OBJECTIVES",
    "Objective",
    "causal_lm",
    "clip",
    "count_targets",
    "get_objective",
    "image_classification",
    "mlm_nsp",
    "seq2seq",
    "token_count",
]
