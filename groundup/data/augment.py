"""Text augmentation (EDA, Wei & Zou 2019, plus keyboard typos): synonym replacement from WordNet,
random deletion, random swaps, typo noise. Each changes max(1, round(p * words)) words.

Every function takes a `seed` and draws only from its own random.Random: the same seed gives the same
output on every run and machine; different seeds give different outputs. Synonym replacement and typos
edit words in place (whitespace and punctuation kept); deletion and swaps work on whitespace-separated
tokens and rejoin them with single spaces.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from groundup.data.wordnet import WordNet, load_wordnet

METHODS = ("synonym", "delete", "swap", "typo")
WORD = re.compile(r"[A-Za-z]+(?:['-][A-Za-z]+)*")
STOPWORDS = frozenset("""
a about above after again against all am an and any are as at be been before being below between both but by
can did do does doing down during each few for from further had has have having he her here hers herself him
himself his how i if in into is it its itself just me more most my myself no nor not now of off on once only or
other our ours ourselves out over own same she should so some such than that the their theirs them themselves
then there these they this those through to too under until up very was we were what when where which while who
whom why will with would you your yours yourself yourselves
""".split())
KEY_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")


def _keyboard_neighbours() -> dict[str, str]:
    """QWERTY neighbours: same row +-1, the row above at columns c and c+1, the row below at c-1 and c."""
    out = {}
    for r, row in enumerate(KEY_ROWS):
        for c, key in enumerate(row):
            near = [row[i] for i in (c - 1, c + 1) if 0 <= i < len(row)]
            if r > 0:
                near += [KEY_ROWS[r - 1][i] for i in (c, c + 1) if i < len(KEY_ROWS[r - 1])]
            if r + 1 < len(KEY_ROWS):
                near += [KEY_ROWS[r + 1][i] for i in (c - 1, c) if 0 <= i < len(KEY_ROWS[r + 1])]
            out[key] = "".join(near)
    return out


NEIGHBOURS = _keyboard_neighbours()


def _n_changes(n_words: int, p: float) -> int:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p={p}: the fraction of words to change must be in [0, 1], e.g. 0.1")
    return max(1, round(p * n_words))


def _match_case(new: str, old: str) -> str:
    return new[0].upper() + new[1:] if old[:1].isupper() else new


def _edit_words(text: str, picked: dict[int, str]) -> str:
    """`text` with the WORD matches at the given indices replaced."""
    pieces, last = [], 0
    for i, m in enumerate(WORD.finditer(text)):
        if i in picked:
            pieces += [text[last: m.start()], picked[i]]
            last = m.end()
    return "".join(pieces) + text[last:]


def synonym_replace(text: str, p: float = 0.1, seed: int = 0, wordnet: WordNet | None = None) -> str:
    """Replace words (not stopwords) by a random WordNet synonym (any sense, any part of speech)."""
    rng = random.Random(seed)
    wn = wordnet or load_wordnet()
    words = [m.group() for m in WORD.finditer(text)]
    options = {i: wn.synonyms(w) for i, w in enumerate(words) if w.lower() not in STOPWORDS}
    options = {i: s for i, s in options.items() if s}
    chosen = rng.sample(sorted(options), min(_n_changes(len(words), p), len(options)))
    return _edit_words(text, {i: _match_case(rng.choice(options[i]), words[i]) for i in chosen})


def random_delete(text: str, p: float = 0.1, seed: int = 0) -> str:
    """Delete random tokens, always leaving at least one."""
    rng = random.Random(seed)
    tokens = text.split()
    if len(tokens) < 2:
        return text
    drop = set(rng.sample(range(len(tokens)), min(_n_changes(len(tokens), p), len(tokens) - 1)))
    return " ".join(t for i, t in enumerate(tokens) if i not in drop)


def random_swap(text: str, p: float = 0.1, seed: int = 0) -> str:
    """Swap the positions of two random tokens, n times."""
    rng = random.Random(seed)
    tokens = text.split()
    if len(tokens) < 2:
        return text
    for _ in range(_n_changes(len(tokens), p)):
        i, j = rng.sample(range(len(tokens)), 2)
        tokens[i], tokens[j] = tokens[j], tokens[i]
    return " ".join(tokens)


def _typo(word: str, rng: random.Random) -> str:
    ops = ["substitute", "drop"] + (["transpose"] if any(a != b for a, b in zip(word, word[1:], strict=False)) else [])
    op = rng.choice(ops)
    if op == "transpose":
        i = rng.choice([i for i in range(len(word) - 1) if word[i] != word[i + 1]])
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    i = rng.randrange(len(word))
    if op == "drop":
        return word[:i] + word[i + 1:]
    c = word[i]
    new = rng.choice(NEIGHBOURS.get(c.lower(), "") or "e")
    return word[:i] + (new.upper() if c.isupper() else new) + word[i + 1:]


def typo_noise(text: str, p: float = 0.1, seed: int = 0) -> str:
    """Give random words (2+ letters) one keyboard typo: an adjacent-key substitution, a transposition of
    two neighbouring letters, or a dropped letter."""
    rng = random.Random(seed)
    words = [m.group() for m in WORD.finditer(text)]
    eligible = [i for i, w in enumerate(words) if len(w) >= 2]
    chosen = rng.sample(eligible, min(_n_changes(len(words), p), len(eligible)))
    return _edit_words(text, {i: _typo(words[i], rng) for i in chosen})


AUGMENTERS: dict[str, Callable[[str, float, int], str]] = {
    "synonym": synonym_replace, "delete": random_delete, "swap": random_swap, "typo": typo_noise,
}


@dataclass
class AugmentReport:
    """Copies made per method, and every copy not kept: (record index, method, why)."""

    n_in: int = 0
    n_out: int = 0
    made: dict[str, int] = field(default_factory=dict)
    skipped: list[tuple[int, str, str]] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.n_in} records -> {self.n_out}; augmented {self.made}; "
                f"{len(self.skipped)} copies skipped (unchanged or repeated)")


def augment_records(records: Sequence[dict], field: str, methods: Sequence[str] = METHODS, n_per_record: int = 1,
                    seed: int = 0, p: float = 0.1, keep_original: bool = True) -> tuple[list[dict], AugmentReport]:
    """(records, report): the originals (if keep_original) followed by up to `n_per_record` changed copies
    of each record's `field`. Copy j of record i uses methods[(i + j) % len(methods)] with the seed
    "seed/i/j", so the output is reproducible. A copy equal to its original or an earlier copy is not
    kept; it is listed in report.skipped. Copies get "augment_method" and "augment_source" (the index)."""
    unknown = [m for m in methods if m not in AUGMENTERS]
    if not methods or unknown or isinstance(methods, str):
        raise ValueError(f"methods={methods!r}: give a non-empty list from {METHODS} (unknown: {unknown})")
    if n_per_record < 0:
        raise ValueError(f"n_per_record={n_per_record}: must be >= 0")
    report = AugmentReport(n_in=len(records))
    out = list(records) if keep_original else []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or not isinstance(rec.get(field), str):
            raise ValueError(f"records[{i}]: field {field!r} must be a string; got {rec!r:.60}")
        seen = {rec[field]}
        for j in range(n_per_record):
            method = methods[(i + j) % len(methods)]
            rng_seed = random.Random(f"{seed}/{i}/{j}").getrandbits(64)
            new = AUGMENTERS[method](rec[field], p, rng_seed)
            if new in seen:
                report.skipped.append((i, method, "unchanged" if new == rec[field] else "repeats an earlier copy"))
                continue
            seen.add(new)
            out.append({**rec, field: new, "augment_method": method, "augment_source": i})
            report.made[method] = report.made.get(method, 0) + 1
    report.n_out = len(out)
    return out, report


__all__ = [
    "AUGMENTERS", "METHODS", "AugmentReport", "augment_records", "random_delete", "random_swap", "synonym_replace",
    "typo_noise",
]
