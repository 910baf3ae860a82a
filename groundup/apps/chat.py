"""`groundup chat`: a chat model's template, streamed replies, history kept within the context, Ctrl-C that
stops a reply rather than the session."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import torch

from ..chat import Chat, chat_template_from
from ..data.vlm import encode_text
from ..generate import GenerationConfig
from ..jobs.use import ChatJob
from ..models.flamingo import IMAGE_TOKEN, VisionLM
from ..vision.preprocess import ImageError
from ..vlm import stacked_media
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
    seeing = isinstance(model, VisionLM)
    if job.image and not seeing:
        raise ValueError(f"--image: {job.model} does not see images; give a vision-language model (the vlm/ folder "
                         "of `groundup finetune --method flamingo|llava`)")
    encode = (lambda text: encode_text(model, tok, text)) if seeing else None
    chat = Chat(model, tok, template=template or (fmt.chat_template() if fmt else None), system=job.system,
                encode=encode)
    images = ImageChat(chat, model) if seeing else None
    if job.image:
        images.attach(job.image)  # an unreadable image is refused before the first message
    cfg = GenerationConfig(max_new_tokens=job.max_new_tokens, temperature=job.temperature, top_p=job.top_p,
                           seed=job.seed)
    interactive = job.message is None and sys.stdin.isatty()
    if interactive:
        print(f"chatting with {job.model} (Ctrl-C stops a reply; Ctrl-D, or Ctrl-C at the prompt, quits"
              + ("; /image PATH shows it an image" if seeing else "") + ")")
    try:
        for message in _chat_messages(job.message, interactive):
            message = message.strip()
            if message.startswith("/image"):
                _attach(images, message.removeprefix("/image").strip())
            elif message and not _stream_reply(images or chat, message, cfg) and not interactive:
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


class ImageChat:
    """A Chat whose user turns may show images: each stands as an <image> marker in the message, and the images
    of the turns that still fit the context are the model's media while it replies."""

    def __init__(self, chat: Chat, model: VisionLM) -> None:
        self.chat, self.model = chat, model
        self.shown: list = []  # each marker's features (1 + N, d), in the order of the markers in the history
        self.pending: list = []  # attached, for the next message

    def attach(self, path: str) -> None:
        self.pending.append(self.model.encode_images([path])[0])  # ImageError names the file

    def reply(self, message: str, cfg: GenerationConfig) -> Iterator[str]:
        text = f"{IMAGE_TOKEN}\n" * len(self.pending) + message
        self.shown += self.pending
        self.pending = []
        history, _ = self.chat.fit([*self.chat.history, {"role": "user", "content": text}], cfg.max_new_tokens)
        n = sum(m["content"].count(IMAGE_TOKEN) for m in history)
        self.shown = self.shown[len(self.shown) - n:]  # the images of dropped turns go with them
        media, counts = stacked_media([torch.stack(self.shown) if self.shown else torch.empty(0)])
        with self.model.images(media, counts) if n else contextlib.nullcontext():
            yield from self.chat.reply(text, cfg)


def _attach(images: ImageChat | None, path: str) -> None:
    if images is None:
        print("this model does not see images; /image needs a vision-language model", file=sys.stderr)
    elif not path:
        print("usage: /image PATH", file=sys.stderr)
    else:
        try:
            images.attach(path)
            print(f"(image {path} goes with your next message)", file=sys.stderr)
        except ImageError as e:
            print(f"/image: {e}", file=sys.stderr)


def _stream_reply(chat: Chat | ImageChat, message: str, cfg: GenerationConfig) -> bool:
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
