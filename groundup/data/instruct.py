"""Instruction-tuning data: JSONL in three shapes -> token rows with the loss on the completion only.

    {"prompt": p, "completion": c}                    prompt = p + SEPARATOR        completion = c + <eos>
    {"instruction": i, "input": x?, "output": o}       prompt = Alpaca template(i, x) completion = o + <eos>
    {"messages": [{"role", "content"}, ...]}           the model's chat template; completion = every assistant
                                                       turn with its end-of-turn markup (no extra <eos>)

    tokens  =  p  p  p  p  c  c  <eos>         prompt and completion are tokenized separately, exactly
    input   =  p  p  p  p  c  c                as at inference (the prompt alone, then generated tokens)
    labels  = -100 -100 -100 c c <eos>         labels[t] = tokens[t+1] if that is a completion token

Labels are shifted like LMData's, so the causal_lm objective applies unchanged. Rows are right-padded
(pad id, else eos) with labels -100 and attention_mask 0; a causal model's real positions never see the
right padding, so the objective needs no mask. The Alpaca template is Taori et al. (2023)'s.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from groundup.chat import ChatTemplateError, apply_chat_template
from groundup.data.instruct_jsonl import (
    ALPACA_PROMPT,
    ALPACA_PROMPT_NO_INPUT,
    DEFAULT_SEPARATOR,
    FORMATS,
    Example,
    InstructFormatError,
    LoadReport,
    load_instructions,
    parse_instructions,
    write_jsonl,
)
from groundup.tokenizer import Tokenizer

IGNORE_INDEX = -100  # labels the loss skips (torch's cross_entropy default)


# --- rendering -------------------------------------------------------------------------------------
def chat_segments(template: str, messages: Sequence[dict[str, str]], bos_token: str = "",
                  eos_token: str = "") -> list[tuple[str, bool]]:
    """The rendered conversation cut into (text, is_assistant) pieces. Each assistant piece is the text
    between the prompt rendered with a generation header and the conversation rendered through that turn
    (content + end-of-turn markup), so the loss covers exactly what the model must generate."""
    msgs = [dict(m) for m in messages]
    render = lambda upto, gen: apply_chat_template(template, msgs[:upto], gen, bos_token, eos_token)
    pieces: list[tuple[str, bool]] = []
    done = ""
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        head, full = render(i, True), render(i + 1, False)
        if not head.startswith(done) or not full.startswith(head):
            raise ChatTemplateError(
                f"the chat template does not render messages[:{i + 1}] as an extension of the earlier turns, "
                "so assistant tokens cannot be located; use a template that renders turns append-only"
            )
        pieces += [(head[len(done):], False), (full[len(head):], True)]
        done = full
    whole = render(len(msgs), False)
    if not whole.startswith(done):
        raise ChatTemplateError("the chat template renders the whole conversation differently from its turns")
    pieces.append((whole[len(done):], False))
    return [(t, train) for t, train in pieces if t]


@dataclass
class InstructReport:
    """What InstructData built: examples and rows per split, every truncation by source line."""

    examples: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    target_tokens: dict[str, int] = field(default_factory=dict)
    prompt_truncated: list[int] = field(default_factory=list)  # lines whose prompt lost its left part
    completion_truncated: list[int] = field(default_factory=list)  # lines whose completion lost its end

    def summary(self) -> str:
        return (f"examples {self.examples}, rows {self.rows}, target tokens {self.target_tokens}, "
                f"{len(self.prompt_truncated)} prompt(s) and {len(self.completion_truncated)} completion(s) truncated")


Row = tuple[np.ndarray, np.ndarray]  # (token ids, is-target mask), both (n,)


def _fit(ids: np.ndarray, train: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray, str | None]:
    """Cut an over-long example to max_len tokens: drop the prompt's left part; if the final completion
    alone does not fit, keep one token of context and the completion's beginning."""
    if len(ids) <= max_len:
        return ids, train, None
    start = int(np.flatnonzero(train)[-1])
    while start > 0 and train[start - 1]:  # first token of the last completion run
        start -= 1
    if len(ids) - start <= max_len - 1:
        return ids[-max_len:], train[-max_len:], "prompt"
    s = max(start - 1, 0)
    return ids[s: s + max_len], train[s: s + max_len], "completion"


class InstructData:
    """Batches of instruction examples for the causal_lm objective, with the loss on completions only.

    A seeded permutation puts `val_fraction` of the examples in "val". Each example is one row unless
    `pack`: then whole examples are concatenated greedily into rows of up to block_size + 1 tokens (fewer
    pad tokens). In a packed row attention crosses example boundaries (as in most packing
    implementations: the causal mask is not block-diagonal), but no label ever asks for an example's first
    token from the previous example, and prompt tokens stay unlabeled."""

    def __init__(self, examples: Sequence[Example], tokenizer: Tokenizer, block_size: int, val_fraction: float = 0.1,
                 pack: bool = False, template: str | None = None, seed: int = 0) -> None:
        if block_size < 1:
            raise ValueError(f"InstructData(block_size={block_size}): must be >= 1 (the context length)")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"InstructData(val_fraction={val_fraction}): must be in [0, 1), e.g. 0.1")
        if not examples or not all(isinstance(e, Example) for e in examples):
            raise ValueError("InstructData(examples=...): pass a non-empty list of Example, from load_instructions "
                             "(JSONL) or parse_instructions (dicts)")
        if tokenizer.eos_id is None:
            raise ValueError("InstructData: the tokenizer has no eos token to end completions; build it with one "
                             "(e.g. char_tokenizer(text, special_tokens=['<|endoftext|>']))")
        self.tokenizer, self.block_size, self.pack = tokenizer, block_size, pack
        self.pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
        self.template = template or tokenizer.chat_template
        chat = next((e for e in examples if e.fmt == "chat"), None)
        if chat is not None and not self.template:
            raise ChatTemplateError(f"line {chat.line} is a chat example but there is no chat template: pass "
                                    "template= (Jinja, e.g. ChatML) or use a tokenizer that ships chat_template")
        token = lambda i: (tokenizer.id_to_token(i) or "") if i is not None else ""
        self._bos, self._eos = token(tokenizer.bos_id), token(tokenizer.eos_id)
        order = np.random.default_rng(seed).permutation(len(examples))
        n_val = int(len(examples) * val_fraction)
        self.examples = {"train": [examples[i] for i in order[n_val:]], "val": [examples[i] for i in order[:n_val]]}
        self.report = InstructReport()
        self.rows = {split: self._build(split, exs) for split, exs in self.examples.items()}
        self._warn_truncation()

    def _segments(self, ex: Example) -> list[tuple[str, bool]]:
        if ex.fmt != "chat":
            return [(ex.prompt, False), (ex.completion, True)]
        try:
            return chat_segments(self.template, ex.messages, self._bos, self._eos)
        except ChatTemplateError as e:
            raise ChatTemplateError(f"line {ex.line}: {e}") from e

    def _encode(self, exs: list[Example]) -> list[Row]:
        segs = [self._segments(ex) for ex in exs]
        flat = [text for s in segs for text, _ in s]
        try:
            ids = iter(self.tokenizer.encode_batch(flat)) if flat else iter(())
        except ValueError:
            for ex, s in zip(exs, segs, strict=True):  # find the example that fails, to name its line
                try:
                    self.tokenizer.encode_batch([t for t, _ in s])
                except ValueError as e:
                    raise ValueError(f"line {ex.line}: {e}") from e
            raise
        rows = []
        for ex, s in zip(exs, segs, strict=True):
            tok, train = [], []
            for _, is_target in s:
                piece = next(ids)
                tok += piece
                train += [is_target] * len(piece)
            if ex.fmt != "chat":  # the chat template's end-of-turn markup already ends each completion
                tok.append(self.tokenizer.eos_id)
                train.append(True)
            if not any(train[1:]):
                raise ChatTemplateError(f"line {ex.line}: the chat template renders no assistant text to learn from")
            rows.append((np.asarray(tok, dtype=np.int64), np.asarray(train, dtype=bool)))
        return rows

    def _build(self, split: str, exs: list[Example]) -> list[Row]:
        max_len = self.block_size + 1  # inputs plus the one shifted label
        rows = []
        for ex, (ids, train) in zip(exs, self._encode(exs), strict=True):
            ids, train, cut = _fit(ids, train, max_len)
            if cut == "prompt":
                self.report.prompt_truncated.append(ex.line)
            elif cut == "completion":
                self.report.completion_truncated.append(ex.line)
            train = train.copy()
            train[0] = False  # an example's first token has no context of its own: never a target
            rows.append((ids, train))
        if self.pack:
            rows = _pack(rows, max_len)
        self.report.examples[split], self.report.rows[split] = len(exs), len(rows)
        self.report.target_tokens[split] = int(sum(t[1:].sum() for _, t in rows))
        return rows

    def _warn_truncation(self) -> None:
        for lines, part in ((self.report.prompt_truncated, "left part of the prompt"),
                            (self.report.completion_truncated, "end of the completion")):
            if lines:
                warnings.warn(f"InstructData: {len(lines)} example(s) exceed block_size + 1 = {self.block_size + 1} "
                              f"tokens and lost the {part} (lines {lines[:10]}); see .report", stacklevel=3)

    def get_batch(self, split: str, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """{"input_ids", "labels", "attention_mask"}, each (B, T) with T the longest row in the batch
        (<= block_size); all randomness comes from `generator`."""
        rows = self.rows.get(split)
        if not rows:
            raise ValueError(f"get_batch(split={split!r}): no such split or it is empty; use 'train', "
                             "or 'val' with enough examples for val_fraction to select some")
        idx = torch.randint(len(rows), (batch_size,), generator=generator).tolist()
        T = max(len(rows[i][0]) for i in idx) - 1
        input_ids = torch.full((batch_size, T), self.pad_id, dtype=torch.long)  # (B, T)
        labels = torch.full((batch_size, T), IGNORE_INDEX, dtype=torch.long)  # (B, T)
        attention_mask = torch.zeros((batch_size, T), dtype=torch.long)  # (B, T)
        for b, i in enumerate(idx):
            ids, train = rows[i]
            n = len(ids) - 1
            input_ids[b, :n] = torch.from_numpy(ids[:-1])
            labels[b, :n] = torch.from_numpy(np.where(train[1:], ids[1:], IGNORE_INDEX))
            attention_mask[b, :n] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}

    def eval_examples(self, split: str) -> list[tuple[str, str]]:
        """(prompt text, expected completion text) per example of `split`, for generate-and-compare (exact
        match) evaluation. Chat examples: the conversation up to its last assistant turn with the generation
        header, and that turn's content. Texts are untruncated; the eos is not part of the completion."""
        if split not in self.examples:
            raise ValueError(f"eval_examples(split={split!r}): unknown split; use one of {sorted(self.examples)}")
        out = []
        for ex in self.examples[split]:
            if ex.fmt != "chat":
                out.append((ex.prompt, ex.completion))
                continue
            k = max(i for i, m in enumerate(ex.messages) if m["role"] == "assistant")
            prompt = apply_chat_template(self.template, list(ex.messages[:k]), True, self._bos, self._eos)
            out.append((prompt, ex.messages[k]["content"]))
        return out


def _pack(rows: list[Row], max_len: int) -> list[Row]:
    """Greedy in-order packing of whole examples into rows of at most max_len tokens."""
    groups: list[list[Row]] = []
    sizes: list[int] = []
    for row in rows:
        if groups and sizes[-1] + len(row[0]) <= max_len:
            groups[-1].append(row)
            sizes[-1] += len(row[0])
        else:
            groups.append([row])
            sizes.append(len(row[0]))
    return [(np.concatenate([ids for ids, _ in g]), np.concatenate([t for _, t in g])) for g in groups]


__all__ = [
    "ALPACA_PROMPT", "ALPACA_PROMPT_NO_INPUT", "DEFAULT_SEPARATOR", "FORMATS", "Example", "InstructData",
    "InstructFormatError", "InstructReport", "LoadReport", "chat_segments", "load_instructions", "parse_instructions",
    "write_jsonl",
]
