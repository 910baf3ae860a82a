"""Prefix tuning (Li & Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation").

Every attention layer gets P trainable key/value vectors that all queries attend to. They enter through the
model's own KV cache input: written into a fresh cache at positions 0..P-1, then the model runs with
`cache=..., start=P`. The causal mask with a cache offset lets every query see the whole prefix, positions
start at P (as in Hugging Face, where the prefix is `past_key_values`), and gradients reach the prefixes
through the cache write.

    training:  embedding (P, d) ─> Linear ─> tanh ─> Linear ─> (n_layer, 2, Hkv, P, D)   (the reparameterisation)
               or the (n_layer, 2, Hkv, P, D) tensors themselves, from noise or from words (text_prefix)
    saved:     (n_layer, 2, Hkv, P, D) plain tensors                                      (folded)

The layout, positions and masking are peft's (tests/test_prefix_oracle.py: the same prefix gives the same logits
through peft on the Hugging Face export). A prefix from noise (peft's N(0, 1), or either MLP's start) is context
the model has never seen: on SmolLM2-135M the loss starts near 10 or 5 and stalls near 2, for peft and groundup
alike, where a start from the model's own keys and values of a few words (init='text') starts near the model's
own 4.5 and keeps falling (bench/prefix_vs_peft.py, docs/finetune_methods.md).

    prefix ─> cache.update(layer, 0, k_l, v_l) for every layer ─> model(ids, cache=cache, start=P)
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from .config import PeftError


class PrefixEncoder(nn.Module):
    """Produces one prefix: (n_layer, 2, n_kv_head, P, head_dim), via the MLP (hidden set) or directly."""

    def __init__(self, n_layer: int, n_kv_head: int, head_dim: int, d_model: int, n_virtual: int,
                 hidden: int | None, dtype: torch.dtype, device: torch.device, start: torch.Tensor | None = None,
                 ) -> None:
        super().__init__()
        self.shape = (n_layer, 2, n_kv_head, n_virtual, head_dim)
        self.n_virtual = n_virtual
        if hidden is None:
            value = torch.randn(self.shape, dtype=dtype, device=device) * 0.02 if start is None else start.clone()
            self.prefix = nn.Parameter(value.to(dtype=dtype, device=device))
            self.embedding, self.mlp = None, None
            return
        self.prefix = None
        self.embedding = nn.Parameter(torch.randn(n_virtual, d_model, dtype=dtype, device=device) * 0.02)
        out = n_layer * 2 * n_kv_head * head_dim
        self.mlp = nn.Sequential(
            nn.Linear(d_model, hidden, device=device, dtype=dtype), nn.Tanh(),
            nn.Linear(hidden, out, device=device, dtype=dtype),
        )

    def forward(self) -> torch.Tensor:
        if self.mlp is None:
            return self.prefix
        L, _, H, _, D = self.shape
        return prefix_from_flat(self.mlp(self.embedding), L, H, D)  # (P, L * 2 * H * D) -> (L, 2, H, P, D)

    def fold(self) -> None:
        """Replace the reparameterisation by the prefix tensors it currently produces (same outputs)."""
        if self.mlp is None:
            return
        with torch.no_grad():
            value = self().detach().clone().contiguous()
        self.embedding, self.mlp = None, None
        self.prefix = nn.Parameter(value)


def text_prefix(model: nn.Module, ids: list[int]) -> torch.Tensor:
    """The keys and values `model` computes for the tokens `ids` at positions 0..P-1 (P = len(ids)):
    (n_layer, 2, Hkv, P, D). As a prefix, they make the input read as if those words came first."""
    ref = next(model.parameters())
    P = len(ids)
    cache = model.new_cache(1, P, ref.dtype)
    with torch.no_grad():
        model(torch.tensor([ids], device=ref.device), cache=cache, start=0)
    layers = [torch.stack([k[0, :, :P], v[0, :, :P]]) for k, v in zip(cache.k, cache.v, strict=True)]
    return torch.stack(layers)  # (n_layer, 2, Hkv, P, D)


def prefix_from_flat(kv: torch.Tensor, n_layer: int, n_kv_head: int, head_dim: int) -> torch.Tensor:
    """(P, n_layer * 2 * Hkv * D), the flat per-token layout of peft's prefix (and of the MLP's output), ->
    (n_layer, 2, Hkv, P, D)."""
    return kv.view(kv.shape[0], n_layer, 2, n_kv_head, head_dim).permute(1, 2, 3, 0, 4)


def prefix_to_flat(prefix: torch.Tensor) -> torch.Tensor:
    """(n_layer, 2, Hkv, P, D) -> (P, n_layer * 2 * Hkv * D): prefix_from_flat's inverse."""
    return prefix.permute(3, 0, 1, 2, 4).reshape(prefix.shape[3], -1)


class PrefixModel(nn.Module):
    """A decoder plus named key/value prefixes; forward and new_cache put the active prefix in front."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        params = inspect.signature(model.forward).parameters
        if not hasattr(model, "new_cache") or "cache" not in params or "start" not in params:
            raise PeftError(
                f"prefix tuning enters through a KV cache, and {type(model).__name__} takes none (forward has no "
                "cache/start inputs); use it on a DecoderLM, or use PromptTuningConfig / LoraConfig for this model"
            )
        mixer = getattr(model.config, "mixer", "attention")
        if mixer != "attention":
            raise PeftError(f"prefix tuning puts keys and values in front of attention's; this model's mixer is "
                            f"{mixer!r}, which reads none: use PromptTuningConfig or LoraConfig")
        self.base_model = model
        self.prefixes = nn.ModuleDict()
        self.active: str | None = None
        self.disabled = False
        self.rows = None

    @property
    def config(self):
        return self.base_model.config

    def adapter_names(self) -> list[str]:
        return list(self.prefixes.keys())

    def add_adapter(self, name: str, n_virtual: int, hidden: int | None, start: torch.Tensor | None = None) -> None:
        """A new prefix; `start` (n_layer, 2, Hkv, n_virtual, D) sets its first value (hidden must be None)."""
        if name in self.prefixes:
            raise PeftError(f"prefix {name!r} already exists; pick another adapter_name or delete it first")
        cfg = self.base_model.config
        ref = next(self.base_model.parameters())
        self.prefixes[name] = PrefixEncoder(
            cfg.n_layer, cfg.n_kv_head, cfg.head_dim, cfg.d_model, n_virtual, hidden, ref.dtype, ref.device, start
        )

    def delete_adapter(self, name: str) -> None:
        del self.prefixes[name]
        if self.active == name:
            self.active = None

    def adapter_params(self, name: str) -> dict[str, nn.Parameter]:
        return {f"prefix.{k}" if k != "prefix" else k: p for k, p in self.prefixes[name].named_parameters()}

    def export_state(self, name: str) -> dict[str, torch.Tensor]:
        """The folded prefix (what a saved adapter holds): {'prefix': (n_layer, 2, Hkv, P, D)}."""
        return {"prefix": self.prefixes[name]().detach().clone().contiguous()}

    def fold(self, name: str | None = None) -> None:
        """Fold the reparameterisation MLP of `name` (default: the active prefix) into plain prefix tensors."""
        self.prefixes[name or self.active].fold()

    def _on(self) -> bool:
        if self.rows is not None:
            raise PeftError("adapter_rows does not support prefix tuning (one prefix per batch); use LoRA or prompts")
        return not self.disabled and self.active in self.prefixes

    def virtual_tokens(self) -> int:
        """Positions the active prefix takes in front of the input."""
        return self.prefixes[self.active].n_virtual if self._on() else 0

    def new_cache(self, batch_size: int, max_len: int | None = None, dtype: torch.dtype | None = None):
        """A KV cache with the active prefix already written at positions 0..P-1 (what groundup.generate uses)."""
        P = self.virtual_tokens()
        cache = self.base_model.new_cache(batch_size, (max_len or self.config.block_size) + P, dtype)
        if P:
            kv = self.prefixes[self.active]().to(cache.k[0].dtype)  # (L, 2, Hkv, P, D)
            for layer in range(kv.shape[0]):
                k = kv[layer, 0].expand(batch_size, *kv.shape[2:])  # (B, Hkv, P, D)
                cache.update(layer, 0, k, kv[layer, 1].expand(batch_size, *kv.shape[2:]))
        cache.peft_offset = P  # forward checks it: a cache without the prefix would give silently wrong output
        return cache

    def forward(
        self, input_ids: torch.Tensor | None = None, *, inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
        cache=None, start: int = 0, last_only: bool = False,
    ) -> torch.Tensor:
        """Logits for the input tokens. Without a cache a fresh one holding the prefix is made (training);
        a cache passed in must come from this model's new_cache (it already holds the prefix)."""
        P = self.virtual_tokens()
        if P == 0:
            return self.base_model(input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                   position_ids=position_ids, cache=cache, start=start, last_only=last_only)
        ref = input_ids if inputs_embeds is None else inputs_embeds
        B, T = ref.shape[:2]
        if cache is None:
            if start:
                raise PeftError("PrefixModel: start > 0 needs the cache it refers to (from PrefixModel.new_cache)")
            cache = self.new_cache(B, T)
        elif getattr(cache, "peft_offset", None) != P:
            raise PeftError("PrefixModel needs a KV cache from its own new_cache (it holds the prefix); got one from "
                            "the base model or another adapter")
        if attention_mask is not None:
            ones = torch.ones(B, P, dtype=attention_mask.dtype, device=attention_mask.device)
            attention_mask = torch.cat([ones, attention_mask], dim=1)  # (B, P + start + T)
        if position_ids is not None:
            position_ids = position_ids + P
        return self.base_model(input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                               position_ids=position_ids, cache=cache, start=start + P, last_only=last_only)
