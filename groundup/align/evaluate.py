"""Held-out measures of an aligned model: an objective's metrics over preference pairs (a reward model's accuracy,
DPO's implicit-reward accuracy), and a reward model's score and the KL to the reference of sampled responses."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..generate import GenerationConfig, generate
from ..tokenizer import Tokenizer
from .grpo import _rows
from .logprobs import reference_logprobs, token_logprobs


@torch.no_grad()
def pair_metrics(objective: Callable, model: nn.Module, data, batch_size: int = 16) -> dict[str, float]:
    """The objective's metrics averaged over every pair of `data` (PreferenceData), the model in eval mode."""
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    n = len(data.rows)
    for i in range(0, n, batch_size):
        which = list(range(i, min(i + batch_size, n)))
        _, metrics = objective(model, data.batch(which))
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + float(v) * len(which)
    model.train(was_training)
    return {k: v / n for k, v in sums.items()}


@torch.no_grad()
def sampled_scores(policy: nn.Module, tokenizer: Tokenizer, prompts: Sequence[str],
                   reward: Callable[[list[str], list[str]], torch.Tensor], max_new_tokens: int,
                   reference: nn.Module | None = None, seed: int = 0, batch_size: int = 32) -> dict[str, float]:
    """Mean reward of responses sampled at temperature 1 (as RL samples them) and their KL to the reference (k1,
    summed over each response; the reference is `reference`, or the policy with its adapters disabled)."""
    scores, kls = [], []
    for i in range(0, len(prompts), batch_size):
        texts = list(prompts[i: i + batch_size])
        ids = [tokenizer.encode(p) for p in texts]
        completions = generate(policy, ids, GenerationConfig(max_new_tokens=max_new_tokens, temperature=1.0,
                                                             seed=seed + i, eos_id=tokenizer.eos_id))
        responses = [tokenizer.decode([t for t in c if t != tokenizer.eos_id]) for c in completions]
        scores.append(reward(texts, responses).float())
        batch = _rows(ids, completions)
        logp = token_logprobs(policy, batch["input_ids"], batch["labels"])
        ref = reference_logprobs(policy, reference, batch["input_ids"], batch["labels"])
        kls.append((logp - ref).sum(-1))  # 0 outside the responses
    return {"score": float(torch.cat(scores).mean()), "kl": float(torch.cat(kls).mean())}
