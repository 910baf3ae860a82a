"""Instruction JSONL: three shapes of record parsed into Examples, every bad line reported by number.

    {"prompt": p, "completion": c}                    prompt = p + SEPARATOR (which must not occur inside p)
    {"instruction": i, "input": x?, "output": o}       the Alpaca template (Taori et al., 2023)
    {"messages": [{"role", "content"}, ...]}           rendered later with the model's chat template

A malformed line raises InstructFormatError naming its line and what is wrong; with skip_bad=True each such
line is skipped and counted in the LoadReport instead. instruct.py turns Examples into training rows.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_SEPARATOR = "\n\n###\n\n"
FORMATS = ("prompt_completion", "alpaca", "chat")
CHAT_ROLES = ("system", "user", "assistant", "tool")
ALPACA_PROMPT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


class InstructFormatError(ValueError):
    """A malformed instruction record; the message names its line and what is wrong."""


class _Bad(Exception):
    """What is wrong with one record (the caller adds where it is)."""


class EmptyFileError(ValueError):
    """A data file with no records in it; the message names the file."""


def empty_file_error(path: str | os.PathLike) -> EmptyFileError:
    return EmptyFileError(f"{path} is empty (no records); give a JSONL file with one JSON object a line")


def json_line(text: str) -> object:
    """One JSONL line, decoded. The line ending is cut first, so a JSON error's column is the decoder's in that line
    (decoding '{"a": 1' + newline puts the missing brace on "line 2 column 1"); the ValueError says which column."""
    try:
        return json.loads(text.rstrip("\r\n"))
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg} at column {e.colno})") from None


def jsonl_objects(path: str | os.PathLike) -> list[tuple[int, dict]]:
    """(line number, record) for every non-blank line of a JSONL file; a missing or empty file, or a line that is
    not a JSON object, is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; pass a JSONL file (one JSON object a line)")
    records = []
    with open(path, encoding="utf-8") as f:  # lines end at newlines only (splitlines would cut at U+2028 too)
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json_line(line)
            except ValueError as e:
                raise ValueError(f"{path} line {n}: {e}; fix it") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{path} line {n}: expected a JSON object, got {type(rec).__name__}")
            records.append((n, rec))
    if not records:
        raise empty_file_error(path)
    return records


@dataclass(frozen=True)
class Example:
    """One instruction example. For prompt_completion and alpaca `prompt` is the whole conditioning
    text (separator or Alpaca template included); chat `messages` are rendered later with the model's
    chat template. `line` is the 1-based JSONL line (or record number) it came from."""

    fmt: str
    prompt: str = ""
    completion: str = ""
    messages: tuple[dict[str, str], ...] = ()
    line: int = 0


@dataclass
class LoadReport:
    """What load_instructions read: nothing is dropped without a line here."""

    source: str
    n_records: int = 0  # non-blank lines / records seen
    n_loaded: int = 0
    blank_lines: list[int] = field(default_factory=list)
    formats: dict[str, int] = field(default_factory=dict)
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (line, reason)

    def summary(self) -> str:
        text = f"{self.source}: loaded {self.n_loaded}/{self.n_records} records {self.formats}"
        if self.blank_lines:
            text += f"; {len(self.blank_lines)} blank line(s) ignored"
        if self.skipped:
            shown = "; ".join(f"line {n}: {why}" for n, why in self.skipped[:5])
            text += f"; skipped {len(self.skipped)} bad record(s): {shown}" + (" ..." if len(self.skipped) > 5 else "")
        return text


# --- parsing ---------------------------------------------------------------------------------------
def _text(obj: dict, key: str, allow_empty: bool = False) -> str:
    if key not in obj:
        raise _Bad(f"missing key {key!r}")
    value = obj[key]
    if not isinstance(value, str):
        raise _Bad(f"{key!r} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise _Bad(f"{key!r} is empty")
    return value


def _detect(obj: dict) -> str:
    if "messages" in obj:
        return "chat"
    if "instruction" in obj:
        return "alpaca"
    if "prompt" in obj or "completion" in obj:
        return "prompt_completion"
    raise _Bad(f"cannot tell the format from keys {sorted(obj)}: expected 'prompt' + 'completion', "
               "'instruction' + 'output' (Alpaca) or 'messages' (chat)")


def _messages(obj: dict) -> tuple[dict[str, str], ...]:
    msgs = obj.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise _Bad(f"'messages' must be a non-empty list of {{'role', 'content'}} objects, got {msgs!r:.60}")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in CHAT_ROLES or not isinstance(m.get("content"), str):
            raise _Bad(f"messages[{i}]={m!r:.60} must have 'role' in {CHAT_ROLES} and string 'content'")
        if m["role"] == "assistant" and not m["content"].strip():
            raise _Bad(f"messages[{i}] is an assistant turn with empty content (an empty completion)")
    first = next(i for i, m in enumerate(msgs) if m["role"] != "system")
    if msgs[first]["role"] == "assistant":
        raise _Bad(f"messages[{first}] is an assistant turn with nothing before it to answer; start with a user turn")
    if not any(m["role"] == "assistant" for m in msgs):
        raise _Bad("no assistant turn: nothing to learn from (the loss is on assistant turns only)")
    return tuple({"role": m["role"], "content": m["content"]} for m in msgs)


def _parse(obj: object, fmt: str, separator: str, line: int) -> Example:
    if not isinstance(obj, dict):
        raise _Bad(f"expected a JSON object, got {type(obj).__name__}")
    kind = _detect(obj) if fmt == "auto" else fmt
    if kind == "chat":
        return Example("chat", messages=_messages(obj), line=line)
    if kind == "alpaca":
        instruction, output = _text(obj, "instruction"), _text(obj, "output")
        extra = _text(obj, "input", allow_empty=True) if "input" in obj else ""
        prompt = (ALPACA_PROMPT.format(instruction=instruction, input=extra) if extra.strip()
                  else ALPACA_PROMPT_NO_INPUT.format(instruction=instruction))
        return Example("alpaca", prompt, output, line=line)
    prompt, completion = _text(obj, "prompt", allow_empty=True), _text(obj, "completion")
    if separator and separator in prompt:
        raise _Bad(f"the prompt contains the separator {separator!r}, so the model could not tell where the "
                   "completion starts; remove it from the prompt or pass another separator=")
    return Example("prompt_completion", prompt + separator, completion, line=line)


def instruction_format(obj: object) -> str | None:
    """The format load_instructions would read `obj` as ("prompt_completion", "alpaca", "chat"), or None
    when it has none of their keys (not an instruction record at all)."""
    try:
        return _detect(obj) if isinstance(obj, dict) else None
    except _Bad:
        return None


def record_problem(obj: object, fmt: str = "auto", separator: str = DEFAULT_SEPARATOR) -> str | None:
    """Why load_instructions / parse_instructions (and so finetune) would reject this one record (an empty
    completion, a missing key, a prompt holding the separator, ...), in their words; None if it loads."""
    _check_fmt(fmt)
    try:
        _parse(obj, fmt, separator, 0)
    except _Bad as e:
        return str(e)
    return None


def _check_fmt(fmt: str) -> None:
    if fmt != "auto" and fmt not in FORMATS:
        raise ValueError(f"fmt={fmt!r} is not a format; use 'auto' or one of {FORMATS}")


def _collect(items: Iterable[tuple[int, object]], fmt: str, skip_bad: bool, separator: str,
             report: LoadReport, where: str) -> list[Example]:
    """Parse (line, decoded JSON or a _Bad) pairs into examples, filling `report`."""
    examples = []
    for line, obj in items:
        report.n_records += 1
        try:
            if isinstance(obj, _Bad):
                raise obj
            ex = _parse(obj, fmt, separator, line)
        except _Bad as e:
            if not skip_bad:
                raise InstructFormatError(
                    f"{where} {line}: {e}; fix the record or pass skip_bad=True to skip it (it is counted)"
                ) from None
            report.skipped.append((line, str(e)))
            continue
        examples.append(ex)
        report.formats[ex.fmt] = report.formats.get(ex.fmt, 0) + 1
    report.n_loaded = len(examples)
    return examples


def parse_instructions(records: Iterable[dict], fmt: str = "auto", skip_bad: bool = False,
                       separator: str = DEFAULT_SEPARATOR) -> tuple[list[Example], LoadReport]:
    """Examples from in-memory records (dicts shaped like the JSONL lines); errors name the 1-based record."""
    _check_fmt(fmt)
    report = LoadReport("records")
    examples = _collect(enumerate(records, start=1), fmt, skip_bad, separator, report, "record")
    return examples, report


def load_instructions(path: str | os.PathLike, fmt: str = "auto", skip_bad: bool = False,
                      separator: str = DEFAULT_SEPARATOR) -> tuple[list[Example], LoadReport]:
    """Examples from a JSONL file, one record a line, format detected per line (`fmt="auto"`) or forced.
    A malformed line raises InstructFormatError naming the line; with `skip_bad` it is skipped and listed
    in the report instead. Blank lines are ignored (and listed); a file with no records raises EmptyFileError."""
    _check_fmt(fmt)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_instructions(path={str(path)!r}): no such file; pass a JSONL file")
    report = LoadReport(str(path))

    def decoded() -> Iterable[tuple[int, object]]:
        with open(path, encoding="utf-8") as f:
            for n, text in enumerate(f, start=1):
                if not text.strip():
                    report.blank_lines.append(n)
                    continue
                try:
                    yield n, json_line(text)
                except ValueError as e:
                    yield n, _Bad(str(e))

    examples = _collect(decoded(), fmt, skip_bad, separator, report, f"{path} line")
    if not report.n_records:
        raise empty_file_error(path)
    return examples, report


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> Path:
    """Write one JSON object a line (UTF-8, not ASCII-escaped) via a temp file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path
