"""TrainConfig: every knob of the one training loop, checked before a single step runs.

Batch sizes are *global*: `batch_size` rows are consumed per optimizer step, summed over all
data-parallel ranks and all gradient-accumulation micro-steps. So changing the number of GPUs
or `grad_accum` changes how the work is split, never what is learned.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, get_args

from groundup.config import from_checked_dict

Dtype = Literal["auto", "bf16", "fp32", "fp16"]
Device = Literal["auto", "cpu", "cuda"]


class TrainConfigError(ValueError):
    """A TrainConfig field has a bad value; the message names the field and the fix."""


@dataclass
class TrainConfig:
    out_dir: str = "out"
    max_steps: int = 1000
    batch_size: int = 32  # global rows per optimizer step (all ranks x all micro-steps)
    grad_accum: int = 1  # micro-steps per optimizer step (per rank)
    lr: float = 3e-4  # peak learning rate, reached at the end of warmup
    min_lr: float = 3e-5  # floor of the cosine decay
    warmup_steps: int = 100
    weight_decay: float = 0.1  # applied to matrices and embeddings only (see optim.py)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    eval_every: int = 100  # steps between evals on 'val'; 0 disables eval
    eval_batches: int = 10  # batches averaged per eval
    ckpt_every: int = 500  # steps between checkpoints; 0 = only at the end
    dtype: Dtype = "auto"  # autocast: auto = fastest here (groundup.runtime), bf16, fp16 (CUDA, GradScaler), fp32
    device: Device = "auto"  # auto = cuda when available, else cpu
    seed: int = 1337
    log_every: int = 10  # steps between metric rows / progress-bar updates
    resume: bool = False  # continue from out_dir/ckpt (exactly) when it exists
    progress: bool = True  # tqdm progress bar on rank 0
    find_unused_parameters: bool = False  # DDP only: some trainable parameters get no gradient

    def __post_init__(self) -> None:
        self._check_choices()
        self._check_ints()
        self._check_floats()
        if self.batch_size % self.grad_accum:
            raise TrainConfigError(
                f"TrainConfig.batch_size={self.batch_size} is not divisible by grad_accum={self.grad_accum}; "
                "make batch_size a multiple of grad_accum (batch_size is the global batch per optimizer step)"
            )
        if self.min_lr > self.lr:
            raise TrainConfigError(f"TrainConfig.min_lr={self.min_lr} exceeds lr={self.lr}; set min_lr <= lr")
        if self.dtype == "fp16" and self.resolved_device() != "cuda":
            raise TrainConfigError(
                "TrainConfig.dtype='fp16' needs a CUDA device (fp16 autocast with a GradScaler); "
                "on CPU use dtype='auto', 'bf16' or 'fp32'"
            )

    def _check_choices(self) -> None:
        for name, kind in (("dtype", Dtype), ("device", Device)):
            allowed = get_args(kind)
            if getattr(self, name) not in allowed:
                raise TrainConfigError(
                    f"TrainConfig.{name}={getattr(self, name)!r} is unknown; use one of {list(allowed)}"
                )
        if self.device == "cuda" and not _cuda_available():
            raise TrainConfigError("TrainConfig.device='cuda' but CUDA is not available; use device='auto' or 'cpu'")

    def _check_ints(self) -> None:
        positive = ("max_steps", "batch_size", "grad_accum", "log_every")
        non_negative = ("warmup_steps", "eval_every", "eval_batches", "ckpt_every")
        for name in positive + non_negative:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TrainConfigError(f"TrainConfig.{name}={value!r} must be an integer")
            if name in positive and value <= 0:
                raise TrainConfigError(f"TrainConfig.{name}={value} must be a positive integer")
            if value < 0:
                raise TrainConfigError(f"TrainConfig.{name}={value} must be >= 0 (0 disables it)")
        if self.eval_every and not self.eval_batches:
            raise TrainConfigError(
                "TrainConfig.eval_batches=0 with eval_every > 0; set eval_batches >= 1 or eval_every=0"
            )

    def _check_floats(self) -> None:
        for name in ("lr", "min_lr", "weight_decay", "grad_clip"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise TrainConfigError(f"TrainConfig.{name}={value!r} must be a number >= 0")
        if self.lr == 0:
            raise TrainConfigError("TrainConfig.lr=0 would never update the model; set a positive lr")
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise TrainConfigError(f"TrainConfig.{name}={value} must be in [0, 1)")

    def resolved_device(self) -> str:
        """'cuda' or 'cpu' (the device type; ranks pick their own CUDA index)."""
        if self.device == "auto":
            return "cuda" if _cuda_available() else "cpu"
        return self.device

    def resolved_dtype(self, work: int | None = None) -> str:
        """'bf16', 'fp16' or 'fp32': auto resolved for this machine's device (runtime.best_dtype; `work` is rows x
        context x d_model^2 of one micro-step, which decides bf16 autocast on AMX CPUs)."""
        from groundup import runtime  # imports torch: here, so that building a TrainConfig does not

        return runtime.resolve_dtype(self.dtype, self.resolved_device(), "train", "TrainConfig.dtype", work)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return from_checked_dict(cls, data, TrainConfigError)


def _cuda_available() -> bool:
    import torch  # here, not at the top: the CLI builds TrainConfigs for --help without torch

    return torch.cuda.is_available()
