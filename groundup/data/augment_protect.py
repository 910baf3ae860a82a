"""What augmentation must leave alone, so that every changed copy of a labelled record is still right.

    prompt  "Translate to French: cat"              completion  "chat"
             └──── template ────┘ └payload┘

EDA (Wei & Zou 2019) assumes the label survives small edits; for instruction data it often does not: a
synonym of "French" ("Daniel Chester French") or of the word to translate changes the right answer. So these
spans are never replaced, typo'd, deleted or moved:

- the instruction template: a prefix ending at a colon or line break, or a suffix starting at a line break
  (in the first / last MAX_TEMPLATE_CHARS characters), that at least `min_records` distinct texts of the field
  share, found from the data; its words (stopwords aside) are kept wherever they occur, so "French" stays
  "French" in "... into French for me: horse" too. A text's head (up to its first colon) made only of
  template words, stopwords and names is a variant of the template and kept too ("Translate to German:");
- the payload: what follows the template (without one: the last colon, which stays too) when it is at most
  `payload_words` tokens: a word to translate, a number, a name is the whole input the answer is computed from;
- words that also occur in the record's other text fields (the completion): the answer depends on them;
- capitalized words inside a sentence (names: "Paris", "NASA") and tokens with a digit or without a letter
  (numbers and operators: "3 + 4");
- the words and phrases the user names (whole words, any case).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

Span = tuple[int, int]  # [start, end) character offsets

WORD = re.compile(r"[A-Za-z]+(?:['-][A-Za-z]+)*")  # as in augment.py: the units synonyms and typos edit
TOKEN = re.compile(r"\S+")  # the units deletion and swaps move
MAX_TEMPLATE_CHARS = 200  # templates are short instructions; longer shared text is not searched


@dataclass(frozen=True)
class Templates:
    """The template prefixes and suffixes found in a field, and their words (lowercase, no stopwords)."""

    prefixes: frozenset[str] = frozenset()
    suffixes: frozenset[str] = frozenset()
    words: frozenset[str] = frozenset()
    stopwords: frozenset[str] = frozenset()  # the ones left out of `words`


def _heads(text: str) -> list[str]:
    """The template candidates `text` starts with: its prefixes ending at ':' or a line break, longest last."""
    return [text[: i + 1] for i, c in enumerate(text[:MAX_TEMPLATE_CHARS]) if c in ":\n"]


def _tails(text: str) -> list[str]:
    """The template candidates `text` ends with: its suffixes starting at a line break, longest first."""
    return [text[i:] for i in range(max(len(text) - MAX_TEMPLATE_CHARS, 0), len(text)) if text[i] == "\n"]


def find_templates(texts: Sequence[str], min_records: int = 2, stopwords: frozenset[str] = frozenset()) -> Templates:
    """Prefixes ending at ':' or a line break, and suffixes starting at a line break, that at least
    `min_records` distinct texts share (duplicates count once: they share everything)."""
    heads: Counter[str] = Counter()
    tails: Counter[str] = Counter()
    for text in set(texts):
        heads.update(_heads(text))
        tails.update(_tails(text))
    shared = lambda c: frozenset(k for k, n in c.items() if n >= min_records and k.strip())
    prefixes, suffixes = shared(heads), shared(tails)
    words = {w.lower() for t in prefixes | suffixes for w in WORD.findall(t)} - stopwords
    return Templates(prefixes, suffixes, frozenset(words), stopwords)


def _is_name(text: str, m: re.Match) -> bool:
    return m.group()[0].isupper() and not _sentence_start(text, m.start())


def _template_head(text: str, templates: Templates) -> int:
    """The end of `text`'s head (through its first colon) if it reads as a variant of a template: only
    template words, stopwords and names, at least one template word; else 0."""
    colon = text.find(":", 0, MAX_TEMPLATE_CHARS) + 1
    words = list(WORD.finditer(text, 0, colon))
    kinds = [m.group().lower() in templates.words or m.group().lower() in templates.stopwords or _is_name(text, m)
             for m in words]
    return colon if words and all(kinds) and any(m.group().lower() in templates.words for m in words) else 0


def _template_bounds(text: str, templates: Templates) -> tuple[int, int]:
    """(end of the longest template prefix, start of the longest template suffix after it) in `text`."""
    start = max((len(h) for h in _heads(text) if h in templates.prefixes), default=0)
    start = start or _template_head(text, templates)
    tail = max((len(t) for t in _tails(text) if t in templates.suffixes and len(text) - len(t) >= start), default=0)
    return start, len(text) - tail


def _sentence_start(text: str, at: int) -> bool:
    before = text[:at].rstrip(" \t\"'([")
    return not before or before[-1] in ".!?\n"


def protected_spans(text: str, templates: Templates, answer: str = "", phrases: Sequence[str] = (),
                    payload_words: int = 3) -> list[Span]:
    """The character spans of `text` augmentation must not change (see the module docstring); `answer` is
    the record's other text (its completion), `phrases` the user's own."""
    start, end = _template_bounds(text, templates)
    spans = [(0, start), (end, len(text))]
    slot = start or text.rfind(":", 0, end) + 1  # no template: the payload follows the last colon, if any
    if slot and 1 <= len(TOKEN.findall(text, slot, end)) <= payload_words:
        spans += [(slot - 1, end)]  # with the colon before it, so the payload stays where it is
    answer_words = {w.lower() for w in WORD.findall(answer)}
    for m in WORD.finditer(text):
        w = m.group().lower()
        if w in templates.words or w in answer_words or _is_name(text, m):
            spans.append(m.span())
    spans += [m.span() for m in TOKEN.finditer(text) if re.search(r"\d", m.group()) or not WORD.search(m.group())]
    for phrase in phrases:
        spans += [m.span() for m in re.finditer(rf"(?<!\w){re.escape(phrase.strip())}(?!\w)", text, re.IGNORECASE)]
    return sorted(s for s in spans if s[0] < s[1])


def is_free(span: Span, keep: Sequence[Span]) -> bool:
    """True if `span` overlaps none of the protected spans."""
    return not any(span[0] < e and s < span[1] for s, e in keep)


__all__ = ["MAX_TEMPLATE_CHARS", "Span", "Templates", "find_templates", "is_free", "protected_spans"]
