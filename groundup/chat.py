"""Chat templates and multi-turn chat.

A chat model is trained on conversations written in a fixed markup (SmolLM2 uses ChatML:
`<|im_start|>user\\n...<|im_end|>\\n`). Checkpoints ship that markup as a Jinja template
(`tokenizer.chat_template` in a GGUF, `chat_template` in tokenizer_config.json); it is rendered
here exactly as Hugging Face transformers renders it (sandboxed Jinja, trim_blocks, lstrip_blocks,
a `raise_exception` helper), so the prompt is the one the model was fine-tuned on.

    Chat.reply(text) ─> history + user turn ─ trim oldest turns to fit ─> render template
        ─> stream_text (stops at eos / end of turn) ─> yield pieces ─> history + assistant turn
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from torch import nn

from .generate import GenerationConfig, stream_text
from .tokenizer import Tokenizer

__all__ = ["CHAT_TEMPLATES", "ChatTemplateError", "apply_chat_template", "chat_template_from", "Chat"]

# Templates by name, for models that ship none (a character model, a base model fine-tuned here).
CHAT_TEMPLATES = {
    "chatml": ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
               "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"),
    "plain": ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
              "{% if add_generation_prompt %}assistant:{% endif %}"),
}


class ChatTemplateError(ValueError):
    """A chat template failed to compile or render, or the messages are malformed."""


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    # Jinja's own tojson escapes HTML characters; templates expect plain JSON (as in transformers).
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise ChatTemplateError(f"the chat template does not compile: {e} (line {e.lineno})") from e


def _check_messages(messages: list[dict]) -> None:
    if not isinstance(messages, list) or not messages:
        raise ChatTemplateError(f"messages must be a non-empty list of {{'role', 'content'}} dicts, got {messages!r}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ChatTemplateError(
                f"messages[{i}]={m!r} must be a dict with string 'role' (system/user/assistant) and 'content'"
            )


def apply_chat_template(
    template: str, messages: list[dict], add_generation_prompt: bool = True, bos_token: str = "",
    eos_token: str = "",
) -> str:
    """The prompt text for `messages` ([{"role": ..., "content": ...}, ...]) in the model's markup.
    With `add_generation_prompt` the text ends with the header of an assistant turn, ready to generate."""
    if not isinstance(template, str) or not template.strip():
        raise ChatTemplateError(
            "the chat template is empty; pass the model's template (e.g. metadata['tokenizer.chat_template'])"
        )
    _check_messages(messages)
    try:
        return _compile(template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, bos_token=bos_token, eos_token=eos_token,
        )
    except jinja2.exceptions.TemplateError as e:
        raise ChatTemplateError(f"the chat template refused these messages: {e}") from e


def chat_template_from(spec: str, flag: str = "template") -> str:
    """The Jinja text of a chat template given by name (CHAT_TEMPLATES) or as the path of a Jinja file, compiled
    here so that a bad one is refused before a model loads; errors name `flag` (the CLI passes "--template")."""
    if spec in CHAT_TEMPLATES:
        return CHAT_TEMPLATES[spec]
    path = Path(spec)
    if not path.is_file():
        raise ChatTemplateError(f"{flag} {spec!r} is neither a template name ({', '.join(sorted(CHAT_TEMPLATES))}) "
                                f"nor a Jinja file; pass one of those names or the path of a .jinja file")
    try:
        text = path.read_text(encoding="utf-8")
        _compile(text)
    except (UnicodeDecodeError, ChatTemplateError) as e:
        raise ChatTemplateError(f"{flag} {spec!r}: {e}") from None
    if not text.strip():
        raise ChatTemplateError(f"{flag} {spec!r}: the file is empty; write a Jinja chat template in it")
    return text


class Chat:
    """A conversation with a chat model: keeps the history, streams each reply, and drops the oldest
    turns (never the system message) so that prompt + max_new_tokens fits the context window."""

    def __init__(
        self, model: nn.Module, tokenizer: Tokenizer, template: str | None = None, system: str | None = None,
        end_of_turn: Sequence[str] = ("<|im_end|>",), encode: Callable[[str], list[int]] | None = None,
    ) -> None:
        """encode: prompt text -> token ids (default: the tokenizer's; a vision-language model's also turns its
        <image> markers into image tokens)."""
        template = template or tokenizer.chat_template
        if not template:
            raise ChatTemplateError(
                "this model ships no chat template; pass one (groundup chat --template chatml, a name of "
                f"{sorted(CHAT_TEMPLATES)} or a Jinja file; Chat(template=...) in Python) or use a chat/instruct model"
            )
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.encode = encode or tokenizer.encode
        self.end_of_turn = tuple(end_of_turn)
        self.history: list[dict[str, str]] = [{"role": "system", "content": system}] if system is not None else []
        token = lambda i: tokenizer.id_to_token(i) if i is not None else None
        self._bos, self._eos = token(tokenizer.bos_id) or "", token(tokenizer.eos_id) or ""

    def prompt(self, add_generation_prompt: bool = True) -> str:
        """The history rendered with the chat template."""
        return apply_chat_template(self.template, self.history, add_generation_prompt, self._bos, self._eos)

    def fit(self, history: list[dict[str, str]], max_new_tokens: int) -> tuple[list[dict[str, str]], str]:
        """(history without its oldest user/assistant turns, prompt) such that the prompt leaves room
        for max_new_tokens in the context window. The system message and the last message stay."""
        block = self.model.config.block_size
        if max_new_tokens >= block:
            raise ValueError(f"max_new_tokens={max_new_tokens} must be smaller than the context window ({block})")
        first = 1 if history and history[0]["role"] == "system" else 0
        history = list(history)
        while True:
            prompt = apply_chat_template(self.template, history, True, self._bos, self._eos)
            n = len(self.encode(prompt))
            if n + max_new_tokens <= block:
                return history, prompt
            if len(history) - first <= 1:  # only the new message is left
                raise ValueError(
                    f"the prompt takes {n} tokens even with every earlier turn dropped; with max_new_tokens="
                    f"{max_new_tokens} that exceeds the context window ({block}): shorten the message or lower "
                    "max_new_tokens"
                )
            del history[first]
            while len(history) - first > 1 and history[first]["role"] != "user":
                del history[first]  # a turn = a user message + the replies to it

    def reply(self, user_text: str, cfg: GenerationConfig) -> Iterator[str]:
        """Stream the assistant's reply to `user_text` piece by piece; the reply (or as much of it as
        was consumed) is appended to the history when the stream ends."""
        self.history, prompt = self.fit([*self.history, {"role": "user", "content": user_text}], cfg.max_new_tokens)
        cfg = replace(cfg, stop=tuple(cfg.stop) + self.end_of_turn)
        pieces: list[str] = []
        try:
            for piece in stream_text(self.model, self.tokenizer, self.encode(prompt), cfg):
                pieces.append(piece)
                yield piece
        finally:
            self.history.append({"role": "assistant", "content": "".join(pieces)})
