"""Alignment: reward models, DPO (and IPO), on top of the one training loop (each method is an objective)."""

from .dpo import DPOObjective, dpo_loss, precompute_reference
from .logprobs import pair_logprobs, response_logprobs
from .reward import RewardModel, bradley_terry_loss, reward_objective

__all__ = ["DPOObjective", "RewardModel", "bradley_terry_loss", "dpo_loss", "pair_logprobs", "precompute_reference",
           "response_logprobs", "reward_objective"]
