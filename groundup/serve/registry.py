"""The names a request's `model` field may use: the base model, a LoRA (or IA3 / BitFit) adapter, a soft
prompt (vLLM's convention: an adapter is served under its own name), a cascade, the embedding model, and the
speech-recognition model."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch

from ..data.prompt_format import PromptFormat
from ..generate import _cut_at_stop, context_room
from ..tokenizer import Tokenizer
from .cascade import Cascade
from .schema import RequestError

if TYPE_CHECKING:
    from .speech import ServedSpeech


@dataclass(frozen=True)
class Target:
    adapter: str | None = None  # applied to the request's row by peft.adapter_rows
    soft_prompt: torch.Tensor | None = None  # (n_virtual_tokens, d_model)


@dataclass
class CascadeReply:
    text: str
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int  # of the member that answered
    completion_tokens: int
    info: dict  # the response's `groundup` object: member, stage, score, cost (all members asked), tried


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


class ServedCascade:
    """A FrugalGPT cascade (cascade.py) served under one name. Its members run whole models one after another,
    so a request runs on a worker thread (one request per cascade at a time), outside the continuous-batching
    engine, and decodes greedily: the thresholds were set for greedy answers."""

    def __init__(self, cascade: Cascade) -> None:
        self.cascade, self.lock = cascade, threading.Lock()
        self.tokenizer = cascade.members[0].tokenizer  # renders chat messages (the first member's template)

    def answer(self, query: str, max_tokens: int | None, stop: tuple[str, ...], param: str) -> CascadeReply:
        """max_tokens caps every member's max_new_tokens; stop strings cut the answer (not the scored tokens)."""
        members = []
        for m in self.cascade.members:
            try:
                n = len(m.tokenizer.encode(m.template.replace("{query}", query)))
            except ValueError as e:
                raise RequestError(f"'{param}' cannot be tokenized for member {m.name!r}: {e}", param) from None
            if n == 0:
                raise RequestError(f"'{param}' is empty; give at least one token of text", param)
            if n >= context_room(m.model):
                raise RequestError(f"'{param}' is {n} tokens for member {m.name!r}, whose context holds "
                                   f"{context_room(m.model)}; shorten it", param, "context_length_exceeded")
            steps = min(m.generation.max_new_tokens, max_tokens or m.generation.max_new_tokens)
            members.append(replace(m, generation=replace(m.generation, max_new_tokens=steps)))
        with self.lock:
            r = Cascade(members, self.cascade.scorer, self.cascade.thresholds)(query)
        a = r.tried[-1]
        text = _cut_at_stop(a.text, stop)[0]
        full = a.n_output_tokens >= members[r.stage].generation.max_new_tokens
        info = {"member": r.member, "stage": r.stage, "score": _finite(r.score), "cost": r.cost,
                "tried": [{"member": t.member, "score": _finite(s), "cost": t.cost}
                          for t, s in zip(r.tried, r.scores, strict=True)]}
        return CascadeReply(text, "length" if full and text == a.text else "stop", a.n_input_tokens,
                            a.n_output_tokens, info)


@dataclass
class ServedModels:
    base: str | None  # the generating model's name (None: this server only embeds)
    adapters: dict[str, str] = field(default_factory=dict)  # name -> method ("lora", "ia3", "bitfit")
    soft_prompts: dict[str, torch.Tensor] = field(default_factory=dict)
    embedding: str | None = None  # the encoder's name
    cascades: dict[str, ServedCascade] = field(default_factory=dict)
    prompt_formats: dict[str, PromptFormat] = field(default_factory=dict)  # name -> how its fine-tuning prompted
    speech: ServedSpeech | None = None  # the Whisper model of /v1/audio/transcriptions

    def formatted(self, name: str, prompt: str, tokenizer: Tokenizer) -> str:
        """A /v1/completions text prompt to `name` as its fine-tuning run formatted prompts (as given otherwise)."""
        fmt = self.prompt_formats.get(name)
        return fmt.apply(prompt, tokenizer) if fmt is not None else prompt

    def chat_template(self, name: str) -> str | None:
        """The chat template that renders messages to `name` as its fine-tuning did (None: the model's own)."""
        fmt = self.prompt_formats.get(name)
        return fmt.chat_template() if fmt is not None else None

    def names(self) -> list[str]:
        return [n for n in (self.base, *self.adapters, *self.soft_prompts, *self.cascades, self.embedding,
                            self.speech.name if self.speech else None) if n is not None]

    def generation_target(self, name: str) -> Target:
        if name == self.base:
            return Target()
        if name in self.adapters:
            return Target(adapter=name)
        if name in self.soft_prompts:
            return Target(soft_prompt=self.soft_prompts[name])
        if name == self.embedding:
            raise RequestError(f"model {name!r} is an embedding model; use POST /v1/embeddings with it", "model",
                               "model_not_found")
        if self.speech is not None and name == self.speech.name:
            raise RequestError(f"model {name!r} is a speech-recognition model; use POST /v1/audio/transcriptions "
                               "with it", "model", "model_not_found")
        raise RequestError(f"unknown model {name!r}; this server generates with {self.generating()} "
                           "(GET /v1/models lists them)", "model", "model_not_found")

    def generating(self) -> list[str]:
        return [n for n in (self.base, *self.adapters, *self.soft_prompts, *self.cascades) if n is not None]

    def check_speech(self, name: str) -> ServedSpeech:
        if self.speech is None:
            raise RequestError("this server has no speech-recognition model; start it with --asr_model (e.g. "
                               "whisper-tiny.en)", "model", "model_not_found")
        self.speech.check_model(name)
        return self.speech

    def check_embedding(self, name: str) -> None:
        if self.embedding is None:
            raise RequestError("this server has no embedding model; start it with --embedding_model (an encoder, "
                               "e.g. all-minilm-l6-v2)", "model", "model_not_found")
        if name != self.embedding:
            raise RequestError(f"unknown embedding model {name!r}; use {self.embedding!r}", "model",
                               "model_not_found")

    def listing(self, created: int) -> dict:
        def card(name: str, parent: str | None = None) -> dict:
            return {"id": name, "object": "model", "created": created, "owned_by": "groundup", "root": parent or name,
                    "parent": parent}

        data = [card(self.base)] if self.base else []
        data += [card(n, self.base) for n in (*self.adapters, *self.soft_prompts)]
        data += [card(n) | {"members": [m.name for m in c.cascade.members]} for n, c in self.cascades.items()]
        data += [card(self.embedding)] if self.embedding else []
        data += [card(self.speech.name)] if self.speech else []
        return {"object": "list", "data": data}
