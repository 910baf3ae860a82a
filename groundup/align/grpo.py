"""Group-relative policy optimisation (Shao et al. 2024, DeepSeekMath): no value model. Each prompt is answered
group_size times by the current policy; a sample's advantage is its reward against its group's (rl.py); the loss
is PPO's clipped surrogate on every response token plus beta times the k3 KL to the reference, averaged per
response, then over the batch.

    prompts ─> policy samples G answers each (generate(), seeded from the loop's generator) ─> rewards ─>
    group advantages; reference log-probs (a frozen copy, or the policy with its adapters disabled)
    ─> GroupRollouts.get_batch ─> the one training loop ─> grpo objective

One update per rollout (the old policy is the current one, so the ratio starts at 1 and clipping guards the step).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..generate import GenerationConfig, generate
from ..tokenizer import Tokenizer
from .logprobs import IGNORE_INDEX, reference_logprobs, token_logprobs
from .rl import group_advantages, kl_per_token, masked_mean

Reward = Callable[[str, str], float]  # (generated text, the prompt's reference answer) -> reward


@dataclass
class GRPOConfig:
    group_size: int = 8  # samples per prompt; the batch size is prompts x group_size
    max_new_tokens: int = 8
    temperature: float = 1.0
    kl_coef: float = 0.04  # DeepSeekMath's beta
    clip: float = 0.2


class GroupRollouts:
    """A batch source for the training loop whose batches are fresh samples of the policy being trained."""

    def __init__(self, policy: nn.Module, tokenizer: Tokenizer, prompts: Sequence[tuple[str, str]], reward: Reward,
                 cfg: GRPOConfig, reference: nn.Module | None = None) -> None:
        if not prompts:
            raise ValueError("GroupRollouts: no prompts to sample from")
        self.policy, self.tok, self.reward, self.cfg, self.reference = policy, tokenizer, reward, cfg, reference
        self.prompts = [(tokenizer.encode(p), answer) for p, answer in prompts]

    def get_batch(self, split: str, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        G = self.cfg.group_size
        if batch_size % G:
            raise ValueError(f"batch_size={batch_size} must be a multiple of group_size={G} (prompts x samples)")
        picked = torch.randint(len(self.prompts), (batch_size // G,), generator=generator).tolist()
        seed = int(torch.randint(2 ** 31 - 1, (1,), generator=generator))
        prompts = [self.prompts[i] for i in picked for _ in range(G)]
        was_training = self.policy.training
        gen = GenerationConfig(max_new_tokens=self.cfg.max_new_tokens, temperature=self.cfg.temperature, seed=seed,
                               eos_id=self.tok.eos_id)
        completions = generate(self.policy, [ids for ids, _ in prompts], gen)  # (decode_steps puts it in eval)
        self.policy.train(was_training)
        rewards = torch.tensor([self.reward(self.tok.decode([t for t in c if t != self.tok.eos_id]), answer)
                                for c, (_, answer) in zip(completions, prompts, strict=True)], dtype=torch.float32)
        batch = _rows([ids for ids, _ in prompts], completions)
        ref = reference_logprobs(self.policy, self.reference, batch["input_ids"], batch["labels"])
        return {**batch, "advantages": group_advantages(rewards, G), "ref_logprobs": ref, "rewards": rewards}


def _rows(prompts: list[list[int]], completions: list[list[int]]) -> dict[str, torch.Tensor]:
    """prompt + completion, right-padded; labels on the completion (label t = token t + 1)."""
    seqs = [p + c for p, c in zip(prompts, completions, strict=True)]
    width = max(len(s) for s in seqs) - 1
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    labels = torch.full((len(seqs), width), IGNORE_INDEX, dtype=torch.long)
    for b, (p, s) in enumerate(zip(prompts, seqs, strict=True)):
        ids[b, : len(s) - 1] = torch.tensor(s[:-1])
        labels[b, len(p) - 1: len(s) - 1] = torch.tensor(s[len(p):])
    return {"input_ids": ids, "labels": labels}


def grpo_objective(kl_coef: float = 0.04, clip: float = 0.2):
    """The GRPO loss for the one training loop (GroupRollouts batches)."""

    def objective(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mask = (batch["labels"] != IGNORE_INDEX).float()
        logp = token_logprobs(model, batch["input_ids"], batch["labels"])
        ratio = torch.exp(logp - logp.detach())  # 1 at the sample, its gradient the policy gradient
        adv = batch["advantages"][:, None]
        surrogate = -torch.minimum(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
        kl = kl_per_token(logp, batch["ref_logprobs"], "k3")
        per_row = ((surrogate + kl_coef * kl) * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        loss = per_row.mean()
        return loss, {"loss": loss.detach(), "reward": batch["rewards"].mean(), "kl": masked_mean(kl, mask).detach()}

    objective.logged = ("reward", "kl")
    return objective
