"""Small char-level decoders on the bundled Shakespeare corpus, for the attention-variant benchmarks.

One data split (the last 10% of characters is validation, as `groundup pretrain` does), one training
recipe (the one loop, fp32, no evals during training) and one seed, so that models which differ in a
single ModelConfig field see exactly the same batches in the same order.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from groundup.config import preset
from groundup.data import LMData, read_text_corpus, shakespeare_path
from groundup.models.decoder import DecoderLM
from groundup.tokenizer import char_tokenizer
from groundup.train import TrainConfig, train

# ~4 layers, d 128: a few minutes of training on 2 CPU cores.
SHAPE = dict(n_layer=4, n_head=4, d_model=128, dropout=0.0)


@dataclass
class CharCorpus:
    train: np.ndarray  # token ids (int64)
    val: np.ndarray
    vocab_size: int


def char_corpus(val_fraction: float = 0.1) -> CharCorpus:
    """The Shakespeare corpus as char ids, split like prepare_lm_data (last val_fraction is validation)."""
    text = read_text_corpus(shakespeare_path())
    tok = char_tokenizer(text)
    ids = np.asarray(tok.encode(text), dtype=np.int64)
    n_val = int(len(ids) * val_fraction)
    return CharCorpus(ids[: len(ids) - n_val], ids[len(ids) - n_val:], tok.vocab_size)


@dataclass
class Recipe:
    steps: int = 600
    batch_size: int = 16
    block_size: int = 128
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 50
    seed: int = 1337


def build(base: str, corpus: CharCorpus, block_size: int, seed: int, **fields: Any) -> DecoderLM:
    """A decoder from a preset plus overrides; the same seed gives the same init for shared shapes."""
    torch.manual_seed(seed)
    cfg = preset(base, vocab_size=corpus.vocab_size, block_size=block_size, **{**SHAPE, **fields})
    return DecoderLM(cfg)


def train_char_lm(model: DecoderLM, corpus: CharCorpus, recipe: Recipe) -> dict[str, Any]:
    """Train in place with groundup's loop; returns losses and wall seconds. Checkpoints go to a temp dir."""
    data = LMData({"train": corpus.train, "val": corpus.val}, recipe.block_size)
    with tempfile.TemporaryDirectory(prefix="attn_bench_") as out:
        cfg = TrainConfig(out_dir=out, max_steps=recipe.steps, batch_size=recipe.batch_size, lr=recipe.lr,
                          min_lr=recipe.min_lr, warmup_steps=min(recipe.warmup_steps, recipe.steps // 2),
                          beta2=0.99, eval_every=0, ckpt_every=0, dtype="fp32", device="cpu", seed=recipe.seed,
                          log_every=max(1, recipe.steps // 10), progress=False)
        t0 = time.perf_counter()
        result = train(model, "causal_lm", data, cfg)
        seconds = time.perf_counter() - t0
    tail = result.losses[-max(1, len(result.losses) // 10):]
    return {"train_s": seconds, "s_per_step": seconds / recipe.steps, "final_train_loss": sum(tail) / len(tail)}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
