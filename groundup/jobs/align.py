"""The options of `groundup align reward|dpo|ppo|grpo` and of `groundup data preferences`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from ..data.instruct_jsonl import DEFAULT_SEPARATOR
from ..train.config import TrainConfig


@dataclass
class LoraOptions:
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] | None = None  # module-name patterns (None = LoRA's default: q and v projections)


def _train(**overrides) -> TrainConfig:
    defaults = {"max_steps": 200, "batch_size": 8, "lr": 5e-4, "min_lr": 5e-5, "warmup_steps": 20, "eval_every": 0,
                "ckpt_every": 50, "log_every": 5}
    return TrainConfig(**{**defaults, **overrides})


@dataclass
class AlignJob:
    model: str = "smollm2-135m-instruct"  # the model to align: checkpoint dir, HF dir, .gguf, or packaged name
    method: Literal["lora", "full"] = "lora"  # lora: the base frozen, the reference = the adapters disabled
    lora: LoraOptions = field(default_factory=LoraOptions)
    out_dir: str = "runs/align"
    train: TrainConfig = field(default_factory=_train)
    CLI_FLAGS: ClassVar[dict[str, str]] = {"train.out_dir": "out_dir"}

    def __post_init__(self) -> None:
        if self.method not in ("lora", "full"):
            raise ValueError(f"method={self.method!r}: use 'lora' (adapters over a frozen base) or 'full'")
        if self.method == "lora" and self.lora.r < 1:
            raise ValueError(f"lora.r={self.lora.r}: a LoRA rank is at least 1 (8 is usual); or use --method full")


@dataclass
class RewardJob(AlignJob):
    """Train a reward model: the model's last real token -> one scalar, Bradley-Terry loss on preference pairs
    ({"prompt", "chosen", "rejected"[, "margin"]} JSONL); its accuracy on --eval_data pairs is reported. Writes
    out_dir/reward_model/ (for `groundup align ppo --reward_model`)."""

    data: str = ""  # preference JSONL (groundup data preferences writes one from human ratings)
    eval_data: str = ""  # held-out preference JSONL: the accuracy of the trained reward model on it
    margin: bool = True  # subtract each pair's "margin" inside the loss (Llama-2's margin loss)
    center: float = 0.0  # coefficient of the reward-centring penalty (r_chosen + r_rejected)^2
    out_dir: str = "runs/reward"


@dataclass
class DPOJob(AlignJob):
    """Align a model to preference pairs with DPO (or IPO): no reward model, no sampling; the accuracy and margin
    of its implicit reward are logged, and measured on --eval_data pairs. Writes out_dir/adapter/ (or model/)."""

    data: str = ""  # preference JSONL
    eval_data: str = ""  # held-out preference JSONL: implicit-reward accuracy on it
    beta: float = 0.1
    loss: Literal["sigmoid", "ipo"] = "sigmoid"
    label_smoothing: float = 0.0
    precompute_reference: bool = True  # the reference's log-probs once before training (else every step, no grad)
    out_dir: str = "runs/dpo"


@dataclass
class RLOptions:
    max_new_tokens: int = 16
    temperature: float = 1.0
    kl_coef: float = 0.2  # the KL penalty's coefficient (PPO: its start when kl_target is set)


@dataclass
class PPOJob(AlignJob):
    """Align a model with PPO against a trained reward model: rollouts of --prompts, the reward model's score minus
    a KL penalty to the reference, GAE, clipped policy and value losses over several epochs per rollout. The bar
    shows score, KL and the clip fraction. Writes out_dir/adapter/ (or model/)."""

    prompts: str = ""  # JSONL of {"prompt": ...} lines (groundup data preferences writes prompts.jsonl)
    reward_model: str = ""  # a reward_model/ folder from `groundup align reward` (same tokenizer as --model)
    rollout_size: int = 64  # responses per rollout (a multiple of train.batch_size)
    epochs: int = 4  # passes over each rollout
    rl: RLOptions = field(default_factory=RLOptions)
    kl_target: float | None = 6.0  # adaptive KL controller's target (summed over a response); None: fixed kl_coef
    gamma: float = 1.0
    lam: float = 0.95
    vf_coef: float = 0.1
    eos_penalty: float = -1.0  # added to the score of a response that never ended
    train: TrainConfig = field(default_factory=lambda: _train(max_steps=160, batch_size=16, lr=2e-4, min_lr=2e-4,
                                                              warmup_steps=1, ckpt_every=16, log_every=4))
    out_dir: str = "runs/ppo"


@dataclass
class GRPOJob(AlignJob):
    """Align a model with group-relative RL on a verifiable reward: each prompt of an instruction JSONL is answered
    group_size times, an answer's reward is its exact match with the completion, advantages are relative to the
    group (no value model), with a KL term to the reference. Exact match on --eval_data after training. Writes
    out_dir/adapter/ (or model/)."""

    data: str = ""  # instruction JSONL ({"prompt", "completion"}; groundup data arithmetic writes one)
    eval_data: str = ""  # JSONL whose greedy exact match is reported after training
    group_size: int = 8  # samples per prompt (train.batch_size = prompts x group_size)
    rl: RLOptions = field(default_factory=lambda: RLOptions(max_new_tokens=8, kl_coef=0.04))
    separator: str = DEFAULT_SEPARATOR  # between prompt and completion, as in `groundup finetune`
    train: TrainConfig = field(default_factory=lambda: _train(max_steps=100, batch_size=32, lr=5e-4, warmup_steps=10))
    out_dir: str = "runs/grpo"


@dataclass
class PreferencesJob:
    """Write preference pairs from human sentiment ratings (VADER's snippets of movie reviews, tweets, product
    reviews and editorials, rated -4..+4 by people): the higher rated preferred, margin = the rating gap; train and
    test pairs from disjoint snippets, and PPO prompts (the openings of training snippets)."""

    out_dir: str = "data/preferences"  # train.jsonl, test.jsonl, prompts.jsonl
    domain: Literal["movie", "tweet", "product", "editorial"] = "movie"
    n_train: int = 4000
    n_test: int = 500
    min_margin: float = 1.0  # the smallest rating gap of a pair
    n_prompts: int = 512
    prompt_words: int = 4  # a PPO prompt is the first words of a snippet
    seed: int = 0
