"""Princeton WordNet 3.0 read straight from its database files (Debian package `wordnet-base`).

    index.<pos>:  lemma pos synset_cnt p_cnt [ptr...] sense_cnt tagsense_cnt offset1 offset2 ...
    data.<pos>:   offset lex_filenum ss_type w_cnt(hex) word lex_id [word lex_id ...] p_cnt ... | gloss

A synset's offset is the byte position of its line in data.<pos>, so a lookup is one dictionary hit in the
index and one slice of the data file (loaded lazily, per part of speech). Lemmas are matched exactly
(lowercase, spaces as underscores); inflected forms ("dogs") are not reduced to their lemma.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

WORDNET_DIR = Path("/usr/share/wordnet")
POS_FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}


@dataclass(frozen=True)
class Synset:
    """One sense: its part of speech ('n', 'v', 'a', 's' satellite adjective, 'r'), lemmas and gloss."""

    offset: int
    pos: str
    lemmas: tuple[str, ...]
    gloss: str


class WordNet:
    """Synsets and synonyms of English words from a WordNet database folder."""

    def __init__(self, root: str | os.PathLike = WORDNET_DIR) -> None:
        self.root = Path(root)
        missing = [f"{kind}.{name}" for name in POS_FILES.values() for kind in ("index", "data")
                   if not (self.root / f"{kind}.{name}").is_file()]
        if missing:
            raise FileNotFoundError(
                f"WordNet database not found in {str(self.root)!r} (missing {', '.join(missing)}): install Debian's "
                "wordnet-base package (`apt-get install wordnet-base`, files in /usr/share/wordnet) or pass "
                "root= pointing to a folder with the WordNet 3.0 index.* and data.* files"
            )
        self._index: dict[str, dict[str, list[int]]] = {}
        self._data: dict[str, bytes] = {}

    def _lookup(self, pos: str) -> dict[str, list[int]]:
        if pos not in self._index:
            table: dict[str, list[int]] = {}
            with open(self.root / f"index.{POS_FILES[pos]}", encoding="utf-8") as f:
                for line in f:
                    if line.startswith(" "):  # the license header
                        continue
                    parts = line.split()
                    n_synsets = int(parts[2])
                    table[parts[0]] = [int(o) for o in parts[-n_synsets:]]
            self._index[pos] = table
        return self._index[pos]

    def _synset(self, pos: str, offset: int) -> Synset:
        if pos not in self._data:
            self._data[pos] = (self.root / f"data.{POS_FILES[pos]}").read_bytes()
        data = self._data[pos]
        line = data[offset: data.index(b"\n", offset)].decode("utf-8")
        head, _, gloss = line.partition(" | ")
        parts = head.split()
        if int(parts[0]) != offset:
            raise ValueError(f"data.{POS_FILES[pos]}: no synset at byte {offset}; is the WordNet database corrupt?")
        n_words = int(parts[3], 16)
        words = parts[4: 4 + 2 * n_words: 2]
        lemmas = tuple(w.split("(")[0].replace("_", " ") for w in words)  # drop adjective markers: (a) (p) (ip)
        return Synset(offset, parts[2], lemmas, gloss.strip())

    def synsets(self, word: str, pos: str | None = None) -> list[Synset]:
        """The senses of `word` (most frequent first within each part of speech), for one pos or all."""
        if pos is not None and pos not in POS_FILES:
            raise ValueError(f"pos={pos!r}: use one of {sorted(POS_FILES)} (noun, verb, adjective, adverb) or None")
        key = word.strip().lower().replace(" ", "_")
        return [self._synset(p, o) for p in ([pos] if pos else POS_FILES) for o in self._lookup(p).get(key, [])]

    def synonyms(self, word: str, pos: str | None = None) -> list[str]:
        """Lemmas sharing a synset with `word`, in sense order, without duplicates or the word itself."""
        own = word.strip().lower()
        out: dict[str, None] = {}
        for s in self.synsets(word, pos):
            for lemma in s.lemmas:
                if lemma.lower() != own:
                    out.setdefault(lemma, None)
        return list(out)


@lru_cache(maxsize=4)
def load_wordnet(root: str | os.PathLike = WORDNET_DIR) -> WordNet:
    """A shared WordNet for `root` (its files are read lazily, once)."""
    return WordNet(root)


__all__ = ["POS_FILES", "WORDNET_DIR", "Synset", "WordNet", "load_wordnet"]
