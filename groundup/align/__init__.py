"""Alignment on top of the one training loop: each method is an objective, and the RL methods' rollouts are its
batch source (reward models, DPO / IPO, PPO with a KL penalty, GRPO)."""

from .dpo import DPOObjective, dpo_loss, precompute_reference
from .grpo import GroupRollouts, GRPOConfig, grpo_objective
from .logprobs import pair_logprobs, response_logprobs
from .ppo import ActorCritic, PPOConfig, PPORollouts, ppo_objective
from .reward import RewardModel, bradley_terry_loss, reward_objective

__all__ = ["ActorCritic", "DPOObjective", "GRPOConfig", "GroupRollouts", "PPOConfig", "PPORollouts", "RewardModel",
           "bradley_terry_loss", "dpo_loss", "grpo_objective", "pair_logprobs", "ppo_objective", "precompute_reference",
           "response_logprobs", "reward_objective"]
