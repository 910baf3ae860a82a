"""The serving KV cache: one preallocated buffer per layer with a row ("slot") per running request.

Rows share one column clock, so a decode step writes every row's new token into the same column and the
model's ordinary `cache.update(layer, start, k, v)` works unchanged. What differs per row is which columns
hold its tokens (a (slots, columns) mask, passed as attention_mask) and its positions (position_ids): a
request that joins late is placed so that its prompt ends at the clock, and the columns before it are
masked out for it, exactly as generate.py left-pads a batch of prompts of different lengths.

    columns   0 1 2 3 4 5 6 7      clock = 6 (the next decode step writes column 6 for every row)
    row 0     a a a a a a .        positions 0..5
    row 1     . . . b b b .        joined later: prompt in columns 3..5, positions 0..2
    row 2     . . c c . . .        after a gap (masked): another row joined with a longer prompt

The running rows are always 0..n-1 (a finished row is replaced by the last one), so each forward pass runs
on a plain slice of the buffers. When the clock reaches the end, `compact` moves every row's tokens to the
right end of [0, longest) and drops the gaps; positions do not change, so the output does not either.

A retention model has no keys and values: its rows are recurrent states (RetentionState, one per slot, zeroed when a
request joins), and the mask alone keeps the columns' bookkeeping.
"""

from __future__ import annotations

import torch

from ..nn.kv_cache import KVCache
from ..nn.retention import RetentionState


class CacheRows:
    """Rows [lo, hi) of a SlotCache as the KV cache the model expects (KVCache.update writes into views)."""

    update = KVCache.update

    def __init__(self, k: list[torch.Tensor], v: list[torch.Tensor], max_len: int) -> None:
        self.k, self.v, self.max_len = k, v, max_len


class SlotCache:
    def __init__(
        self, n_layer: int, slots: int, n_kv_head: int, columns: int, head_dim: int,
        dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu", state: RetentionState | None = None,
    ) -> None:
        """state: a retention model's states (one row per slot), held instead of keys and values."""
        shape = (slots, n_kv_head, columns, head_dim)
        self.state = state
        self.k = [] if state else [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.v = [] if state else [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.mask = torch.zeros(slots, columns, dtype=torch.long, device=device)  # 1 = the row's token
        self.slots, self.columns = slots, columns
        self.clock = 0  # the column the next decode step writes
        self.n = 0  # running rows are 0..n-1

    def rows(self, lo: int, hi: int) -> CacheRows | RetentionState:
        if self.state is not None:
            return self.state.rows(lo, hi)
        return CacheRows([k[lo:hi] for k in self.k], [v[lo:hi] for v in self.v], self.columns)

    def lengths(self) -> torch.Tensor:
        return self.mask[: self.n].sum(-1)  # (n,) tokens held per running row

    def add_rows(self, lengths: list[int]) -> tuple[int, int]:
        """Claim rows n..n+k-1 for prompts of these lengths (plus room for one decode step); returns (first row,
        start column). Every prompt ends at the clock, so the batch is left-padded from `start` on and its last
        column is real for every row; the caller's prefill writes columns start..clock-1."""
        if self.n + len(lengths) > self.slots:
            raise RuntimeError(f"{len(lengths)} new rows do not fit {self.slots - self.n} free slots")
        longest = max(lengths)
        if longest + 1 > self.columns:
            raise ValueError(f"a prompt of {longest} tokens does not fit a cache of {self.columns} columns")
        if max(self.clock, longest) + 1 > self.columns:
            self.compact()
        if self.n == 0:
            self.clock = 0
        self.clock = max(self.clock, longest)  # running rows see masked columns where the clock jumps
        first = self.n
        if self.state is not None:
            for s in self.state.s:
                s[first : first + len(lengths)].zero_()
        for row, length in enumerate(lengths, start=first):
            self.mask[row].zero_()
            self.mask[row, self.clock - length : self.clock] = 1
        self.n += len(lengths)
        return first, self.clock - longest

    def step_mask(self) -> torch.Tensor:
        """Before a decode step: mark the clock column for every running row; returns the (n, clock+1) mask."""
        if self.clock + 1 > self.columns:
            self.compact()
        self.mask[: self.n, self.clock] = 1
        return self.mask[: self.n, : self.clock + 1]

    def advance(self) -> None:
        self.clock += 1

    def remove(self, row: int) -> None:
        """Free `row`; the last running row moves into it (so running rows stay 0..n-1)."""
        last = self.n - 1
        if row != last:
            for buf in self.k + self.v:
                buf[row, :, : self.clock] = buf[last, :, : self.clock]
            for s in self.state.s if self.state is not None else ():
                s[row] = s[last]
            self.mask[row] = self.mask[last]
        self.mask[last].zero_()
        self.n -= 1
        if self.n == 0:
            self.clock = 0

    def compact(self) -> None:
        """Drop the gaps: each row's tokens, in order, end at column `longest`; the clock moves there."""
        lengths = self.lengths()
        longest = int(lengths.max()) if self.n else 0
        for row in range(self.n):
            src = torch.nonzero(self.mask[row, : self.clock]).flatten()  # (len,) the row's columns, in order
            dst = torch.arange(longest - len(src), longest, device=src.device)
            for buf in self.k + self.v:
                buf[row, :, dst] = buf[row, :, src]  # the read is a copy, so overlapping ranges are safe
            self.mask[row].zero_()
            self.mask[row, dst] = 1
        self.clock = longest
