"""`groundup chat`: a chat model's template, streamed replies, history kept within the context, Ctrl-C that
stops a reply rather than the session."""

from __future__ import annotations

import sys
from collections.abc import Iterator

from ..chat import Chat, chat_template_from
from ..generate import GenerationConfig
from ..jobs.use import ChatJob
from .by_arch import require_arch, require_tokenizer
from .inference import announced_prompt_format, for_decoding, load_for_inference


def chat_cli(job: ChatJob) -> None:
    """Chat with an instruct model: its chat template, streamed replies, history kept within the context."""
    template = chat_template_from(job.template, "--template") if job.template else None  # refused before loading
    model, tok = load_for_inference(job.model, job.dtype)
    require_arch(model, "chat")
    require_tokenizer(tok, job.model, "chat")
    model = for_decoding(model, job.adapter)
    fmt = None if template else announced_prompt_format(job.model, job.adapter, job.raw_prompt)
    chat = Chat(model, tok, template=template or (fmt.chat_template() if fmt else None), system=job.system)
    cfg = GenerationConfig(max_new_tokens=job.max_new_tokens, temperature=job.temperature, top_p=job.top_p,
                           seed=job.seed)
    interactive = job.message is None and sys.stdin.isatty()
    if interactive:
        print(f"chatting with {job.model} (Ctrl-C stops a reply; Ctrl-D, or Ctrl-C at the prompt, quits)")
    try:
        for message in _chat_messages(job.message, interactive):
            if message.strip() and not _stream_reply(chat, message.strip(), cfg) and not interactive:
                raise KeyboardInterrupt  # stdin or --message: a stopped reply ends the session (exit code 130)
    except KeyboardInterrupt:
        if not interactive:
            raise
        sys.stdout.write("\n")  # Ctrl-C at the prompt: leave as Ctrl-D does


def _chat_messages(message: str | None, interactive: bool) -> Iterator[str]:
    if message is not None:
        yield message
    elif not interactive:
        yield from sys.stdin
    else:
        while True:
            try:
                yield input("> ")
            except EOFError:
                sys.stdout.write("\n")
                return


def _stream_reply(chat: Chat, message: str, cfg: GenerationConfig) -> bool:
    """Stream one reply to stdout; False when Ctrl-C stopped it (what was shown stays in the history)."""
    pieces = chat.reply(message, cfg)
    try:
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
        return True
    except KeyboardInterrupt:
        return False
    finally:
        pieces.close()
        sys.stdout.write("\n")
        sys.stdout.flush()
