"""Causal-LM data: one token stream on disk (nanoGPT's train.bin / val.bin), random windows.

    text --tokenize--> [t0 t1 t2 ... tN] --split--> train.bin | val.bin   (raw uint16/uint32)
    get_batch: start s ~ U[0, N-T)   input_ids = t[s : s+T]   labels = t[s+1 : s+T+1]
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from groundup.tokenizer import Tokenizer

SPLITS = ("train", "val")


def prepare_lm_data(text: str, tokenizer: Tokenizer, out_dir: str | os.PathLike,
                    val_fraction: float = 0.1, block_size: int = 256) -> LMData:
    """Tokenize `text` as one stream, keep the last `val_fraction` of tokens for validation,
    and write `train.bin`, `val.bin`, `meta.json` to `out_dir` (each atomically). The whole
    text is encoded in one call so BPE merges never straddle an artificial chunk boundary."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"prepare_lm_data(val_fraction={val_fraction}): must be in [0, 1), e.g. 0.1")
    if not text:
        raise ValueError("prepare_lm_data(text=''): text is empty; pass the corpus to tokenize")
    dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32  # half the disk for <= 65536
    ids = np.asarray(tokenizer.encode(text), dtype=dtype)  # (N,)
    n_val = int(len(ids) * val_fraction)
    arrays = {"train": ids[: len(ids) - n_val], "val": ids[len(ids) - n_val:]}
    _check_lengths(arrays, block_size)  # before anything is written
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split, arr in arrays.items():
        _atomic_write(out / f"{split}.bin", arr.tobytes())
    meta = {"dtype": np.dtype(dtype).name, "vocab_size": tokenizer.vocab_size,
            **{f"{split}_tokens": len(arr) for split, arr in arrays.items()}}
    _atomic_write(out / "meta.json", json.dumps(meta, indent=2).encode())
    return LMData(out, block_size)


def _check_lengths(arrays: Mapping[str, np.ndarray], block_size: int) -> None:
    """Every non-empty split must hold one window (block_size inputs + one shifted label); an empty val split
    (val_fraction=0) is allowed."""
    for split, arr in arrays.items():
        if (split == "train" or len(arr)) and len(arr) < block_size + 1:
            raise ValueError(
                f"the text gives the {split!r} split {len(arr)} tokens but block_size={block_size} needs at least "
                f"{block_size + 1} (inputs plus one shifted label); use a smaller block_size or more text"
                + (", or another val_fraction" if split == "val" else "")
            )


class LMData:
    """Random windows of a token stream, from `prepare_lm_data`'s folder or from in-memory
    arrays `{"train": ids, "val": ids}`. Files are memory-mapped, never read whole."""

    def __init__(self, source: str | os.PathLike | Mapping[str, np.ndarray], block_size: int) -> None:
        if block_size < 1:
            raise ValueError(f"LMData(block_size={block_size}): must be >= 1 (the context length)")
        self.block_size = block_size
        self.vocab_size: int | None = None
        if isinstance(source, Mapping):
            self.splits = {k: np.asarray(v) for k, v in source.items()}
        else:
            self.splits = self._open(Path(source))

    def _open(self, folder: Path) -> dict[str, np.ndarray]:
        meta_file = folder / "meta.json"
        if not meta_file.is_file():
            raise FileNotFoundError(
                f"LMData(source={str(folder)!r}): no meta.json there; create the folder with "
                "prepare_lm_data(text, tokenizer, out_dir)"
            )
        meta = json.loads(meta_file.read_text())
        self.vocab_size = meta["vocab_size"]
        splits = {}
        for split in SPLITS:
            n = meta[f"{split}_tokens"]
            # np.memmap cannot map an empty file (val_fraction=0): use an empty array instead
            splits[split] = (np.memmap(folder / f"{split}.bin", dtype=meta["dtype"], mode="r", shape=(n,))
                             if n else np.zeros(0, dtype=meta["dtype"]))
        return splits

    def num_tokens(self, split: str) -> int:
        return len(self._split(split))

    def _split(self, split: str) -> np.ndarray:
        if split not in self.splits:
            raise ValueError(f"get_batch(split={split!r}): unknown split; use one of {sorted(self.splits)}")
        return self.splits[split]

    def get_batch(self, split: str, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """`batch_size` random windows; all randomness comes from `generator`, so saving its
        state (generator.get_state()) is enough to resume the exact batch sequence."""
        data, T = self._split(split), self.block_size
        if len(data) < T + 1:
            raise ValueError(
                f"split {split!r} has {len(data)} tokens but block_size={T} needs at least {T + 1} "
                "(inputs plus one shifted label); use a smaller block_size or more text / val_fraction"
            )
        starts = torch.randint(len(data) - T, (batch_size,), generator=generator).numpy()
        idx = starts[:, None] + np.arange(T + 1)  # (B, T+1)
        window = torch.from_numpy(data[idx].astype(np.int64))  # (B, T+1)
        return {"input_ids": window[:, :-1], "labels": window[:, 1:]}  # (B, T) each


def _atomic_write(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, then rename: readers never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
