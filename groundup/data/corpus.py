"""Text corpora shipped with groundup, and a checked reader for the user's own."""

from __future__ import annotations

import os
from pathlib import Path


def shakespeare_path() -> Path:
    """~1 MB of Shakespeare dialogue ("SPEAKER:\\nline\\n\\n", tiny-shakespeare style), public
    domain, built by scripts/make_shakespeare_corpus.py and shipped as package data."""
    # Resolved from this file rather than importlib.resources.files("groundup"): callers need a
    # real Path (open, np.memmap), which a zipped install could not give anyway, and this also
    # works while groundup is imported as a namespace package (e.g. from a bare checkout).
    return Path(__file__).resolve().parents[1] / "assets" / "shakespeare.txt"


def read_text_corpus(path: str | os.PathLike) -> str:
    """UTF-8 text of `path`; a missing or empty file is an error that says what to do."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"read_text_corpus(path={str(path)!r}): no such file; pass a UTF-8 text file "
            "(the bundled corpus is groundup.data.shakespeare_path(); if that is missing, "
            "reinstall groundup or rebuild it with scripts/make_shakespeare_corpus.py)"
        )
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise ValueError(f"read_text_corpus(path={str(path)!r}): the file is empty; pass a file with text in it")
    return text
