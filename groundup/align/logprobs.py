"""Log-probabilities of responses: the quantity DPO and PPO compare between the policy and its reference."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..peft.api import disable

IGNORE_INDEX = -100


def token_logprobs(model: nn.Module, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, T) log p(label) at the labelled positions, 0 elsewhere; labels (B, T) already shifted (-100: no label).
    A decoder's LM head runs on the labelled positions only: prompts and padding cost no vocabulary projection
    and no (B, T, V) logits are held for the backward pass (a wrapped model's full logits are used as they come)."""
    if hasattr(model, "hidden_states") and hasattr(model, "lm_head"):
        return head_logprobs(model.lm_head, model.hidden_states(ids), labels)
    return head_logprobs(nn.Identity(), model(ids), labels)


@torch.no_grad()
def reference_logprobs(policy: nn.Module, reference: nn.Module | None, ids: torch.Tensor, labels: torch.Tensor
                       ) -> torch.Tensor:
    """token_logprobs of the reference: a frozen `reference` model, or (None) the policy with its adapters off."""
    if reference is not None:
        return token_logprobs(reference, ids, labels)
    with disable(policy):
        return token_logprobs(policy, ids, labels)


def head_logprobs(head: nn.Module, h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """token_logprobs from hidden states h (B, T, d) and the LM head, applied at the labelled positions only."""
    mask = labels != IGNORE_INDEX
    logp = -F.cross_entropy(head(h[mask]).float(), labels[mask], reduction="none")  # (N,): log-softmax + gather
    return torch.zeros(labels.shape, dtype=logp.dtype, device=logp.device).masked_scatter(mask, logp)


def response_logprobs(model: nn.Module, ids: torch.Tensor, labels: torch.Tensor, average: bool = False
                      ) -> torch.Tensor:
    """(B,) the sum (or, with average, the per-token mean) of log p(label) over the labelled positions."""
    total = token_logprobs(model, ids, labels).sum(-1)
    return total / (labels != IGNORE_INDEX).sum(-1).clamp(min=1) if average else total


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
    logp = response_logprobs(model, ids, labels, average)
    return logp[: len(c_ids)], logp[len(c_ids):]
