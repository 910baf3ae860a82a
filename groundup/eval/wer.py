"""Word error rate of speech transcripts: one English normaliser applied to reference and hypothesis alike,
a word-level Levenshtein distance, a corpus WER that weights utterances by their reference length, and a reader
for CMU Sphinx transcription files."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path

# Titles, as openai-whisper's EnglishTextNormalizer expands them (both sides, so "mr" and "mister" agree).
_TITLES = {
    "mr": "mister", "mrs": "missus", "st": "saint", "dr": "doctor", "prof": "professor", "capt": "captain",
    "gov": "governor", "ald": "alderman", "gen": "general", "sen": "senator", "rep": "representative",
    "pres": "president", "rev": "reverend", "hon": "honorable", "asst": "assistant", "assoc": "associate",
    "lt": "lieutenant", "col": "colonel", "jr": "junior", "sr": "senior", "esq": "esquire",
}
_ONES = {w: n for n, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen".split())}
_TENS = {w: 10 * n for n, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), start=2)}
_SCALES = {"thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12}

_BRACKETED = re.compile(r"\[[^\]]*\]|<[^>]*>|\([^)]*\)")
_APOSTROPHE_IN_WORD = re.compile(r"(?<=\w)['\u2019\u02bc](?=\w)")
_DIGIT_COMMA = re.compile(r"(?<=\d),(?=\d)")
_PUNCTUATION = re.compile(r"(?!(?<=\d)\.(?=\d))[^\w\s]|_")  # every symbol except a decimal point


def _parse_cardinal(words: list[str], i: int) -> tuple[int, int]:
    """The longest spelled-out cardinal starting at words[i]: (value, index after it); index == i when none."""
    total, current, last, last_scale, end = 0, 0, None, None, i
    j = i
    if words[i] == "a" and i + 1 < len(words) and (words[i + 1] == "hundred" or words[i + 1] in _SCALES):
        current, last, j = 1, "ones", i + 1  # "a hundred" is one hundred
    while j < len(words):
        w = words[j]
        if w in _ONES:
            n = _ONES[w]
            if not (last is None or (last == "tens" and 1 <= n <= 9) or (last in ("hundred", "scale") and n > 0)):
                break
            current, last = current + n, "ones"
        elif w in _TENS:
            if last not in (None, "hundred", "scale"):
                break
            current, last = current + _TENS[w], "tens"
        elif w == "hundred":
            if last is None:
                current = 100
            elif last in ("ones", "tens") and 0 < current < 100:
                current *= 100
            else:
                break
            last = "hundred"
        elif w in _SCALES:
            scale = _SCALES[w]
            if last == "scale" or (last_scale is not None and scale >= last_scale) or (last is not None and
                                                                                     current == 0):
                break
            total, current, last, last_scale = total + (current or 1) * scale, 0, "scale", scale
        elif w == "and" and last in ("hundred", "scale") and j + 1 < len(words) and (
                _ONES.get(words[j + 1], 0) > 0 or words[j + 1] in _TENS):
            j += 1  # "one hundred and five": the "and" belongs to the number
            continue
        else:
            break
        j += 1
        end = j
    return total + current, end


def _spell_numbers(words: list[str]) -> list[str]:
    out, i = [], 0
    while i < len(words):
        value, end = _parse_cardinal(words, i)
        if end == i:
            out.append(words[i])
            i += 1
            continue
        if 10 <= value <= 99 and end < len(words):  # "nineteen ninety nine" is a year: 1999
            nxt, nxt_end = _parse_cardinal(words, end)
            if nxt_end > end and 10 <= nxt <= 99:
                out.append(f"{value}{nxt}")
                i = nxt_end
                continue
        out.append(str(value))
        i = end
    return out


def normalize_english(text: str) -> str:
    """Normalise an English transcript for WER (a small take on openai-whisper's EnglishTextNormalizer).

    Rules, in order:
    - Unicode NFKC (full-width forms and ligatures fold; accented letters stay), then lowercase.
    - Bracketed spans are removed: [noise], <unk>, (laughs).
    - "%" becomes the word "percent"; "per cent" becomes "percent".
    - Commas between digits go ("1,000" -> "1000"); a point between digits stays ("3.5").
    - Apostrophes inside a word go ("don't" -> "dont", "dashwood's" -> "dashwoods"); no contraction is expanded.
    - Every other symbol, hyphens and underscores included, becomes a space; letters (any script) and digits stay.
    - Titles expand as whisper's do: mr -> mister, mrs -> missus, dr -> doctor, st -> saint, prof -> professor, ...
    - Spelled-out cardinals become digits, as whisper's do: "twenty one" -> "21", "one hundred and five" -> "105",
      "a thousand" -> "1000"; digits stay as written ("21", "3rd").
    - Two adjacent two-digit numbers read as a year: "nineteen ninety nine" -> "1999", "twenty twenty" -> "2020";
      other runs stay separate numbers ("one two three" -> "1 2 3").
    - Ordinals stay words ("first", "twenty first" -> "20 first"); British/American spelling is not unified.
    - Whitespace collapses to single spaces, with none at either end.
    """
    s = unicodedata.normalize("NFKC", text).lower()
    s = _BRACKETED.sub(" ", s)
    s = s.replace("%", " percent ")
    s = _DIGIT_COMMA.sub("", s)
    s = _APOSTROPHE_IN_WORD.sub("", s)
    s = _PUNCTUATION.sub(" ", s)
    words = [_TITLES.get(w, w) for w in s.split()]
    merged: list[str] = []
    for w in words:
        if w == "cent" and merged and merged[-1] == "per":
            merged[-1] = "percent"
        else:
            merged.append(w)
    return " ".join(_spell_numbers(merged))


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(substitutions + deletions + insertions, number of reference words) between two already-normalised
    texts, split on whitespace: the Levenshtein distance over words."""
    ref, hyp = reference.split(), hypothesis.split()
    prev = list(range(len(hyp) + 1))  # distances from ref[:i] to each hyp[:j]
    for i, r in enumerate(ref, 1):
        row = [i]
        for j, h in enumerate(hyp, 1):
            row.append(min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (r != h)))
        prev = row
    return prev[-1], len(ref)


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str],
                    normalize: Callable[[str], str] | None = normalize_english) -> float:
    """Corpus WER: total word errors over total reference words (so long utterances weigh more), after applying
    `normalize` to both sides (None compares the texts as given)."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    norm = normalize or (lambda t: t)
    errors = words = 0
    for ref, hyp in zip(references, hypotheses, strict=True):
        e, n = word_errors(norm(ref), norm(hyp))
        errors, words = errors + e, words + n
    if words == 0:
        raise ValueError("the references have no words (after normalisation); WER is undefined")
    return errors / words


_SPHINX_LINE = re.compile(r"^(.*?)\s*\(([^()\s]+)\)\s*$")


def read_sphinx_transcription(path: str | Path) -> dict[str, str]:
    """A CMU Sphinx transcription file, lines like "<s> some words </s> (fileid)", as {fileid: "some words"}
    in file order; blank lines are skipped."""
    out: dict[str, str] = {}
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        m = _SPHINX_LINE.match(line)
        if m is None:
            raise ValueError(f"{path}:{lineno}: no '(fileid)' at the end of the line: {line!r}")
        text, fileid = m.groups()
        if fileid in out:
            raise ValueError(f"{path}:{lineno}: fileid {fileid!r} appears twice")
        out[fileid] = " ".join(w for w in text.split() if w not in ("<s>", "</s>"))
    return out
