"""Tiny models + in-memory data for the training tests, and the torchrun worker of tests/test_ddp.py.

As a worker (`python -m torch.distributed.run --nproc_per_node=2 --standalone tests/ddp_worker.py OUT_DIR`)
it trains a causal LM (grad_accum=2: exercises no_sync; train() creates the process group), then
an MLM+NSP encoder in the same process (uneven mask counts per rank: exercises the global loss
normalization; the group is reused, destroyed at exit), and rank 0 writes both loss lists to
OUT_DIR/losses.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

from groundup.config import preset
from groundup.models import build_model
from groundup.train import TrainConfig, train

VOCAB = 32
SEQ = 8


def tiny_lm(dropout: float = 0.0, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(
        preset("gpt-tiny", vocab_size=VOCAB, block_size=16, n_layer=2, n_head=2, d_model=32, dropout=dropout)
    )


def tiny_bert(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(preset("bert-tiny", vocab_size=VOCAB, block_size=16, n_layer=1, n_head=2, d_model=32, d_ff=64))


class LMStream:
    """Random windows of a fixed token stream per split (labels shifted by one). Randomness: only `generator`."""

    def __init__(self, n_tokens: int = 512, seq: int = SEQ, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        # A learnable stream: mostly a repeating pattern with some noise.
        base = torch.arange(n_tokens) % 7
        noise = torch.randint(0, VOCAB, (n_tokens,), generator=g)
        stream = torch.where(torch.rand(n_tokens, generator=g) < 0.2, noise, base)
        self.splits = {"train": stream[: n_tokens * 3 // 4], "val": stream[n_tokens * 3 // 4 :]}
        self.seq = seq
        self.calls = {"train": 0, "val": 0}

    def get_batch(self, split: str, batch_size: int, generator: torch.Generator) -> dict[str, Tensor]:
        self.calls[split] += 1
        s = self.splits[split]
        starts = torch.randint(0, len(s) - self.seq - 1, (batch_size,), generator=generator)
        rows = torch.stack([s[i : i + self.seq + 1] for i in starts.tolist()])  # (B, T+1)
        return {"input_ids": rows[:, :-1].clone(), "labels": rows[:, 1:].clone()}


class MLMRandom:
    """MLM + NSP batches of random tokens; the number of masked targets differs from row to row."""

    def get_batch(self, split: str, batch_size: int, generator: torch.Generator) -> dict[str, Tensor]:
        ids = torch.randint(4, VOCAB, (batch_size, SEQ), generator=generator)
        selected = torch.rand(batch_size, SEQ, generator=generator) < 0.3
        selected[:, 0] = True  # at least one target per row
        labels = torch.where(selected, ids, -100)
        inputs = torch.where(selected, 3, ids)  # id 3 plays [MASK]
        return {
            "input_ids": inputs,
            "token_type_ids": (torch.arange(SEQ) >= SEQ // 2).long().expand(batch_size, SEQ).contiguous(),
            "attention_mask": torch.ones(batch_size, SEQ, dtype=torch.long),
            "labels": labels,
            "nsp_labels": torch.randint(0, 2, (batch_size,), generator=generator),
        }


def lm_config(out_dir: str | Path, grad_accum: int) -> TrainConfig:
    return TrainConfig(
        out_dir=str(out_dir), max_steps=5, batch_size=8, grad_accum=grad_accum, lr=3e-3, min_lr=3e-4,
        warmup_steps=2, eval_every=5, eval_batches=2, ckpt_every=0, dtype="fp32", progress=False, log_every=5,
    )


def mlm_config(out_dir: str | Path) -> TrainConfig:
    return TrainConfig(
        out_dir=str(out_dir), max_steps=4, batch_size=8, grad_accum=1, lr=3e-3, min_lr=3e-4,
        warmup_steps=1, eval_every=0, ckpt_every=0, dtype="fp32", progress=False, log_every=4,
    )


def run_lm(out_dir: Path, grad_accum: int) -> dict[str, list[float] | float | None]:
    lm = train(tiny_lm(), "causal_lm", LMStream(), lm_config(out_dir / "lm", grad_accum))
    return {"lm": lm.losses, "lm_val": lm.val_loss}


def run_mlm(out_dir: Path) -> dict[str, list[float]]:
    return {"mlm": train(tiny_bert(), "mlm_nsp", MLMRandom(), mlm_config(out_dir / "mlm")).losses}


def run_all(out_dir: Path, lm_grad_accum: int) -> dict[str, list[float] | float | None]:
    return {**run_lm(out_dir, lm_grad_accum), **run_mlm(out_dir)}


def main() -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    out_dir = Path(sys.argv[1])
    result = run_lm(out_dir, grad_accum=2)  # train() creates the process group from torchrun's env,
    result["group_kept_for_reuse"] = dist.is_initialized()  # keeps it (destroyed at exit) ...
    result.update(run_mlm(out_dir))  # ... and a second train() in the same process reuses it
    result["world_size"] = dist.get_world_size()
    if dist.get_rank() == 0:
        (out_dir / "losses.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
