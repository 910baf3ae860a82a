"""How fine-tuning formatted its prompts, recorded beside what it wrote, so inference formats a prompt the same way.

A model fine-tuned on `{"prompt": "Translate to French: cat", "completion": "chat"}` saw the prompt followed by the
separator (`\\n\\n###\\n\\n`); given the bare prompt it continues the text instead of answering ("catamat...").
The same holds for the Alpaca template and for chat messages rendered with a chat template.

    finetune ── the training data's format ──> prompt_format.json beside adapter/, adapter_hf/ and model/
    generate / chat / serve ── read_prompt_format(adapter or model folder) ──> PromptFormat.apply(user text)
                                                                   (chat: PromptFormat.chat_template())
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from groundup.chat import ChatTemplateError, apply_chat_template
from groundup.data.instruct_jsonl import ALPACA_PROMPT_NO_INPUT
from groundup.tokenizer import Tokenizer

PROMPT_FORMAT_FILE = "prompt_format.json"
KINDS = ("prompt_completion", "alpaca", "chat")
SYSTEM_GAP = "\n\n"  # after a system message, in the turn templates of the prompt_completion and alpaca formats


def _literal(text: str) -> str:
    """`text` as a Jinja string literal (JSON's escapes are Jinja's; non-ASCII characters stay as they are)."""
    return json.dumps(text, ensure_ascii=False)


def special_tokens(tokenizer: Tokenizer | None) -> tuple[str, str]:
    """(bos, eos) as text, "" where the tokenizer has none: what chat templates receive as bos_token / eos_token."""
    if tokenizer is None:
        return "", ""
    token = lambda i: (tokenizer.id_to_token(i) or "") if i is not None else ""
    return token(tokenizer.bos_id), token(tokenizer.eos_id)


@dataclass(frozen=True)
class PromptFormat:
    """The format of the training prompts: `kind` is the instruction data's format (groundup.data.FORMATS);
    prompt_completion appends `separator`; alpaca fills `template`'s {instruction}; chat renders the user message
    with `template`, the Jinja chat template the training data was rendered with."""

    kind: str
    separator: str = ""
    template: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"prompt format kind={self.kind!r} is unknown; use one of {list(KINDS)}")
        if self.kind == "alpaca" and "{instruction}" not in self.template:
            raise ValueError("an alpaca prompt format needs a template with {instruction} in it")
        if self.kind == "chat" and not self.template.strip():
            raise ValueError("a chat prompt format needs the Jinja chat template the training data was rendered with")

    def apply(self, text: str, tokenizer: Tokenizer | None = None) -> str:
        """The prompt as training rendered it. A prompt that already ends with the separator is used as given."""
        if self.kind == "prompt_completion":
            return text if self.separator and text.endswith(self.separator) else text + self.separator
        if self.kind == "alpaca":
            return self.template.replace("{instruction}", text)
        return apply_chat_template(self.template, [{"role": "user", "content": text}], True,
                                   *special_tokens(tokenizer))

    def chat_template(self) -> str:
        """A Jinja chat template that renders a conversation in this format: the chat template itself, or, for the
        other formats, each user message formatted as a training prompt and each reply followed by the eos token."""
        if self.kind == "chat":
            return self.template
        head, tail = ("", self.separator) if self.kind == "prompt_completion" else \
            self.template.split("{instruction}", 1)
        return ("{% for m in messages %}{% if m['role'] == 'assistant' %}{{ m['content'] }}{{ eos_token }}"
                f"{{% elif m['role'] == 'system' %}}{{{{ m['content'] }}}}{{{{ {_literal(SYSTEM_GAP)} }}}}"
                f"{{% else %}}{{{{ {_literal(head)} }}}}{{{{ m['content'] }}}}{{{{ {_literal(tail)} }}}}"
                "{% endif %}{% endfor %}")

    def describe(self) -> str:
        if self.kind == "prompt_completion":
            return f"the prompt + separator {self.separator!r}"
        return "the Alpaca template" if self.kind == "alpaca" else "the chat template it was trained with"

    def to_dict(self) -> dict[str, str]:
        return {"format_version": 1, **asdict(self)}

    @classmethod
    def from_dict(cls, d: Mapping) -> PromptFormat:
        return cls(str(d["kind"]), str(d.get("separator", "")), str(d.get("template", "")))


def prompt_format_for(formats: Mapping[str, int], separator: str, template: str | None) -> PromptFormat | None:
    """The format of training data whose records came in `formats` ({format: count}, LoadReport.formats); with a
    mix, the most common one. `template` is the chat template chat records were rendered with."""
    counts = {k: n for k, n in formats.items() if n}
    if not counts:
        return None
    kind = max(counts, key=counts.__getitem__)
    if kind == "chat":
        return PromptFormat("chat", template=template or "")
    if kind == "alpaca":
        return PromptFormat("alpaca", template=ALPACA_PROMPT_NO_INPUT)
    return PromptFormat("prompt_completion", separator=separator)


def save_prompt_format(fmt: PromptFormat, folder: str | os.PathLike) -> Path:
    """Write folder/prompt_format.json atomically (a temporary file renamed over it)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / PROMPT_FORMAT_FILE
    fd, tmp = tempfile.mkstemp(prefix=f".{PROMPT_FORMAT_FILE}.", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(fmt.to_dict(), f, indent=2, ensure_ascii=False)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_prompt_format(folder: str | os.PathLike | None) -> PromptFormat | None:
    """The PromptFormat recorded in `folder` (an adapter or model folder), None where there is none."""
    path = Path(folder) / PROMPT_FORMAT_FILE if folder else None
    if path is None or not path.is_file():
        return None
    try:
        return PromptFormat.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError, ValueError,
            ChatTemplateError) as e:
        raise ValueError(f"{path} is unreadable ({e}); delete it and pass prompts formatted by hand, or fine-tune "
                         "again to rewrite it") from None


def carry_prompt_format(source: str | os.PathLike, written: str | os.PathLike) -> None:
    """Give a model written from `source` (a fine-tuned model or adapter folder, converted, quantized or merged) the
    prompt format `source` recorded, so that it is prompted as it was trained."""
    fmt = read_prompt_format(source) if Path(source).is_dir() else None
    if fmt is not None:
        save_prompt_format(fmt, written)


def inference_prompt_format(model: str | os.PathLike, adapter: str | os.PathLike | None = None) -> PromptFormat | None:
    """The format prompts to `model` (+ `adapter`) should get: the adapter's record, else the model folder's (a
    full fine-tune's), else None (a base model: prompts are used as given)."""
    if adapter:
        fmt = read_prompt_format(adapter)
        if fmt is not None:
            return fmt
    return read_prompt_format(model) if Path(model).is_dir() else None


__all__ = ["KINDS", "PROMPT_FORMAT_FILE", "PromptFormat", "carry_prompt_format", "inference_prompt_format",
           "prompt_format_for", "read_prompt_format", "save_prompt_format", "special_tokens"]
