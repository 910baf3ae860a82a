"""Encoder-decoder data: (source ids, target ids) pairs -> padded teacher-forcing batches.

    src  = a b c               src_ids  = a b c <pad>      src_mask = T T T F
    tgt  = x y                 tgt_in   = <bos> x y        labels   = x y <eos>

Source and target may use one shared vocabulary or two: pairs are ids already, and padding
is masked out (src_mask, labels = -100), so only bos/eos must be target ids.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from groundup.data.corpus import read_text_corpus

IGNORE_INDEX = -100


class Seq2SeqData:
    """Random batches of pairs. A fixed pseudo-random permutation (seed 0) puts `val_fraction`
    of the pairs in "val", so a sorted input list does not give a biased validation set."""

    def __init__(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], block_size: int,
                 pad_id: int, bos_id: int, eos_id: int, val_fraction: float = 0.1,
                 src_pad_id: int | None = None) -> None:
        if block_size < 2:
            raise ValueError(f"Seq2SeqData(block_size={block_size}): must be >= 2 (<bos> + one token)")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"Seq2SeqData(val_fraction={val_fraction}): must be in [0, 1), e.g. 0.1")
        for i, (src, _) in enumerate(pairs):
            if len(src) == 0:  # attention over zero keys is undefined (softmax of nothing)
                raise ValueError(f"Seq2SeqData: pairs[{i}] has an empty source; drop it or give it a token")
        order = np.random.default_rng(0).permutation(len(pairs))
        n_val = int(len(pairs) * val_fraction)
        self.splits = {"train": [pairs[i] for i in order[n_val:]], "val": [pairs[i] for i in order[:n_val]]}
        if not self.splits["train"]:
            raise ValueError(f"Seq2SeqData: {len(pairs)} pairs leave no training pairs; pass more pairs")
        self.block_size, self.pad_id, self.bos_id, self.eos_id = block_size, pad_id, bos_id, eos_id
        self.src_pad_id = pad_id if src_pad_id is None else src_pad_id

    def get_batch(self, split: str, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """{"src_ids" (B,S), "src_mask" (B,S) bool True = real token, "tgt_in" (B,T) = <bos> + target,
        "labels" (B,T) = target + <eos>, -100 on padding}. Sequences longer than block_size are
        cut (the target keeps room for <bos>/<eos>); S, T are the longest in the batch."""
        pairs = self.splits.get(split)
        if not pairs:
            raise ValueError(f"get_batch(split={split!r}): no such split or it is empty; "
                             "use 'train', or 'val' with val_fraction > 0")
        idx = torch.randint(len(pairs), (batch_size,), generator=generator).tolist()
        srcs = [list(pairs[i][0][: self.block_size]) for i in idx]
        tgts = [list(pairs[i][1][: self.block_size - 1]) for i in idx]
        src_ids = _pad(srcs, self.src_pad_id)  # (B, S)
        return {
            "src_ids": src_ids,
            "src_mask": _pad(srcs, -1) != -1,  # (B, S)
            "tgt_in": _pad([[self.bos_id, *t] for t in tgts], self.pad_id),  # (B, T)
            "labels": _pad([[*t, self.eos_id] for t in tgts], IGNORE_INDEX),  # (B, T)
        }


def _pad(seqs: list[list[int]], value: int) -> torch.Tensor:
    out = torch.full((len(seqs), max(map(len, seqs))), value, dtype=torch.long)
    for b, s in enumerate(seqs):
        out[b, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


# --- a synthetic task: reverse a short sequence ------------------------------------------------
SPECIALS = ("<pad>", "<bos>", "<eos>")


@dataclass(frozen=True)
class SymbolVocab:
    """Ids for a list of symbols, after three specials: <pad>=0, <bos>=1, <eos>=2."""

    symbols: tuple[str, ...]
    pad_id: ClassVar[int] = 0
    bos_id: ClassVar[int] = 1
    eos_id: ClassVar[int] = 2

    def __post_init__(self) -> None:
        if len(set(self.symbols)) != len(self.symbols) or set(self.symbols) & set(SPECIALS):
            raise ValueError(f"SymbolVocab(symbols={self.symbols}): symbols must be distinct and not {SPECIALS}")

    @property
    def size(self) -> int:
        """Number of ids (specials included): the embedding table's rows."""
        return len(SPECIALS) + len(self.symbols)

    @cached_property
    def _index(self) -> dict[str, int]:
        return {s: i + len(SPECIALS) for i, s in enumerate(self.symbols)}

    def encode(self, seq: Sequence[str]) -> list[int]:
        try:
            return [self._index[s] for s in seq]
        except KeyError as e:
            raise ValueError(f"SymbolVocab.encode: symbol {e.args[0]!r} is not in the vocabulary") from None

    def decode(self, ids: Sequence[int]) -> list[str]:
        """Symbols of `ids`, stopping at <eos> and skipping <pad>/<bos>."""
        out = []
        for i in ids:
            if i == self.eos_id:
                break
            if i >= len(SPECIALS):
                out.append(self.symbols[i - len(SPECIALS)])
        return out


def char_vocab(symbols: str | Sequence[str] = "abcdefghijklmnopqrstuvwxyz") -> SymbolVocab:
    """A SymbolVocab of single characters (default: a-z)."""
    return SymbolVocab(tuple(symbols))


def reversal_pairs(n: int, min_len: int, max_len: int, vocab: Sequence[str],
                   seed: int = 0) -> list[tuple[list[str], list[str]]]:
    """`n` (sequence, reversed sequence) pairs, lengths uniform in [min_len, max_len], symbols
    uniform from `vocab`: a task a seq2seq model can only solve by attending across the input."""
    if not 1 <= min_len <= max_len:
        raise ValueError(f"reversal_pairs(min_len={min_len}, max_len={max_len}): need 1 <= min_len <= max_len")
    if not vocab:
        raise ValueError("reversal_pairs(vocab=[]): pass the symbols to draw from, e.g. list('abc')")
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        seq = rng.choices(list(vocab), k=rng.randint(min_len, max_len))
        out.append((seq, seq[::-1]))
    return out


def read_pairs(path: str | Path) -> list[tuple[str, str]]:
    """The (source, target) pairs of a UTF-8 file of `source<TAB>target` lines (blank lines skipped); a line
    without exactly one tab is an error naming its number."""
    lines = read_text_corpus(path).splitlines()
    pairs = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if line.count("\t") != 1:
            raise ValueError(f"{path}:{number}: expected 'source<TAB>target' (one tab), got {line[:60]!r}")
        src, tgt = line.split("\t")
        pairs.append((src, tgt))
    return pairs
