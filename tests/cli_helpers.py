"""What the CLI tests share: `groundup` run in a subprocess, as a user runs it, and the tiny model they run it on."""

from __future__ import annotations

import json
import os
import string
import subprocess
import sys
from pathlib import Path

import torch

from groundup.config import preset
from groundup.models import build_model
from groundup.tokenizer import char_tokenizer
from groundup.train import save_checkpoint


def groundup(*args: str, cwd: Path | None = None, stdin: str | None = None,
             timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "groundup", *args], input=stdin, capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


def char_checkpoint(out: Path, n_layer: int = 1, scale: float = 1.0) -> Path:
    """A tiny random GPT (printable characters + an end-of-text token) saved as a checkpoint at `out`; scale > 1
    makes it livelier than the 0.02-std init, so a few fine-tuning steps move its loss."""
    tok = char_tokenizer(string.printable, special_tokens=["<|endoftext|>"])
    torch.manual_seed(0)
    model = build_model(preset("gpt-tiny", vocab_size=tok.vocab_size, n_layer=n_layer, d_model=32, n_head=4,
                               block_size=64))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    return save_checkpoint(out, model, tokenizer=tok)


def counting_jsonl(out: Path, n: int) -> Path:
    """n instruction records "i + 1 =" -> "i+1" at `out`."""
    out.write_text("".join(json.dumps({"prompt": f"{i} + 1 =", "completion": str(i + 1)}) + "\n" for i in range(n)))
    return out


def hamlet_corpus(out: Path) -> Path:
    """A tiny, learnable text file: one line of Hamlet, 200 times."""
    out.write_text("To be, or not to be, that is the question.\n" * 200)
    return out
