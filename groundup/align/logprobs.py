"""Log-probabilities of responses: the quantity DPO and PPO compare between the policy and its reference."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100


def response_logprobs(logits: torch.Tensor, labels: torch.Tensor, average: bool = False) -> torch.Tensor:
    """(B,) the sum (or, with average, the per-token mean) of log p(label) over the labelled positions.
    logits (B, T, V), labels (B, T) already shifted (-100: not part of the response)."""
    mask = labels != IGNORE_INDEX
    logp = torch.gather(F.log_softmax(logits.float(), dim=-1), -1, labels.clamp(min=0)[..., None]).squeeze(-1)
    total = (logp * mask).sum(-1)  # (B,)
    return total / mask.sum(-1).clamp(min=1) if average else total


def _pad_to(x: torch.Tensor, width: int, value: int) -> torch.Tensor:
    return F.pad(x, (0, width - x.shape[1]), value=value)


def pair_logprobs(model: nn.Module, batch: dict[str, torch.Tensor], average: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) response log-probs (B,) each, from one forward pass over both halves of the batch
    (right padding: a causal model's real positions never see it)."""
    c_ids, r_ids = batch["chosen_ids"], batch["rejected_ids"]
    width = max(c_ids.shape[1], r_ids.shape[1])
    ids = torch.cat([_pad_to(c_ids, width, 0), _pad_to(r_ids, width, 0)])  # (2B, T)
    labels = torch.cat([_pad_to(batch["chosen_labels"], width, IGNORE_INDEX),
                        _pad_to(batch["rejected_labels"], width, IGNORE_INDEX)])
    logp = response_logprobs(model(ids), labels, average)
    return logp[: len(c_ids)], logp[len(c_ids):]
