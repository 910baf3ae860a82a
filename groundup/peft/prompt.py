"""Soft prompt tuning (Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning").

n trainable "virtual token" embeddings are prepended to the input embeddings; the frozen model reads them
through its ordinary `inputs_embeds=` input, so nothing inside the model knows about prompt tuning.

    ids ─> tok_emb ─┐
    prompt (n, d) ──┴─> cat ─> model(inputs_embeds=..., attention_mask=..., position_ids=...) ─> drop prompt columns

The output keeps only the input tokens' positions, so labels, losses and the training loop are unchanged.

Mixed batches (`adapter_rows`): each row its own prompt, or none. Rows are aligned by padding the prompt zone,
masked out, and each row's positions restart at 0, so every row computes what it would alone:

    decoder (left, cache-friendly):  [pad pad P1 P1 | t t t]    positions 0 1 | 2 3 4
                                     [P2 P2 P2 P2   | t t t]    positions 0 1 2 3 | 4 5 6
    encoder (no position_ids input): [P1 P1 t t t pad pad]      tokens gathered back per row

With a KV cache (generation), the prompt is written during prefill (start == 0); later calls shift `start`,
positions and the attention mask past it, so `groundup.generate` runs a PromptModel unchanged.
"""

from __future__ import annotations

import dataclasses
import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import PeftError, PrefixTuningConfig, PromptTuningConfig


class PromptEmbedding(nn.Module):
    """The virtual tokens of one prompt: weight (n_virtual_tokens, d_model)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self) -> torch.Tensor:
        return self.weight


def token_embedding_name(model: nn.Module) -> str:
    """Name of the model's token embedding (groundup: `embed.tok_emb` or `encoder.embed.tok_emb`)."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Embedding) and n.split(".")[-1] == "tok_emb"]
    if not names:
        raise PeftError(f"{type(model).__name__} has no token embedding named '*tok_emb'; prompt tuning needs one")
    return min(names, key=len)


def init_ids(cfg: PromptTuningConfig | PrefixTuningConfig, tokenizer) -> list[int]:
    """cfg.n_virtual_tokens tokens of cfg.init_text, repeated or cut to fit, as peft's PromptTuningInit.TEXT does
    (init='text' of prompt and prefix tuning)."""
    owner = type(cfg).__name__
    if tokenizer is None:
        raise PeftError(f"{owner}.init='text' needs the tokenizer: inject(model, cfg, tokenizer=tokenizer)")
    ids = tokenizer.encode(cfg.init_text)
    if not ids:
        raise PeftError(f"{owner}.init_text={cfg.init_text!r} encodes to no tokens; give some words")
    n = cfg.n_virtual_tokens
    return (ids * math.ceil(n / len(ids)))[:n]


def init_prompt(cfg: PromptTuningConfig, tok_emb: torch.Tensor, tokenizer=None) -> torch.Tensor:
    """(n, d) start values: random at the embeddings' own scale, or the embeddings of init_text's tokens
    (repeated to fill n, or cut), as peft's PromptTuningInit.TEXT does."""
    n = cfg.n_virtual_tokens
    if cfg.init == "random":
        return torch.randn(n, tok_emb.shape[1], dtype=tok_emb.dtype, device=tok_emb.device) * tok_emb.detach().std()
    ids = init_ids(cfg, tokenizer)
    return tok_emb.detach()[torch.tensor(ids, device=tok_emb.device)].clone()


def nearest_tokens(prompt: nn.Module | torch.Tensor, embedding: nn.Module | torch.Tensor, tokenizer=None,
                   k: int = 1) -> list[list[str]] | list[list[int]]:
    """For each virtual token, the k vocabulary tokens whose embeddings are closest in cosine similarity: a way
    to read a learned prompt (Lester et al. 2021, sec. 7). Returns decoded strings, or ids without a tokenizer."""
    w = prompt.weight if isinstance(prompt, nn.Module) else prompt  # (n, d)
    table = embedding.weight if isinstance(embedding, nn.Module) else embedding  # (V, d)
    sims = F.normalize(w.detach().float(), dim=-1) @ F.normalize(table.detach().float(), dim=-1).T  # (n, V)
    top = sims.topk(k, dim=-1).indices.tolist()
    return top if tokenizer is None else [[tokenizer.decode([i]) for i in row] for row in top]


def _take_columns(out, cols: torch.Tensor, width: int):
    """Keep columns `cols` (B, T) of every (B, width, ...) tensor in the output (a tensor or a dataclass)."""
    def take(t):
        if not isinstance(t, torch.Tensor) or t.dim() < 3 or t.shape[1] != width:
            return t
        index = cols.view(*cols.shape, *([1] * (t.dim() - 2))).expand(*cols.shape, *t.shape[2:])
        return t.gather(1, index)

    if dataclasses.is_dataclass(out):
        return dataclasses.replace(out, **{f.name: take(getattr(out, f.name)) for f in dataclasses.fields(out)})
    return take(out)


class PromptModel(nn.Module):
    """A model plus named soft prompts; forward prepends the active prompt (or each row's, in `adapter_rows`)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.base_model = model
        self.prompts = nn.ModuleDict()
        self.active: str | None = None
        self.disabled = False
        self.rows = None  # a RowPlan inside adapter_rows
        self.embedding_name = token_embedding_name(model)
        # Decided once, from the model's inputs: models that take position_ids (decoders) get the left layout,
        # which a KV cache can extend; others (encoders) get the right layout.
        self.left = "position_ids" in inspect.signature(model.forward).parameters

    @property
    def config(self):
        return self.base_model.config

    def token_embedding(self) -> nn.Embedding:
        return self.base_model.get_submodule(self.embedding_name)

    def adapter_names(self) -> list[str]:
        return list(self.prompts.keys())

    def add_adapter(self, name: str, weight: torch.Tensor) -> None:
        if name in self.prompts:
            raise PeftError(f"prompt {name!r} already exists; pick another adapter_name or delete it first")
        if weight.dim() != 2 or weight.shape[1] != self.token_embedding().embedding_dim:
            raise PeftError(f"a prompt must be (n_virtual_tokens, {self.token_embedding().embedding_dim}); "
                            f"got {tuple(weight.shape)}")
        self.prompts[name] = PromptEmbedding(weight)

    def delete_adapter(self, name: str) -> None:
        del self.prompts[name]
        if self.active == name:
            self.active = None

    def adapter_params(self, name: str) -> dict[str, nn.Parameter]:
        return {"prompt.weight": self.prompts[name].weight}

    # --- layout ---------------------------------------------------------------------------------------------
    def _on(self) -> bool:
        return not self.disabled and (self.rows is not None or self.active in self.prompts)

    def virtual_tokens(self) -> int:
        """Positions the soft prompt takes in front of the input (the widest, in a mixed batch)."""
        if not self._on():
            return 0
        names = self.rows.order if self.rows is not None else (self.active,)
        return max(self.prompts[n].weight.shape[0] for n in names)

    def _codes(self, batch: int, device: torch.device) -> tuple[tuple[str, ...], torch.Tensor]:
        if self.rows is None:
            return (self.active,), torch.ones(batch, dtype=torch.long, device=device)
        self.rows.check(batch, "PromptModel")
        return self.rows.order, self.rows.codes_on(device)

    def _lengths(self, batch: int, device: torch.device) -> tuple[torch.Tensor, int]:
        """Prompt length per row (B,) and the widest."""
        order, codes = self._codes(batch, device)
        sizes = torch.tensor([0] + [self.prompts[n].weight.shape[0] for n in order], device=device)
        lens = sizes[codes]
        return lens, int(sizes.max())

    def _block(self, batch: int, device: torch.device, width: int) -> torch.Tensor:
        """(B, width, d): each row's prompt, right-aligned (left layout) or left-aligned (right layout)."""
        order, codes = self._codes(batch, device)
        d = self.token_embedding().embedding_dim
        ref = self.prompts[order[0]].weight
        padded = [ref.new_zeros(width, d)]
        for name in order:
            w = self.prompts[name].weight
            pad = (0, 0, width - w.shape[0], 0) if self.left else (0, 0, 0, width - w.shape[0])
            padded.append(F.pad(w, pad))
        return torch.stack(padded)[codes]  # one gather: no loop over rows

    def new_cache(self, batch_size: int, max_len: int | None = None, dtype: torch.dtype | None = None):
        """A KV cache for generation with room for the prompt in front (what groundup.generate allocates)."""
        width = self._lengths(batch_size, torch.device("cpu"))[1] if self._on() else 0
        cache = self.base_model.new_cache(batch_size, (max_len or self.config.block_size) + width, dtype)
        cache.peft_offset = width  # forward checks it, so a cache without room for the prompt fails loudly
        return cache

    # --- forward --------------------------------------------------------------------------------------------
    def forward(
        self, input_ids: torch.Tensor | None = None, *, inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None, cache=None, start: int = 0, last_only: bool = False,
    ):
        """The base model's output for the input tokens only (the prompt's columns are dropped)."""
        extra = {k: v for k, v in (("token_type_ids", token_type_ids), ("cache", cache)) if v is not None}
        if last_only:
            extra["last_only"] = True
        if not self._on():
            if self.left:  # a decoder: position_ids and start are its own inputs
                extra.update(position_ids=position_ids, start=start)
            return self.base_model(input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask, **extra)
        ref = input_ids if inputs_embeds is None else inputs_embeds
        lens, width = self._lengths(ref.shape[0], ref.device)
        if cache is not None and getattr(cache, "peft_offset", None) != width:
            raise PeftError("PromptModel needs a KV cache from its own new_cache (room for the prompt in front); got "
                            "one from the base model, or made for other prompts")
        if start > 0:
            return self._decode(input_ids, inputs_embeds, attention_mask, position_ids, lens, width, start, extra)
        return self._prefill(input_ids, inputs_embeds, attention_mask, token_type_ids, position_ids, lens, width, extra)

    def _decode(self, input_ids, inputs_embeds, attention_mask, position_ids, lens, width, start, extra):
        """A call after the prompt is in the cache: shift start, positions and mask past the prompt zone."""
        if not self.left:
            raise PeftError(f"{type(self.base_model).__name__} takes no KV cache; call PromptModel with start=0")
        ref = input_ids if inputs_embeds is None else inputs_embeds
        B, T = ref.shape[:2]
        uniform = bool((lens == width).all())
        if attention_mask is not None or not uniform:
            pmask = torch.arange(width, device=ref.device)[None] >= (width - lens)[:, None]  # (B, width)
            user = attention_mask if attention_mask is not None else torch.ones(B, start + T, device=ref.device)
            attention_mask = torch.cat([pmask.to(user.dtype), user], dim=1)  # (B, width + start + T)
        if position_ids is not None or not uniform:
            pos = position_ids if position_ids is not None else torch.arange(start, start + T, device=ref.device)[None]
            position_ids = pos + lens[:, None]  # (B, T)
        return self.base_model(input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                               position_ids=position_ids, start=start + width, **extra)

    def _prefill(self, input_ids, inputs_embeds, attention_mask, token_type_ids, position_ids, lens, width, extra):
        emb = inputs_embeds if inputs_embeds is not None else self.token_embedding()(input_ids)  # (B, T, d)
        B, T, d = emb.shape
        S, dev = width + T, emb.device
        col = torch.arange(S, device=dev)[None]  # (1, S)
        p_start = (width - lens) if self.left else torch.zeros_like(lens)  # (B,) first prompt column
        t_start = torch.full_like(lens, width) if self.left else lens  # (B,) first token column
        cols = t_start[:, None] + torch.arange(T, device=dev)[None]  # (B, T) token columns
        prompt = F.pad(self._block(B, dev, width).to(emb.dtype), (0, 0, 0, T))  # (B, S, d)
        x = prompt.scatter(1, cols[..., None].expand(B, T, d), emb)  # tokens written into their columns
        uniform = bool((lens == width).all())
        if attention_mask is not None or not uniform:
            pmask = (col >= p_start[:, None]) & (col < (p_start + lens)[:, None])  # (B, S)
            user = attention_mask if attention_mask is not None else torch.ones(B, T, dtype=torch.long, device=dev)
            attention_mask = pmask.to(user.dtype).scatter(1, cols, user)  # (B, S)
        if token_type_ids is not None:
            extra["token_type_ids"] = torch.zeros(B, S, dtype=token_type_ids.dtype, device=dev).scatter(
                1, cols, token_type_ids)
        if not self.left:
            out = self.base_model(inputs_embeds=x, attention_mask=attention_mask, **extra)
            return _take_columns(out, cols, S)
        if position_ids is not None or not uniform:
            p_pos = (col - p_start[:, None]).clamp(min=0)  # (B, S) prompt positions 0..len-1
            t_pos = (position_ids if position_ids is not None else torch.arange(T, device=dev)[None]) + lens[:, None]
            position_ids = p_pos.scatter(1, cols, t_pos.expand(B, T))
        out = self.base_model(inputs_embeds=x, attention_mask=attention_mask, position_ids=position_ids, **extra)
        return _take_columns(out, cols, S)
