"""What the commands that run a model share: loading it in --dtype, attaching an adapter for decoding, and the
prompt format a groundup fine-tuning run recorded."""

from __future__ import annotations

import sys

import torch

from .. import runtime
from ..data.prompt_format import PromptFormat, inference_prompt_format
from ..finetune import attach_adapter, merge_for_inference
from ..loading import load_pretrained
from ..nn.packed_linear import pack_for_inference
from ..peft.api import SWAP_LAYERS
from ..tokenizer import Tokenizer


def load_for_inference(model: str, dtype: str) -> tuple[torch.nn.Module, Tokenizer | None]:
    """load_pretrained in --dtype (auto: the fastest here), saying on stderr what auto chose."""
    name = runtime.resolve_dtype(dtype, "cpu", "infer", "--dtype")
    print(runtime.dtype_note(dtype, name), file=sys.stderr, flush=True)
    return load_pretrained(model, runtime.DTYPES[name])


def for_decoding(model: torch.nn.Module, adapter: str | None) -> torch.nn.Module:
    """The model with `adapter` attached and folded in where it can be (in memory), packed for decoding unless
    adapter layers are left (they read their weights directly)."""
    if adapter:
        model = merge_for_inference(attach_adapter(model, adapter))
    if not any(isinstance(m, SWAP_LAYERS) for m in model.modules()):
        pack_for_inference(model)
    return model


def announced_prompt_format(model: str, adapter: str | None, raw_prompt: bool) -> PromptFormat | None:
    """How the groundup fine-tuning run behind --adapter (or --model) formatted its prompts (its prompt_format.json),
    said on stderr; None with --raw_prompt or for a model not fine-tuned here (prompts are used as given)."""
    fmt = None if raw_prompt else inference_prompt_format(model, adapter)
    if fmt is not None:
        print(f"prompts formatted as in fine-tuning: {fmt.describe()} (prompt_format.json; --raw_prompt turns this "
              "off)", file=sys.stderr, flush=True)
    return fmt
