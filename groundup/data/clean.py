"""Dataset cleaning: PII scrubbing, separator and length filters, exact and near-duplicate removal.

    records ─► scrub PII (emails, IPs, SSNs, Luhn-valid cards, phones) ─► separator check
            ─► what finetune would reject (e.g. an empty completion) ─► length filters
            ─► exact duplicates (normalised text hash) ─► near duplicates (MinHash + LSH, Jaccard) ─► kept

Every removal and every change is in the report with its (1-based) line number and reason; the first
occurrence of a (near-)duplicate is kept. Everything is deterministic.

Near duplicates (Broder 1997; Leskovec et al., Mining of Massive Datasets ch. 3): each record's set of
word shingles gets a MinHash signature (k universal hashes h(x) = (a x + b) mod p, minimum over the set;
P[min agrees] = Jaccard). LSH cuts the signature into b bands of r rows; records sharing a band become
candidates, and a candidate is removed only if the exact Jaccard of the shingle sets reaches the threshold,
so the signature's estimation noise never decides alone. The band shape is chosen so that a pair at the
threshold becomes a candidate with probability >= 0.99.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from groundup.data.instruct_jsonl import (
    DEFAULT_SEPARATOR,
    empty_file_error,
    instruction_format,
    json_line,
    record_problem,
    write_jsonl,
)

if TYPE_CHECKING:  # the CLI reads CleanConfig for --help without loading the tokenizers library
    from groundup.tokenizer import Tokenizer

MERSENNE = (1 << 31) - 1  # p for the universal hashes: a * x + b < 2**63 fits in uint64

EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
CARD = re.compile(r"(?<![\d-])(?<!\d )\d(?:[ -]?\d){12,18}(?![\d])(?! \d)(?!-\d)")
PHONE = re.compile(
    r"(?<![\w+])(?<!\d[-. ])"  # not inside a longer number
    r"(?:"
    r"\+\d{1,3}[-. ]?(?:\(\d{1,4}\)|\d{1,4})(?:[-. ]?\d{2,4}){1,4}"  # international: +44 20 7946 0958
    r"|(?:\(\d{3}\)\s?|\d{3}[-. ]?)\d{3}[-. ]?\d{4}"  # US: (555) 123-4567, 555.123.4567, 5551234567
    r")(?!\w)(?![-. ]\d)"
)
# US social security numbers (and ITINs) as written: 123-45-6789. Dates (2024-01-15, 01-15-2024) have other
# group lengths; a part of all zeros is never issued, so 000-12-3456 / 123-00-4567 / 123-45-0000 stay.
SSN = re.compile(r"(?<![\w-])(?!000)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\w-])")
# Candidates only: ipaddress decides (IPv4: octets 0-255, no leading zeros). A dotted quad that reads as a
# version stays: "v1.2.3.4", "version 1.2.3.4", "1.2.3.4-beta", "1.2.3.4+build", "pkg-1.2.3.4", "1.2.3.4.5".
IPV4 = re.compile(r"(?<![\w.])(?<![A-Za-z]-)\d{1,3}(?:\.\d{1,3}){3}(?![\w+])(?!\.\w)(?!-\w*[A-Za-z])")
IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}"  # groups; "::" is an empty one
                  r"(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f]{1,4})?(?![\w:])")  # last group, or IPv4-mapped
VERSION_WORD = re.compile(r"(?:\b(?:version|ver|release|build|v)\.?\s*)$", re.IGNORECASE)


@dataclass
class CleanConfig:
    """What clean_dataset does. None disables a filter."""

    exact_dedup: bool = True
    near_dup_threshold: float | None = 0.8  # Jaccard of word-shingle sets at or above which a record is removed
    num_perm: int = 128  # MinHash signature length
    shingle_size: int = 3  # words per shingle
    scrub_pii: bool = True
    min_chars: int | None = None
    max_chars: int | None = None
    min_tokens: int | None = None  # needs a tokenizer
    max_tokens: int | None = None
    separator: str | None = DEFAULT_SEPARATOR  # a record whose prompt_field contains it is removed
    finetune_check: bool = True  # remove instruction records finetune would reject (e.g. an empty completion)
    prompt_field: str = "prompt"
    seed: int = 0  # for the MinHash hash functions

    def __post_init__(self) -> None:
        if self.near_dup_threshold is not None and not 0.0 < self.near_dup_threshold <= 1.0:
            raise ValueError(f"CleanConfig(near_dup_threshold={self.near_dup_threshold}): must be in (0, 1], e.g. 0.8")
        if self.num_perm < 1 or self.shingle_size < 1:
            raise ValueError(f"CleanConfig(num_perm={self.num_perm}, shingle_size={self.shingle_size}): "
                             "both must be >= 1")


@dataclass
class CleanReport:
    """Counts and line numbers of everything removed or changed, with a reason for each removal."""

    n_in: int = 0
    n_kept: int = 0
    removed: dict[str, list[int]] = field(default_factory=dict)  # reason -> lines
    details: dict[int, str] = field(default_factory=dict)  # line -> why (e.g. "near duplicate of line 3")
    pii: dict[str, int] = field(default_factory=dict)  # "EMAIL" / "PHONE" / "CARD" -> replacements
    changed_lines: list[int] = field(default_factory=list)  # lines whose text was scrubbed

    def _remove(self, line: int, reason: str, detail: str) -> None:
        self.removed.setdefault(reason, []).append(line)
        self.details[line] = detail

    def summary(self) -> str:
        parts = [f"kept {self.n_kept}/{self.n_in}"]
        for reason, lines in self.removed.items():
            parts.append(f"removed {len(lines)} {reason} (lines {lines[:5]}{' ...' if len(lines) > 5 else ''})")
        if self.changed_lines:
            parts.append(f"scrubbed PII {self.pii} in {len(self.changed_lines)} record(s)")
        return "; ".join(parts)


# --- PII -------------------------------------------------------------------------------------------
def luhn_valid(digits: str) -> bool:
    """The Luhn checksum of a card number (every second digit from the right doubled)."""
    if not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _is_ip(m: re.Match) -> bool:
    """A candidate that ipaddress accepts, not introduced as a version ("version 1.2.3.4"); an IPv6 needs 3+
    groups, so slices and ratios ("a[1::2]", "::1") stay."""
    text = m.group()
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return False
    if ip.version == 6:
        return len([g for g in re.split(r"[:.]", text) if g]) >= 3
    return VERSION_WORD.search(m.string, 0, m.start()) is None


def scrub_pii(text: str) -> tuple[str, dict[str, int]]:
    """`text` with emails -> [EMAIL], IPv4 and IPv6 addresses -> [IP], US social security numbers
    (123-45-6789) -> [SSN], Luhn-valid 13-19 digit card numbers -> [CARD], phone numbers (US and
    +international formats, 7-15 digits) -> [PHONE]; and the count of each replacement. Dates
    (2024-01-15) and versions (1.2.3, 1.2.3.4-beta) are not PII."""
    counts = {"EMAIL": 0, "IP": 0, "SSN": 0, "CARD": 0, "PHONE": 0}

    def sub(kind: str, ok: object = None):
        def repl(m: re.Match) -> str:
            if ok is not None and not ok(re.sub(r"\D", "", m.group())):
                return m.group()
            counts[kind] += 1
            return f"[{kind}]"
        return repl

    text = EMAIL.sub(sub("EMAIL"), text)
    for pattern in (IPV6, IPV4):
        text = pattern.sub(lambda m: sub("IP")(m) if _is_ip(m) else m.group(), text)
    text = SSN.sub(sub("SSN"), text)
    text = CARD.sub(sub("CARD", luhn_valid), text)
    text = PHONE.sub(sub("PHONE", lambda d: 7 <= len(d) <= 15), text)
    return text, {k: v for k, v in counts.items() if v}


# --- duplicates ------------------------------------------------------------------------------------
def normalize(text: str) -> str:
    """Lowercase with whitespace runs collapsed: the key for exact duplicates."""
    return " ".join(text.lower().split())


def shingles(text: str, size: int = 3) -> set[str]:
    """Word `size`-grams of the normalised text (the whole text if shorter)."""
    words = re.findall(r"\w+", text.lower())
    if len(words) <= size:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i: i + size]) for i in range(len(words) - size + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def hash_params(num_perm: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) of num_perm universal hash functions h(x) = (a x + b) mod p, with 1 <= a < p, 0 <= b < p."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, MERSENNE, size=num_perm, dtype=np.uint64)
    b = rng.integers(0, MERSENNE, size=num_perm, dtype=np.uint64)
    return a, b


def minhash(shingle_set: set[str], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """MinHash signature (num_perm,) of a set of strings; crc32 gives a stable (unsalted) base hash."""
    if not shingle_set:
        return np.full(len(a), MERSENNE, dtype=np.uint64)
    x = np.fromiter((zlib.crc32(s.encode()) % MERSENNE for s in shingle_set), dtype=np.uint64)  # (S,)
    return ((a[:, None] * x[None, :] + b[:, None]) % MERSENNE).min(axis=1)  # (num_perm, S) -> (num_perm,)


def estimate_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """Fraction of agreeing signature rows: an unbiased estimate of the Jaccard similarity."""
    return float((sig_a == sig_b).mean())


def lsh_bands(num_perm: int, threshold: float, recall: float = 0.99) -> tuple[int, int]:
    """(bands, rows): the most rows per band such that a pair at `threshold` is a candidate with
    probability 1 - (1 - t^r)^b >= recall (more rows = fewer false candidates to verify)."""
    best = (num_perm, 1)
    for r in range(1, num_perm + 1):
        b = num_perm // r
        if 1 - (1 - threshold**r) ** b >= recall:
            best = (b, r)
    return best


class _NearDupIndex:
    """LSH buckets over kept records; `find` returns the first kept record within the threshold."""

    def __init__(self, cfg: CleanConfig) -> None:
        self.cfg = cfg
        self.a, self.b = hash_params(cfg.num_perm, cfg.seed)
        self.bands, self.rows = lsh_bands(cfg.num_perm, cfg.near_dup_threshold)
        self.buckets: list[dict[bytes, list[int]]] = [{} for _ in range(self.bands)]
        self.sets: dict[int, set[str]] = {}

    def find(self, line: int, text: str) -> tuple[int, float] | None:
        s = shingles(text, self.cfg.shingle_size)
        if not s:  # no words: nothing to compare (two texts of punctuation are not near duplicates)
            return None
        sig = minhash(s, self.a, self.b)
        keys = [sig[i * self.rows: (i + 1) * self.rows].tobytes() for i in range(self.bands)]
        candidates = sorted({c for i, k in enumerate(keys) for c in self.buckets[i].get(k, ())})
        for c in candidates:
            j = jaccard(s, self.sets[c])
            if j >= self.cfg.near_dup_threshold:
                return c, j
        self.sets[line] = s
        for i, k in enumerate(keys):
            self.buckets[i].setdefault(k, []).append(line)
        return None


# --- the pipeline ----------------------------------------------------------------------------------
def _check(records: Sequence[dict], text_fields: Sequence[str], lines: Sequence[int]) -> None:
    if isinstance(text_fields, str) or not text_fields:
        raise ValueError(f"text_fields={text_fields!r} must be a non-empty list of field names, e.g. ['prompt']")
    for r, line in zip(records, lines, strict=True):
        if not isinstance(r, dict):
            raise ValueError(f"line {line}: expected a JSON object (dict), got {type(r).__name__}")
        for f in text_fields:
            if not isinstance(r.get(f), str):
                raise ValueError(f"line {line}: field {f!r} must be a string, got {r.get(f)!r:.40}; fix the record "
                                 "or remove that field from text_fields")


def _length_problem(text: str, cfg: CleanConfig, tokenizer: Tokenizer | None) -> str | None:
    n = len(text)
    if cfg.min_chars is not None and n < cfg.min_chars:
        return f"{n} chars < min_chars={cfg.min_chars}"
    if cfg.max_chars is not None and n > cfg.max_chars:
        return f"{n} chars > max_chars={cfg.max_chars}"
    if cfg.min_tokens is None and cfg.max_tokens is None:
        return None
    t = len(tokenizer.encode(text))
    if cfg.min_tokens is not None and t < cfg.min_tokens:
        return f"{t} tokens < min_tokens={cfg.min_tokens}"
    if cfg.max_tokens is not None and t > cfg.max_tokens:
        return f"{t} tokens > max_tokens={cfg.max_tokens}"
    return None


def _finetune_problem(rec: dict, cfg: CleanConfig) -> str | None:
    """Why finetune's loader would reject an instruction record (the loader's own check and words), or None;
    records of no instruction shape ({"text": ...}) are not its business."""
    if instruction_format(rec) is None:
        return None
    why = record_problem(rec, separator=cfg.separator or "")
    return f"{why} (finetune would reject it)" if why else None


def _clean(records: Sequence[dict], lines: Sequence[int], text_fields: Sequence[str], cfg: CleanConfig,
           tokenizer: Tokenizer | None) -> tuple[list[dict], CleanReport]:
    _check(records, text_fields, lines)
    if (cfg.min_tokens is not None or cfg.max_tokens is not None) and tokenizer is None:
        raise ValueError("min_tokens/max_tokens need a tokenizer: pass tokenizer= or use min_chars/max_chars")
    report = CleanReport(n_in=len(records))
    seen: dict[str, int] = {}
    near = _NearDupIndex(cfg) if cfg.near_dup_threshold is not None else None
    kept = []
    for rec, line in zip(records, lines, strict=True):
        rec = dict(rec)
        if cfg.scrub_pii:
            for f in text_fields:
                rec[f], counts = scrub_pii(rec[f])
                for k, v in counts.items():
                    report.pii[k] = report.pii.get(k, 0) + v
                if counts and (not report.changed_lines or report.changed_lines[-1] != line):
                    report.changed_lines.append(line)
        prompt = rec.get(cfg.prompt_field)
        if cfg.separator and isinstance(prompt, str) and cfg.separator in prompt:
            why = f"{cfg.prompt_field!r} contains the separator {cfg.separator!r}"
            report._remove(line, "separator_in_prompt", why)
            continue
        if cfg.finetune_check and (why := _finetune_problem(rec, cfg)):
            report._remove(line, "rejected_by_finetune", why)
            continue
        text = "\n".join(rec[f] for f in text_fields)
        try:
            problem = _length_problem(text, cfg, tokenizer)
        except ValueError as e:  # a tokenizer that cannot encode this record's text
            raise ValueError(f"line {line}: {e}") from e
        if problem:
            report._remove(line, "length", problem)
            continue
        if cfg.exact_dedup:
            key = hashlib.sha1(normalize(text).encode()).hexdigest()
            if key in seen:
                report._remove(line, "exact_duplicate", f"duplicate of line {seen[key]}")
                continue
            seen[key] = line
        if near is not None:
            hit = near.find(line, text)
            if hit is not None:
                report._remove(line, "near_duplicate", f"near duplicate of line {hit[0]} (Jaccard {hit[1]:.2f})")
                continue
        kept.append(rec)
    report.n_kept = len(kept)
    return kept, report


def clean_dataset(records: Sequence[dict], text_fields: Sequence[str], config: CleanConfig | None = None,
                  tokenizer: Tokenizer | None = None) -> tuple[list[dict], CleanReport]:
    """(kept records, report). `text_fields` are the string fields scrubbed, measured and compared
    (joined by newlines). Records are copied, never modified in place; line numbers are 1-based indices."""
    return _clean(records, range(1, len(records) + 1), text_fields, config or CleanConfig(), tokenizer)


def clean_jsonl(in_path: str | os.PathLike, out_path: str | os.PathLike, text_fields: Sequence[str],
                config: CleanConfig | None = None, tokenizer: Tokenizer | None = None) -> CleanReport:
    """clean_dataset on a JSONL file, writing the kept records to `out_path`; report line numbers are the
    file's. A line that is not valid JSON is an error naming it; blank lines are skipped; a file with no records
    is an error (EmptyFileError)."""
    in_path = Path(in_path)
    if not in_path.is_file():
        raise FileNotFoundError(f"clean_jsonl(in_path={str(in_path)!r}): no such file; pass a JSONL file")
    records, lines = [], []
    with open(in_path, encoding="utf-8") as f:
        for n, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                records.append(json_line(text))
            except ValueError as e:
                raise ValueError(f"{in_path} line {n}: {e}; fix it") from None
            lines.append(n)
    if not records:
        raise empty_file_error(in_path)
    kept, report = _clean(records, lines, text_fields, config or CleanConfig(), tokenizer)
    write_jsonl(out_path, kept)
    return report


__all__ = [
    "CleanConfig", "CleanReport", "clean_dataset", "clean_jsonl", "estimate_jaccard", "hash_params", "jaccard",
    "lsh_bands", "luhn_valid", "minhash", "normalize", "scrub_pii", "shingles",
]
