"""What each CLI subcommand runs: a job dataclass and the library call it maps to."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .data import read_text_corpus
from .eval import text_perplexity
from .generate import GenerationConfig, stream_text
from .loading import load_pretrained
from .pretrain import PretrainJob, pretrain
from .quickstart import QuickstartJob, quickstart

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class GenerateJob:
    model: str = "runs/quickstart/ckpt"  # checkpoint dir, HF dir, .gguf file or hub id
    prompt: str = "\n"
    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int | None = 50
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    dtype: str = "fp32"


def generate_cli(job: GenerateJob) -> None:
    """Generate text from a prompt, streamed to stdout as it is produced."""
    model, tok = load_pretrained(job.model, DTYPES[job.dtype])
    cfg = GenerationConfig(
        max_new_tokens=job.max_new_tokens, temperature=job.temperature, top_k=job.top_k, top_p=job.top_p,
        seed=job.seed, stop=tuple(job.stop),
    )
    sys.stdout.write(job.prompt)
    for piece in stream_text(model, tok, job.prompt, cfg):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


@dataclass
class EvalJob:
    model: str = "runs/quickstart/ckpt"
    data: str = ""  # a UTF-8 text file
    stride: int | None = None  # sliding-window step (default: the model's context, no overlap)
    dtype: str = "fp32"


def eval_cli(job: EvalJob) -> dict[str, float]:
    """Perplexity (and nats / bits per character) of a model on a text file."""
    if not job.data:
        raise ValueError("--data is missing; give a text file, e.g. --data=held_out.txt")
    model, tok = load_pretrained(job.model, DTYPES[job.dtype])
    result = text_perplexity(model, tok, read_text_corpus(Path(job.data)), job.stride)
    print(
        f"{job.data}: {result['tokens']} tokens, loss {result['nll']:.4f} nats/token, perplexity {result['ppl']:.3f}, "
        f"{result['nats_per_char']:.4f} nats/char ({result['bits_per_char']:.4f} bits/char)"
    )
    return result


COMMANDS = {
    "quickstart": (QuickstartJob, quickstart, """
  groundup quickstart                         # ~3 minutes on 2 CPU cores
  groundup quickstart --max_steps=500 --out_dir=runs/qs-short
"""),
    "pretrain": (PretrainJob, pretrain, """
  groundup pretrain --config configs/gpt-shakespeare-char.yaml
  groundup pretrain --config configs/bert-mini-mlm.yaml --train.max_steps=200
  groundup pretrain --config configs/transformer-reversal.yaml
  torchrun --nproc_per_node=2 -m groundup pretrain --config configs/gpt-tiny.yaml
"""),
    "generate": (GenerateJob, generate_cli, """
  groundup generate --model runs/quickstart/ckpt --prompt "ROMEO:" --max_new_tokens 300 --seed 1
  groundup generate --model runs/quickstart/ckpt --prompt "KING:" --temperature 0 --stop "[QUEEN, ROMEO]"
"""),
    "eval": (EvalJob, eval_cli, """
  groundup eval --model runs/quickstart/ckpt --data held_out.txt
"""),
}
