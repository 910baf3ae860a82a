"""groundup.train: one training loop for every objective, plus its parts.

    from groundup.train import TrainConfig, train
    result = train(model, "causal_lm", data, TrainConfig(out_dir="out", max_steps=200))
"""

from groundup.train import objectives
from groundup.train.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from groundup.train.config import TrainConfig, TrainConfigError
from groundup.train.interrupt import TrainingInterrupted
from groundup.train.loop import TrainResult, check_out_dir, train
from groundup.train.metrics import plot_loss_curve, read_metrics
from groundup.train.objectives import OBJECTIVES, causal_lm, get_objective, mlm_nsp, seq2seq
from groundup.train.optim import build_optimizer, lr_at, param_groups

__all__ = [
    "OBJECTIVES",
    "Checkpoint",
    "CheckpointError",
    "TrainConfig",
    "TrainConfigError",
    "TrainResult",
    "TrainingInterrupted",
    "build_optimizer",
    "causal_lm",
    "check_out_dir",
    "get_objective",
    "load_checkpoint",
    "lr_at",
    "mlm_nsp",
    "objectives",
    "param_groups",
    "plot_loss_curve",
    "read_metrics",
    "save_checkpoint",
    "seq2seq",
    "train",
]
