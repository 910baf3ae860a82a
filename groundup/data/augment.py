"""Text augmentation (EDA, Wei & Zou 2019, plus keyboard typos): synonym replacement from WordNet,
random deletion, random swaps, typo noise. Each changes max(1, round(p * words)) words.

Every function takes a `seed` and draws only from its own random.Random: the same seed gives the same
output on every run and machine; different seeds give different outputs. Synonym replacement and typos
edit words in place (whitespace and punctuation kept); deletion and swaps work on whitespace-separated
tokens, keeping the whitespace between the tokens that stay in place. A synonym is one word, never a phrase
or a capitalized (proper-noun) lemma: "cat" never becomes "true cat" or "Caterpillar".

Each function leaves the character spans in `keep` untouched. augment_records fills them per record with
what the label depends on (augment_protect.py: the instruction template, the payload, the words the
completion shares, names, numbers and the user's own words), so each changed copy still matches its label.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from groundup.data.augment_protect import TOKEN, WORD, Span, find_templates, is_free, protected_spans
from groundup.data.wordnet import WordNet, load_wordnet

METHODS = ("synonym", "delete", "swap", "typo")
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


def one_word_synonyms(word: str, wordnet: WordNet) -> list[str]:
    """WordNet synonyms of `word` that are one lowercase word: no phrases ("true cat"), no proper-noun or
    acronym lemmas ("Daniel Chester French", "CAT")."""
    return [s for s in wordnet.synonyms(word) if WORD.fullmatch(s) and s.islower()]


def synonym_replace(text: str, p: float = 0.1, seed: int = 0, wordnet: WordNet | None = None,
                    keep: Sequence[Span] = ()) -> str:
    """Replace words (not stopwords, none in `keep`) by a random one-word WordNet synonym (any sense, any
    part of speech)."""
    rng = random.Random(seed)
    wn = wordnet or load_wordnet()
    matches = list(WORD.finditer(text))
    words = [m.group() for m in matches]
    options = {i: one_word_synonyms(m.group(), wn) for i, m in enumerate(matches)
               if m.group().lower() not in STOPWORDS and is_free(m.span(), keep)}
    options = {i: s for i, s in options.items() if s}
    chosen = rng.sample(sorted(options), min(_n_changes(len(words), p), len(options)))
    return _edit_words(text, {i: _match_case(rng.choice(options[i]), words[i]) for i in chosen})


def _join(text: str, tokens: list[re.Match], kept: Sequence[int], words: Sequence[str]) -> str:
    """The kept tokens (as `words[i]`), each after the whitespace that preceded it in `text` (the first
    after none); the text's leading and trailing whitespace stay."""
    out = [text[: tokens[0].start()]]
    for n, i in enumerate(kept):
        if n:
            out.append(text[tokens[i - 1].end(): tokens[i].start()])
        out.append(words[i])
    return "".join(out) + text[tokens[-1].end():]


def random_delete(text: str, p: float = 0.1, seed: int = 0, keep: Sequence[Span] = ()) -> str:
    """Delete random tokens (none overlapping `keep`), always leaving at least one."""
    rng = random.Random(seed)
    tokens = list(TOKEN.finditer(text))
    if len(tokens) < 2:
        return text
    free = [i for i, m in enumerate(tokens) if is_free(m.span(), keep)]
    drop = set(rng.sample(free, min(_n_changes(len(tokens), p), len(tokens) - 1, len(free))))
    return _join(text, tokens, [i for i in range(len(tokens)) if i not in drop], [m.group() for m in tokens])


def random_swap(text: str, p: float = 0.1, seed: int = 0, keep: Sequence[Span] = ()) -> str:
    """Swap the positions of two random tokens (none overlapping `keep`), n times."""
    rng = random.Random(seed)
    tokens = list(TOKEN.finditer(text))
    free = [i for i, m in enumerate(tokens) if is_free(m.span(), keep)]
    if len(free) < 2:
        return text
    words = [m.group() for m in tokens]
    for _ in range(_n_changes(len(tokens), p)):
        i, j = rng.sample(free, 2)
        words[i], words[j] = words[j], words[i]
    return _join(text, tokens, range(len(tokens)), words)


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


def typo_noise(text: str, p: float = 0.1, seed: int = 0, keep: Sequence[Span] = ()) -> str:
    """Give random words (2+ letters, none in `keep`) one keyboard typo: an adjacent-key substitution, a
    transposition of two neighbouring letters, or a dropped letter."""
    rng = random.Random(seed)
    matches = list(WORD.finditer(text))
    words = [m.group() for m in matches]
    eligible = [i for i, m in enumerate(matches) if len(m.group()) >= 2 and is_free(m.span(), keep)]
    chosen = rng.sample(eligible, min(_n_changes(len(words), p), len(eligible)))
    return _edit_words(text, {i: _typo(words[i], rng) for i in chosen})


AUGMENTERS: dict[str, Callable[..., str]] = {  # (text, p, seed, keep=spans) -> text
    "synonym": synonym_replace, "delete": random_delete, "swap": random_swap, "typo": typo_noise,
}


@dataclass
class AugmentReport:
    """Copies made per method, every copy not kept: (record index, method, why), and the instruction
    templates found in the field (kept unchanged in every copy)."""

    n_in: int = 0
    n_out: int = 0
    made: dict[str, int] = field(default_factory=dict)
    skipped: list[tuple[int, str, str]] = field(default_factory=list)
    templates: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = (f"{self.n_in} records -> {self.n_out}; augmented {self.made}; "
                f"{len(self.skipped)} copies skipped (unchanged or repeated)")
        if self.templates:
            shown = ", ".join(repr(t) for t in self.templates[:5]) + (" ..." if len(self.templates) > 5 else "")
            text += f"; kept {len(self.templates)} instruction template(s) unchanged: {shown}"
        return text


def _check_args(records: Sequence[dict], field: str, methods: Sequence[str], n_per_record: int,
                protect: Sequence[str], payload_words: int) -> None:
    unknown = [m for m in methods if m not in AUGMENTERS]
    if not methods or unknown or isinstance(methods, str):
        raise ValueError(f"methods={methods!r}: give a non-empty list from {METHODS} (unknown: {unknown})")
    if n_per_record < 0:
        raise ValueError(f"n_per_record={n_per_record}: must be >= 0")
    if isinstance(protect, str) or not all(isinstance(w, str) and w.strip() for w in protect):
        raise ValueError(f"protect={protect!r}: give a list of words or phrases never to change, e.g. "
                         "['French', 'Translate'] (--protect '[French, Translate]')")
    if payload_words < 0:
        raise ValueError(f"payload_words={payload_words}: must be >= 0 (0: no payload is kept verbatim)")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or not isinstance(rec.get(field), str):
            keys = sorted(k for k, v in rec.items() if isinstance(v, str)) if isinstance(rec, dict) else []
            raise ValueError(f"records[{i}]: field {field!r} must be a string; got {rec!r:.60}. Pick the text "
                             f"field to augment with field= (--field); this record's text fields: {keys}")


def _answer_text(rec: dict, field: str) -> str:
    """The record's other text (its completion, output, ...): words the label shares with `field`."""
    return "\n".join(v for k, v in rec.items() if k != field and isinstance(v, str) and not k.startswith("augment_"))


def augment_records(records: Sequence[dict], field: str, methods: Sequence[str] = METHODS, n_per_record: int = 1,
                    seed: int = 0, p: float = 0.1, keep_original: bool = True, protect: Sequence[str] = (),
                    payload_words: int = 3) -> tuple[list[dict], AugmentReport]:
    """(records, report): the originals (if keep_original) followed by up to `n_per_record` changed copies
    of each record's `field`. Copy j of record i uses methods[(i + j) % len(methods)] with the seed
    "seed/i/j", so the output is reproducible. A copy equal to its original or an earlier copy is not
    kept; it is listed in report.skipped. Copies get "augment_method" and "augment_source" (the index).

    Each copy keeps what its label depends on (augment_protect.py): the instruction templates the records
    share, a payload of up to `payload_words` tokens after the template or last colon, the words the record's
    other fields contain, names, numbers and the `protect` words and phrases."""
    _check_args(records, field, methods, n_per_record, protect, payload_words)
    templates = find_templates([r[field] for r in records], stopwords=STOPWORDS)
    report = AugmentReport(n_in=len(records), templates=sorted(templates.prefixes | templates.suffixes))
    out = list(records) if keep_original else []
    for i, rec in enumerate(records):
        keep = protected_spans(rec[field], templates, _answer_text(rec, field), protect, payload_words)
        seen = {rec[field]}
        for j in range(n_per_record):
            method = methods[(i + j) % len(methods)]
            rng_seed = random.Random(f"{seed}/{i}/{j}").getrandbits(64)
            new = AUGMENTERS[method](rec[field], p, rng_seed, keep=keep)
            if new in seen:
                report.skipped.append((i, method, "unchanged" if new == rec[field] else "repeats an earlier copy"))
                continue
            seen.add(new)
            out.append({**rec, field: new, "augment_method": method, "augment_source": i})
            report.made[method] = report.made.get(method, 0) + 1
    report.n_out = len(out)
    return out, report

__all__ = [
    "AUGMENTERS", "METHODS", "AugmentReport", "augment_records", "one_word_synonyms", "random_delete", "random_swap",
    "synonym_replace", "typo_noise",
]
