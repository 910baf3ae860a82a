"""Direct Preference Optimization (Rafailov et al. 2023) and IPO (Azar et al. 2023): the policy learns from pairs
without a reward model or sampling.

    h = (log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected))
    sigmoid: -log sigmoid(beta h)  (with label smoothing eps: (1 - eps) of that + eps of -log sigmoid(-beta h))
    ipo:     (h - 1 / (2 beta))^2  on per-token mean log-probs (as trl computes IPO)

The reference is either a frozen copy's log-probs computed once (precompute_reference: they ride in the batch) or,
for a LoRA / IA3 policy, the same model with its adapters disabled (no second copy in memory).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..peft.api import disable
from .logprobs import pair_logprobs

Loss = Literal["sigmoid", "ipo"]


def dpo_loss(pi_c: torch.Tensor, pi_r: torch.Tensor, ref_c: torch.Tensor, ref_r: torch.Tensor, beta: float = 0.1,
             loss_type: Loss = "sigmoid", label_smoothing: float = 0.0
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean loss, chosen rewards, rejected rewards); the implicit rewards are beta * (log pi - log ref)."""
    h = (pi_c - ref_c) - (pi_r - ref_r)
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * h) * (1 - label_smoothing) - F.logsigmoid(-beta * h) * label_smoothing
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"loss_type={loss_type!r}: use 'sigmoid' (DPO) or 'ipo'")
    return losses.mean(), beta * (pi_c - ref_c).detach(), beta * (pi_r - ref_r).detach()


class DPOObjective:
    """A training objective for the one loop: (model, batch) -> (loss, metrics). The batch (PreferenceData) holds
    ref_chosen / ref_rejected when the reference was precomputed; otherwise the adapters are disabled to get it."""

    logged = ("reward_accuracy", "reward_margin")  # the loop's CSV columns and progress bar

    def __init__(self, beta: float = 0.1, loss_type: Loss = "sigmoid", label_smoothing: float = 0.0) -> None:
        if beta <= 0:
            raise ValueError(f"beta={beta}: must be positive (0.1 is usual)")
        if not 0.0 <= label_smoothing < 0.5:
            raise ValueError(f"label_smoothing={label_smoothing}: must be in [0, 0.5)")
        self.beta, self.loss_type, self.label_smoothing = beta, loss_type, label_smoothing

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        average = self.loss_type == "ipo"
        pi_c, pi_r = pair_logprobs(model, batch, average)
        if "ref_chosen" in batch:
            ref_c, ref_r = batch["ref_chosen"], batch["ref_rejected"]
        else:
            with torch.no_grad(), disable(model):
                ref_c, ref_r = pair_logprobs(model, batch, average)
        loss, r_c, r_r = dpo_loss(pi_c, pi_r, ref_c, ref_r, self.beta, self.loss_type, self.label_smoothing)
        return loss, {"loss": loss.detach(), "reward_accuracy": (r_c > r_r).float().mean(),
                      "reward_margin": (r_c - r_r).mean(), "chosen_reward": r_c.mean(), "rejected_reward": r_r.mean()}


@torch.no_grad()
def precompute_reference(reference: nn.Module, data, average: bool = False, batch_size: int = 16) -> None:
    """Store the frozen reference's log-probs of every pair in data (PreferenceData.reference), computed once."""
    reference.eval()
    out = []
    for i in range(0, len(data.rows), batch_size):
        b = data.batch(list(range(i, min(i + batch_size, len(data.rows)))), with_reference=False)
        out.append(torch.stack(pair_logprobs(reference, b, average), dim=-1))  # (b, 2)
    data.reference = torch.cat(out)
