"""Text generation with a preallocated KV cache: greedy, temperature, top-k and top-p (nucleus,
Holtzman et al. 2020) sampling, seeds, stop strings, streaming, and batched prompts of different
lengths (left-padded, so every row's next token sits in the same cache slot).

    prompts ─ left-pad ─> prefill (one forward over all prompt tokens, fills the cache)
                            └─> loop: sample ─> forward(one token per row, cache) ─> ...
                                      └─> context full: RoPE / ALiBi slide the window (re-prefill the last
                                          tokens); learned / sinusoidal positions stop (ContextLimitWarning)
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class GenerationConfig:
    max_new_tokens: int = 128
    temperature: float = 1.0  # 0 = greedy
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: Sequence[str] = ()  # stop strings (need a tokenizer: generate_text / stream_text)
    eos_id: int | None = None
    num_beams: int = 1  # > 1: beam search (encoder-decoder models: groundup.generate_seq2seq)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be at least 1")
        if not isinstance(self.num_beams, int) or self.num_beams < 1:
            raise ValueError(f"num_beams={self.num_beams!r} must be a positive integer (1 = no beam search)")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0 (0 = greedy)")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k={self.top_k} must be a positive integer or None")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1] or None")
        if isinstance(self.stop, str):
            self.stop = (self.stop,)


def sample(logits: torch.Tensor, cfg: GenerationConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token ids (B,) from last-position logits (B, V)."""
    if cfg.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / cfg.temperature
    if cfg.top_k is not None and cfg.top_k < logits.shape[-1]:
        kth = logits.topk(cfg.top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p is not None and cfg.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p (the top one always stays).
        drop_sorted = cumulative - sorted_logits.softmax(dim=-1) >= cfg.top_p
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


def _left_pad(prompts: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros(len(prompts), width, dtype=torch.long, device=device)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[row, width - len(p):] = 1
    return ids, mask  # (B, P) each


def context_room(model: nn.Module) -> int:
    """Positions left for prompt + generated tokens: the context less any soft prompt / prefix in front."""
    virtual = model.virtual_tokens() if hasattr(model, "virtual_tokens") else 0
    return model.config.block_size - virtual


class ContextLimitWarning(UserWarning):
    """Generation stopped at the model's context before max_new_tokens (absolute positions cannot slide)."""


def slides_past_context(model: nn.Module) -> bool:
    """Relative positions (RoPE, ALiBi) depend only on distances, so a window of the last tokens re-run from
    position 0 is what the model computes on that text: generation can go on past the context. Learned and
    sinusoidal positions have no position past block_size."""
    return model.config.pos in ("rope", "alibi")


def context_limit_message(model: nn.Module, generated: int, requested: int, prompt_len: int) -> str:
    """Why generation stopped after `generated` of `requested` tokens, and what to do."""
    cfg = model.config
    virtual = cfg.block_size - context_room(model)
    less = f", {virtual} of them taken by virtual tokens" if virtual else ""
    return (f"stopped after {generated} of {requested} tokens: the model's context is {cfg.block_size} "
            f"({cfg.pos} positions{less}) and the prompt takes {prompt_len}; only models with RoPE or ALiBi "
            "positions slide past their context: shorten the prompt or ask for fewer tokens")


def _check_prompts(model: nn.Module, prompts: list[list[int]]) -> int:
    if model.config.arch != "decoder":
        raise ValueError(
            f"generation continues text with a decoder; this model is arch={model.config.arch!r} (an encoder-decoder "
            "decodes with groundup.generate_seq2seq; an encoder does not generate)"
        )
    block = context_room(model)
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token; got an empty prompt")
    longest = max(len(p) for p in prompts)
    if longest >= block:
        raise ValueError(
            f"prompt of {longest} tokens does not fit the model's context ({block} positions: block_size="
            f"{model.config.block_size} less virtual tokens) with room to "
            "generate; shorten the prompt"
        )
    return longest


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Left padding shifts each row's positions: a row's first real token is position 0. (B, T) -> (B, T)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


@torch.inference_mode()
def decode_steps(model: nn.Module, prompts: list[list[int]], cfg: GenerationConfig) -> Iterator[torch.Tensor]:
    """Yield the next token of every row (B,) per step, until max_new_tokens or once every row has produced
    eos_id (rows that finished keep yielding eos_id). At the end of the context, a model with RoPE or ALiBi
    positions slides its window: each further token is predicted from the last context_room tokens, re-run
    into the cache from position 0 (exactly the model on that window, as nanoGPT crops its input). A model
    with absolute positions stops there with a ContextLimitWarning."""
    if cfg.num_beams > 1:
        raise ValueError(f"num_beams={cfg.num_beams}: beam search is for encoder-decoder models here; a decoder "
                         "samples or decodes greedily (num_beams=1, temperature=0 for greedy)")
    model.eval()
    width = _check_prompts(model, prompts)
    device = next(model.parameters()).device
    room = context_room(model)
    slides = slides_past_context(model)
    steps = cfg.max_new_tokens if slides else min(cfg.max_new_tokens, room - width)
    generator = torch.Generator(device=device).manual_seed(cfg.seed) if cfg.seed is not None else None
    ids, mask = _left_pad(prompts, 0, device)
    B, padded = len(prompts), bool((mask == 0).any())
    cache = model.new_cache(B, min(width + steps, room))
    full_mask = torch.cat([mask, mask.new_ones(B, steps)], dim=1) if padded else None  # (B, width + steps)
    seq = torch.cat([ids, ids.new_zeros(B, steps)], dim=1) if slides and width + steps > room else None
    logits = model(ids, position_ids=_positions(mask) if padded else None, attention_mask=mask if padded else None,
                   cache=cache, last_only=True)
    next_pos = mask.sum(-1, keepdim=True)  # (B, 1) position of each row's next token
    done = torch.zeros(B, dtype=torch.bool, device=device)
    for step in range(steps):
        token = sample(logits[:, -1], cfg, generator)  # (B,)
        if cfg.eos_id is not None:
            token = token.masked_fill(done, cfg.eos_id)
            done |= token == cfg.eos_id
        yield token
        finished = cfg.eos_id is not None and bool(done.all())
        if finished or step == steps - 1:
            if not finished and steps < cfg.max_new_tokens:
                warnings.warn(context_limit_message(model, steps, cfg.max_new_tokens, width), ContextLimitWarning,
                              stacklevel=2)
            return
        start = width + step
        if seq is not None:
            seq[:, start] = token
        if start < room:
            logits = model(
                token[:, None], cache=cache, start=start, last_only=True,
                position_ids=next_pos + step if padded else None,
                attention_mask=full_mask[:, : start + 1] if padded else None,
            )
        else:  # the cache is full: re-run the last `room` tokens (the new one included) from position 0
            window = slice(start + 1 - room, start + 1)
            win_mask = full_mask[:, window] if padded else None  # (B, room): left padding, if any, stays in front
            logits = model(seq[:, window], position_ids=_positions(win_mask) if padded else None,
                           attention_mask=win_mask, cache=cache, last_only=True)


def generate(model: nn.Module, prompts: list[list[int]] | list[int], cfg: GenerationConfig) -> list[list[int]]:
    """New token ids for each prompt (a single prompt may be given as one list of ids).
    Tokens after a row's eos_id are cut off; the eos itself is kept."""
    batch = [prompts] if prompts and isinstance(prompts[0], int) else prompts
    steps = list(decode_steps(model, batch, cfg))
    rows = torch.stack(steps, dim=1).tolist() if steps else [[] for _ in batch]
    if cfg.eos_id is not None:
        rows = [r[: r.index(cfg.eos_id) + 1] if cfg.eos_id in r else r for r in rows]
    return rows


def _cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    hits = [text.index(s) for s in stop if s in text]
    return (text[: min(hits)], True) if hits else (text, False)


def _partial_stop(text: str, stop: Sequence[str]) -> int:
    """Length of the longest end of text that is the beginning of a stop string."""
    return max((n for s in stop for n in range(1, len(s)) if text.endswith(s[:n])), default=0)


def stream_text(model: nn.Module, tokenizer, prompt: str | list[int], cfg: GenerationConfig) -> Iterator[str]:
    """Yield the completion of one prompt (text, or its token ids) piece by piece as it is generated. Text that
    might be the start of a stop string, or an incomplete UTF-8 character, is held back until it is resolved."""
    if cfg.eos_id is None and tokenizer.eos_id is not None:
        cfg = GenerationConfig(**{**cfg.__dict__, "eos_id": tokenizer.eos_id})
    tokens: list[int] = []
    sent = 0
    for token in decode_steps(model, [tokenizer.encode(prompt) if isinstance(prompt, str) else prompt], cfg):
        if cfg.eos_id is not None and int(token[0]) == cfg.eos_id:
            break
        tokens.append(int(token[0]))
        text, stopped = _cut_at_stop(tokenizer.decode(tokens), cfg.stop)
        if stopped:
            yield text[sent:]
            return
        safe = len(text) - _partial_stop(text, cfg.stop) - text.endswith("\ufffd")
        if safe > sent:
            yield text[sent:safe]
            sent = safe
    yield _cut_at_stop(tokenizer.decode(tokens), cfg.stop)[0][sent:]


def generate_text(model: nn.Module, tokenizer, prompts: list[str] | str, cfg: GenerationConfig) -> list[str] | str:
    """Completions for one prompt (returns a str) or a batch (returns a list), cut at stop strings."""
    if cfg.eos_id is None and tokenizer.eos_id is not None:
        cfg = GenerationConfig(**{**cfg.__dict__, "eos_id": tokenizer.eos_id})
    batch = [prompts] if isinstance(prompts, str) else prompts
    rows = generate(model, [tokenizer.encode(p) for p in batch], cfg)
    texts = [_cut_at_stop(tokenizer.decode([t for t in r if t != cfg.eos_id]), cfg.stop)[0] for r in rows]
    return texts[0] if isinstance(prompts, str) else texts
