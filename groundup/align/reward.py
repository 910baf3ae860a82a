"""Reward models (Ouyang et al. 2022; Stiennon et al. 2020): a language model's last real token -> one scalar,
trained on preference pairs with the Bradley-Terry loss

    -log sigmoid(r(chosen) - r(rejected) - margin)    (+ centring: coef * (r_c + r_r)^2, keeping rewards near 0)

Any groundup decoder or encoder is the trunk (its final hidden states; LoRA on it or not; an encoder reads both ways,
so its padding is masked). Saved as a folder:

    reward_model/   the trunk as a groundup checkpoint (adapters folded in) + tokenizer,
                    reward_head.safetensors, reward_model.json {"prompted": whether the pairs had prompts}
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ..data.preference import response_row
from ..models.encoder import Encoder
from ..tokenizer import Tokenizer
from .logprobs import IGNORE_INDEX

HEAD_FILE, INFO_FILE = "reward_head.safetensors", "reward_model.json"


class RewardModel(nn.Module):
    def __init__(self, trunk: nn.Module) -> None:
        super().__init__()
        body = trunk if isinstance(trunk, Encoder) else getattr(trunk, "encoder", None)
        if not hasattr(trunk, "hidden_states") and not isinstance(body, Encoder):
            raise ValueError(f"a reward model's trunk is a decoder or an encoder; got {type(trunk).__name__}")
        self.trunk = trunk
        self.config = trunk.config
        self.head = nn.Linear(trunk.config.d_model, 1)
        nn.init.normal_(self.head.weight, std=1 / (trunk.config.d_model + 1) ** 0.5)
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """(B,) rewards read at position last (B,) of each row (its last real token; right padding)."""
        if hasattr(self.trunk, "hidden_states"):
            h = self.trunk.hidden_states(input_ids)  # (B, T, d)
        else:
            real = torch.arange(input_ids.shape[1], device=input_ids.device) <= last[:, None]  # (B, T)
            body = self.trunk if isinstance(self.trunk, Encoder) else self.trunk.encoder
            h = body(input_ids, None, real.long())
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

    objective.logged = ("accuracy",)
    return objective


def save_reward_model(model: RewardModel, tokenizer: Tokenizer, folder: str | Path, prompted: bool) -> Path:
    """Write the reward model (LoRA folded into the trunk first); `prompted`: its pairs had non-empty prompts."""
    from ..peft import merge_and_unload
    from ..train.checkpoint import save_checkpoint

    folder = Path(folder)
    trunk = merge_and_unload(model.trunk) if hasattr(model.trunk, "peft_state") else model.trunk
    save_checkpoint(folder, trunk, tokenizer=tokenizer)
    save_file({k: v.detach().contiguous() for k, v in model.head.state_dict().items()}, folder / HEAD_FILE)
    (folder / INFO_FILE).write_text(json.dumps({"prompted": prompted}))
    return folder


def load_reward_model(folder: str | Path) -> tuple[RewardModel, Tokenizer, bool]:
    """(reward model in eval mode, its tokenizer, whether it was trained on prompted pairs)."""
    from ..loading import load_pretrained

    folder = Path(folder)
    if not (folder / HEAD_FILE).is_file():
        raise FileNotFoundError(f"reward_model={str(folder)!r} is not a reward model folder (no {HEAD_FILE}); pass the "
                                "reward_model/ folder `groundup align reward` wrote")
    trunk, tokenizer = load_pretrained(folder)
    model = RewardModel(trunk)
    model.head.load_state_dict(load_file(folder / HEAD_FILE))
    return model.eval(), tokenizer, json.loads((folder / INFO_FILE).read_text())["prompted"]


class RewardScorer:
    """reward(prompts, responses) -> (B,) scores of a reward model, each pair rendered as its training pairs were
    (a model trained on unprompted pairs scores prompt + response as one text)."""

    def __init__(self, model: RewardModel, tokenizer: Tokenizer, prompted: bool, batch_size: int = 32) -> None:
        self.model, self.tok, self.prompted, self.batch_size = model.eval(), tokenizer, prompted, batch_size

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        rows = [response_row(self.tok, p, r) if self.prompted else response_row(self.tok, "", p + r)
                for p, r in zip(prompts, responses, strict=True)]
        device = next(self.model.parameters()).device
        out = []
        for i in range(0, len(rows), self.batch_size):
            chunk = [ids[:-1] for ids, _ in rows[i: i + self.batch_size]]  # the eos is the last label, not an input
            ids = torch.zeros(len(chunk), max(map(len, chunk)), dtype=torch.long)
            for b, row in enumerate(chunk):
                ids[b, : len(row)] = torch.tensor(row)
            last = torch.tensor([len(row) - 1 for row in chunk])
            out.append(self.model(ids.to(device), last.to(device)).cpu())
        return torch.cat(out)
