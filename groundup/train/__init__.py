"""groundup.train: one training loop for every objective, plus its parts.

    from groundup.train import TrainConfig, train
    result = train(model, "causal_lm", data, TrainConfig(out_dir="out", max_steps=200))
"""

from groundup.lazy import lazy_exports

__all__ = ["objectives", *lazy_exports(__name__, {  # objectives: the module itself
    ".checkpoint": "Checkpoint CheckpointError load_checkpoint save_checkpoint",
    ".config": "TrainConfig TrainConfigError",
    ".interrupt": "TrainingInterrupted",
    ".loop": "TrainResult check_out_dir train",
    ".metrics": "plot_loss_curve read_metrics",
    ".objectives": "OBJECTIVES causal_lm get_objective mlm_nsp seq2seq",
    ".optim": "build_optimizer lr_at param_groups",
})]
