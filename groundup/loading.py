"""load_pretrained: one entry point for every checkpoint a user may have.

    groundup checkpoint dir  (config.json in ModelConfig form + model.safetensors + tokenizer.json)
    Hugging Face dir         (config.json with model_type + *.safetensors + tokenizer files)
    GGUF file                (*.gguf: weights, tokenizer and chat template in one file)
    hub id                   ("org/name": downloaded with huggingface_hub, when the hub is reachable)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .tokenizer import Tokenizer, load_tokenizer


def _is_groundup_checkpoint(path: Path) -> bool:
    config = path / "config.json"
    return config.is_file() and "model_type" not in json.loads(config.read_text())


def load_pretrained(path_or_id: str | Path, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, Tokenizer | None]:
    """(model in eval mode, tokenizer or None) from a local path or a hub id."""
    path = Path(path_or_id)
    if path.is_dir() and _is_groundup_checkpoint(path):
        from .train.checkpoint import load_checkpoint

        model = load_checkpoint(path).model
        tokenizer = load_tokenizer(path) if (path / "tokenizer.json").is_file() else None
    elif path.is_dir():
        from .interop.hf import load_hf

        model, tokenizer = load_hf(path)
    elif path.suffix == ".gguf" and path.is_file():
        from .interop.gguf import load_gguf

        model, tokenizer, _ = load_gguf(path)
    elif not path.exists() and str(path_or_id).count("/") == 1 and not str(path_or_id).startswith((".", "/")):
        from .interop.hf import from_hub

        model, tokenizer = from_hub(str(path_or_id))
    else:
        raise FileNotFoundError(
            f"{path_or_id}: not a checkpoint directory, a .gguf file or a hub id (org/name); "
            "pass a groundup checkpoint (e.g. runs/quickstart/ckpt), a Hugging Face model folder or a GGUF file"
        )
    return model.to(dtype).eval(), tokenizer
