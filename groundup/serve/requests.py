"""What travels between the web app and the engine thread: requests in, events out.

The app builds a GenerationRequest (token ids, sampling parameters, adapter) and hands the engine an `emit`
callback that is safe to call from the engine thread; the engine reports text as it becomes final
(TextStream holds back what may still turn into a stop string or an incomplete UTF-8 character) and ends
every request with exactly one event whose `finish_reason` or `error` is set.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..generate import GenerationConfig, _cut_at_stop, _partial_stop


@dataclass
class Event:
    text: str = ""
    finish_reason: str | None = None  # "stop" | "length" once the request is done
    error: str | None = None  # set instead of finish_reason when the request failed
    error_type: str = "server_error"
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    config: GenerationConfig  # max_new_tokens, temperature, top_k, top_p, seed, stop, eos_id
    emit: Callable[[Event], None]
    adapter: str | None = None  # a LoRA (or IA3 / BitFit) adapter name, applied to this row only
    soft_prompt: torch.Tensor | None = None  # (n_virtual_tokens, d_model) prepended to the prompt
    deadline: float = float("inf")  # time.monotonic() after which the engine gives up on it
    cancelled: threading.Event = field(default_factory=threading.Event)
    created: float = field(default_factory=time.monotonic)
    images: torch.Tensor | None = None  # a vision-language model's image features (n, 1 + N, d), in marker order

    @property
    def length(self) -> int:
        """Cache columns the prompt takes (soft prompt included)."""
        extra = 0 if self.soft_prompt is None else self.soft_prompt.shape[0]
        return len(self.prompt_ids) + extra

    def generator(self, device: torch.device) -> torch.Generator | None:
        seed = self.config.seed
        return None if seed is None else torch.Generator(device=device).manual_seed(seed)


@dataclass
class EmbeddingRequest:
    texts: list[str]
    emit: Callable[[Event | torch.Tensor], None]  # the (N, d) embeddings, or an error Event
    cancelled: threading.Event = field(default_factory=threading.Event)
    deadline: float = float("inf")


class TextStream:
    """Token ids in, final text out: the same rules as groundup.generate.stream_text, one token at a time."""

    def __init__(self, tokenizer, stop: Sequence[str]) -> None:
        self.tokenizer, self.stop = tokenizer, tuple(stop)
        self.tokens: list[int] = []
        self.sent = 0

    def push(self, token: int) -> tuple[str, bool]:
        """(new text that is final, whether a stop string ended the completion)."""
        self.tokens.append(token)
        text, stopped = _cut_at_stop(self.tokenizer.decode(self.tokens), self.stop)
        if stopped:
            return self._take(len(text), text), True
        safe = len(text) - _partial_stop(text, self.stop) - text.endswith("\ufffd")
        return (self._take(safe, text) if safe > self.sent else ""), False

    def flush(self) -> str:
        """The held-back rest when the completion ends without a stop string."""
        text = _cut_at_stop(self.tokenizer.decode(self.tokens), self.stop)[0]
        return self._take(len(text), text)

    def _take(self, upto: int, text: str) -> str:
        piece = text[self.sent : upto]
        self.sent = max(self.sent, upto)
        return piece
