"""The names a request's `model` field may use: the base model, a LoRA (or IA3 / BitFit) adapter, a soft
prompt (vLLM's convention: an adapter is served under its own name), and the embedding model."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .schema import RequestError


@dataclass(frozen=True)
class Target:
    adapter: str | None = None  # applied to the request's row by peft.adapter_rows
    soft_prompt: torch.Tensor | None = None  # (n_virtual_tokens, d_model)


@dataclass
class ServedModels:
    base: str | None  # the generating model's name (None: this server only embeds)
    adapters: dict[str, str] = field(default_factory=dict)  # name -> method ("lora", "ia3", "bitfit")
    soft_prompts: dict[str, torch.Tensor] = field(default_factory=dict)
    embedding: str | None = None  # the encoder's name

    def names(self) -> list[str]:
        return [n for n in (self.base, *self.adapters, *self.soft_prompts, self.embedding) if n is not None]

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
        raise RequestError(f"unknown model {name!r}; this server generates with {self.generating()} "
                           "(GET /v1/models lists them)", "model", "model_not_found")

    def generating(self) -> list[str]:
        return [n for n in (self.base, *self.adapters, *self.soft_prompts) if n is not None]

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
        data += [card(self.embedding)] if self.embedding else []
        return {"object": "list", "data": data}
