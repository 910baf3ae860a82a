"""Reward models (Ouyang et al. 2022; Stiennon et al. 2020): a language model's last real token -> one scalar,
trained on preference pairs with the Bradley-Terry loss

    -log sigmoid(r(chosen) - r(rejected) - margin)    (+ centring: coef * (r_c + r_r)^2, keeping rewards near 0)

Any groundup decoder is the trunk (its final-norm hidden states; LoRA on it or not).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .logprobs import IGNORE_INDEX


class RewardModel(nn.Module):
    def __init__(self, trunk: nn.Module) -> None:
        super().__init__()
        if not hasattr(trunk, "hidden_states"):
            raise ValueError(f"a reward model's trunk is a decoder (with hidden_states); got {type(trunk).__name__}")
        self.trunk = trunk
        self.config = trunk.config
        self.head = nn.Linear(trunk.config.d_model, 1)
        nn.init.normal_(self.head.weight, std=1 / (trunk.config.d_model + 1) ** 0.5)
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """(B,) rewards read at position last (B,) of each row (its last real token; right padding)."""
        h = self.trunk.hidden_states(input_ids)  # (B, T, d)
        return self.head(h[torch.arange(len(h), device=h.device), last]).squeeze(-1).float()


def bradley_terry_loss(r_c: torch.Tensor, r_r: torch.Tensor, margin: torch.Tensor | None = None,
                       center: float = 0.0) -> torch.Tensor:
    gap = r_c - r_r - (margin if margin is not None else 0.0)
    loss = -F.logsigmoid(gap).mean()
    return loss + center * ((r_c + r_r) ** 2).mean() if center else loss


def last_positions(labels: torch.Tensor) -> torch.Tensor:
    """(B,) the last input position whose next token is part of the response: the response's last token."""
    idx = torch.arange(labels.shape[1], device=labels.device).expand_as(labels)
    return torch.where(labels != IGNORE_INDEX, idx, -1).amax(-1).clamp(min=0)


def reward_objective(center: float = 0.0, use_margin: bool = True):
    """The reward model's objective for the one training loop (PreferenceData batches)."""

    def objective(model: RewardModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        r_c = model(batch["chosen_ids"], last_positions(batch["chosen_labels"]))
        r_r = model(batch["rejected_ids"], last_positions(batch["rejected_labels"]))
        loss = bradley_terry_loss(r_c, r_r, batch["margin"] if use_margin else None, center)
        return loss, {"loss": loss.detach(), "accuracy": (r_c > r_r).float().mean()}

    return objective
