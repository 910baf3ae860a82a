"""PPO for language models with a KL penalty (Ziegler et al. 2019; Ouyang et al. 2022, InstructGPT).

    prompts ─> policy samples responses (generate(), seeded) ─> score: reward(prompts, responses) at the last
    token, minus kl_coef x k1 KL to the reference on every token, minus eos_penalty when the response never ended
    ─> values of the value head ─> GAE (gamma, lambda) ─> whitened advantages
    ─> epochs x minibatches of the one training loop: clipped policy surrogate + vf_coef x clipped value loss

The rollout is a batch source (PPORollouts): it samples anew once its epochs x minibatches are served, and the
adaptive KL controller moves kl_coef toward the target between rollouts. Its state (the rollout being served, the
controller) goes into the loop's checkpoint, so an interrupted run resumes exactly. The value head shares the
policy's trunk (ActorCritic); the reference is a frozen copy or, for a LoRA policy, the policy with its adapters
disabled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..generate import GenerationConfig, generate
from ..models.decoder import DecoderLM
from ..tokenizer import Tokenizer
from ..train.checkpoint import pack_tensor, unpack_tensor
from .grpo import _rows
from .logprobs import IGNORE_INDEX, head_logprobs, reference_logprobs
from .rl import AdaptiveKL, gae, kl_per_token, masked_mean, whiten


@dataclass
class PPOConfig:
    rollout_size: int = 64  # responses per rollout
    epochs: int = 4  # passes over each rollout
    max_new_tokens: int = 16
    temperature: float = 1.0
    kl_coef: float = 0.2  # the start of the adaptive coefficient
    kl_target: float | None = 6.0  # None: a fixed kl_coef
    kl_horizon: int = 10000
    gamma: float = 1.0
    lam: float = 0.95
    clip: float = 0.2
    clip_value: float = 0.2
    vf_coef: float = 0.1
    eos_penalty: float = -1.0  # added to the reward of a response that did not end within max_new_tokens


class ActorCritic(nn.Module):
    """The policy and a value head on its final hidden states; generation sees the policy alone."""

    def __init__(self, policy: DecoderLM) -> None:
        super().__init__()
        self.policy = policy
        self.config = policy.config
        self.value_head = nn.Linear(policy.config.d_model, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def new_cache(self, *args, **kwargs):
        return self.policy.new_cache(*args, **kwargs)

    def forward(self, input_ids: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.policy(input_ids, **kwargs)

    def logprobs_and_values(self, input_ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) log p(label) (0 where unlabelled) and (B, T) values, from one pass of the trunk."""
        h = self.policy.hidden_states(input_ids)  # (B, T, d)
        return head_logprobs(self.policy.lm_head, h, labels), self.value_head(h).squeeze(-1).float()


class PPORollouts:
    """The training loop's batch source: minibatches of the current rollout, a new rollout when they run out."""

    def __init__(self, model: ActorCritic, tokenizer: Tokenizer, prompts: Sequence[str],
                 reward: Callable[[list[str], list[str]], torch.Tensor], cfg: PPOConfig,
                 reference: nn.Module | None = None) -> None:
        if not prompts:
            raise ValueError("PPORollouts: no prompts to sample from")
        self.model, self.tok, self.reward, self.cfg, self.reference = model, tokenizer, reward, cfg, reference
        self.texts, self.prompts = list(prompts), [tokenizer.encode(p) for p in prompts]
        self.kl = AdaptiveKL(cfg.kl_coef, cfg.kl_target or 1.0, cfg.kl_horizon)
        self.buffer: dict[str, torch.Tensor] | None = None
        self.order: list[int] = []
        self.stats: list[dict[str, float]] = []  # per rollout: mean score, KL, kl_coef

    def get_batch(self, split: str, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        if self.cfg.rollout_size % batch_size:
            raise ValueError(f"rollout_size={self.cfg.rollout_size} must be a multiple of batch_size={batch_size}")
        if not self.order:
            self.buffer = self._rollout(generator)
            n = self.cfg.rollout_size
            self.order = [i for _ in range(self.cfg.epochs) for i in torch.randperm(n, generator=generator).tolist()]
        take, self.order = self.order[:batch_size], self.order[batch_size:]
        return {k: v[take] for k, v in self.buffer.items()}

    def state_dict(self) -> dict:
        """What the loop's checkpoint keeps (JSON): the rollout being served, its order, the KL coefficient."""
        buffer = {k: [str(v.dtype).removeprefix("torch."), list(v.shape), pack_tensor(v.contiguous().view(torch.uint8))]
                  for k, v in (self.buffer or {}).items()}
        return {"kl_coef": self.kl.value, "order": self.order, "buffer": buffer, "stats": self.stats}

    def load_state_dict(self, state: dict) -> None:
        self.kl.value, self.order, self.stats = state["kl_coef"], list(state["order"]), list(state["stats"])
        self.buffer = {k: unpack_tensor(data).view(getattr(torch, dtype)).reshape(shape)
                       for k, (dtype, shape, data) in state["buffer"].items()} or None

    @torch.no_grad()
    def _rollout(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        cfg, model = self.cfg, self.model
        picked = torch.randint(len(self.prompts), (cfg.rollout_size,), generator=generator).tolist()
        prompts = [self.prompts[i] for i in picked]
        seed = int(torch.randint(2 ** 31 - 1, (1,), generator=generator))
        was_training = model.training
        completions = generate(model.policy, prompts, GenerationConfig(
            max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=seed, eos_id=self.tok.eos_id))
        model.train(was_training)
        batch = _rows(prompts, completions)
        mask = (batch["labels"] != IGNORE_INDEX).float()
        logp, values = model.logprobs_and_values(batch["input_ids"], batch["labels"])
        ref = reference_logprobs(model.policy, self.reference, batch["input_ids"], batch["labels"])
        texts = [self.tok.decode([t for t in c if t != self.tok.eos_id]) for c in completions]
        score = self.reward([self.texts[i] for i in picked], texts).float()
        score = score + cfg.eos_penalty * torch.tensor([self.tok.eos_id not in c for c in completions])
        kl = kl_per_token(logp, ref, "k1") * mask
        rewards = -self.kl.value * kl
        last = (mask.cumsum(-1) * mask).argmax(-1)  # (B,) the last response position
        rewards[torch.arange(len(rewards)), last] += score
        advantages, returns = gae(rewards, values * mask, mask, cfg.gamma, cfg.lam)
        advantages = whiten(advantages, mask) * mask
        mean_kl = float((kl.sum(-1)).mean())
        self.stats.append({"score": float(score.mean()), "kl": mean_kl, "kl_coef": self.kl.value})
        if cfg.kl_target is not None:
            self.kl.update(mean_kl, cfg.rollout_size)
        return {**batch, "old_logprobs": logp, "old_values": values * mask, "advantages": advantages,
                "returns": returns, "scores": score, "kl": kl.sum(-1)}


def ppo_objective(clip: float = 0.2, clip_value: float = 0.2, vf_coef: float = 0.1):
    """The PPO loss for the one training loop (PPORollouts minibatches, an ActorCritic model)."""

    def objective(model: ActorCritic, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mask = (batch["labels"] != IGNORE_INDEX).float()
        logp, values = model.logprobs_and_values(batch["input_ids"], batch["labels"])
        ratio = torch.exp(logp - batch["old_logprobs"])
        adv = batch["advantages"]
        pg = masked_mean(-torch.minimum(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv), mask)
        old_v = batch["old_values"]
        v_clipped = old_v + (values - old_v).clamp(-clip_value, clip_value)
        vf = 0.5 * masked_mean(torch.maximum((values - batch["returns"]) ** 2,
                                             (v_clipped - batch["returns"]) ** 2), mask)
        loss = pg + vf_coef * vf
        return loss, {"loss": loss.detach(), "policy_loss": pg.detach(), "value_loss": vf.detach(),
                      "score": batch["scores"].mean(), "kl": batch["kl"].mean(), "clip_fraction": masked_mean(
                          ((ratio - 1).abs() > clip).float(), mask)}

    objective.logged = ("score", "kl", "clip_fraction")  # kl: the rollout's k1 KL summed over each response
    return objective
