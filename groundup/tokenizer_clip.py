"""The CLIP text tokenizer (Radford et al. 2021, "Learning Transferable Visual Models From Natural
Language Supervision"), id for id the same as OpenAI CLIP's / open_clip's `SimpleTokenizer`.

CLIP's tokenizer is a lowercase byte-level BPE with "</w>" end-of-word markers: text is cleaned
(ftfy.fix_text, HTML entities unescaped twice, whitespace collapsed, lowercased), split with
CLIP's regex, mapped to GPT-2's byte-to-unicode alphabet and merged with 48,894 BPE merges.
Vocabulary: 256 byte symbols, their 256 "</w>" forms, one token per merge, then
<start_of_text> = 49406 and <end_of_text> = 49407 (49,408 ids; open_clip's names for OpenAI's
<|startoftext|> / <|endoftext|>). Here the split, byte mapping, BPE and decoding run in the Rust
`tokenizers` backend; only the cleaning is Python, because ftfy has no `tokenizers` normalizer.

The merges are `bpe_simple_vocab_16e6.txt.gz`, shipped inside the PyPI package open-clip-torch;
`clip_vocab_path()` finds it there without importing open_clip (whose import needs torchvision):

    pip install --no-deps open-clip-torch==3.3.0      # the merges file (ftfy comes with groundup)
    tok = ClipTokenizer()
    tok(["a photo of a cat"])        # LongTensor (1, 77): [49406, 320, 1125, 539, 320, 2368, 49407, 0, ...]

ftfy is optional: without it the cleaning falls back to Unicode NFC (a warning says so), which
differs from open_clip only on text that ftfy would repair (mojibake, fullwidth forms, ...).
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import os
import unicodedata
import warnings
from collections.abc import Sequence
from pathlib import Path

import regex
import tokenizers
import torch
from tokenizers import Regex, decoders, models, pre_tokenizers

from groundup.tokenizer import Tokenizer

__all__ = ["ClipTokenizer", "clip_vocab_path", "clip_clean", "CLIP_CONTEXT_LENGTH"]

CLIP_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
CLIP_CONTEXT_LENGTH = 77
SOT, EOT = "<start_of_text>", "<end_of_text>"
N_MERGES = 49152 - 256 - 2  # CLIP uses the first 48,894 merge lines of the file
# CLIP's split, without its leading "special tokens" alternatives (those are added tokens here)
_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_SPLIT_WITH_SPECIALS = regex.compile(f"{SOT}|{EOT}|{_SPLIT}", regex.IGNORECASE)  # CLIP's own, in Python


def clip_vocab_path(path: str | os.PathLike | None = None) -> Path:
    """`path` if given (it must exist), else open_clip's `bpe_simple_vocab_16e6.txt.gz`, located
    through the installed package's directory without importing open_clip."""
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(
                f"clip_vocab_path(path={str(file)!r}): no such file; pass CLIP's {CLIP_VOCAB_FILE} "
                "or leave path unset to use the copy inside open-clip-torch"
            )
        return file
    spec = importlib.util.find_spec("open_clip")  # top-level: finds the package, imports nothing
    dirs = list(spec.submodule_search_locations or []) if spec is not None else []
    for d in dirs:
        if (Path(d) / CLIP_VOCAB_FILE).is_file():
            return Path(d) / CLIP_VOCAB_FILE
    where = f"open_clip at {dirs[0]} has no {CLIP_VOCAB_FILE}" if dirs else "open_clip is not installed"
    raise FileNotFoundError(
        f"clip_vocab_path(): {where}. The CLIP vocabulary ships in the open-clip-torch package: "
        "pip install --no-deps open-clip-torch==3.3.0 (no torchvision "
        f"needed), or pass the path of a {CLIP_VOCAB_FILE} explicitly"
    )


_warned_no_ftfy = False


def clip_clean(text: str) -> str:
    """open_clip's "lower" cleaning: ftfy.fix_text, HTML unescape (twice), collapse whitespace, lowercase."""
    global _warned_no_ftfy
    try:
        import ftfy
        text = ftfy.fix_text(text)
    except ImportError:
        if not _warned_no_ftfy:
            warnings.warn("ftfy is not installed: CLIP text cleaning uses Unicode NFC instead of ftfy.fix_text, "
                          "so text ftfy would repair tokenizes unlike open_clip (pip install ftfy==6.3.1)",
                          stacklevel=2)
            _warned_no_ftfy = True
        text = unicodedata.normalize("NFC", text)
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).lower()


class ClipTokenizer(Tokenizer):
    """CLIP's BPE tokenizer as a groundup `Tokenizer`.

    `encode(text)` cleans `text` as open_clip does and returns its ids without <start_of_text> /
    <end_of_text>; `tok(texts, context_length=77)` is open_clip's `tokenize`: a (N, context_length)
    LongTensor of [sot] + ids + [eot], zero-padded, cut so that the last kept id is eot.
    `backend` expects cleaned text (a saved tokenizer.json does not clean or lowercase)."""

    def __init__(self, vocab_path: str | os.PathLike | None = None, context_length: int = CLIP_CONTEXT_LENGTH) -> None:
        self.context_length = context_length  # what tok(texts) pads to: the text tower's positions
        file = clip_vocab_path(vocab_path)
        try:
            lines = gzip.open(file).read().decode("utf-8").split("\n")
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"ClipTokenizer: {file} is not a gzipped CLIP merges file ({e})") from e
        merges = [tuple(line.split()) for line in lines[1:N_MERGES + 1]]
        if len(merges) != N_MERGES or any(len(m) != 2 for m in merges):
            raise ValueError(f"ClipTokenizer: {file} does not hold CLIP's {N_MERGES} BPE merges")
        byte_chars = _byte_symbols()
        symbols = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges] + [SOT, EOT]
        vocab = {s: i for i, s in enumerate(symbols)}  # later duplicates win, as in CLIP's dict(zip(...))
        tk = tokenizers.Tokenizer(models.BPE(vocab, merges, end_of_word_suffix="</w>"))
        tk.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.WhitespaceSplit(),  # cleaned text has single spaces only; CLIP drops them
            pre_tokenizers.Split(Regex(_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),  # GPT-2's byte -> unicode map
        ])
        tk.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Replace("</w>", " ")])
        tk.add_special_tokens([SOT, EOT])  # already in the vocabulary: they keep ids 49406, 49407
        super().__init__(tk)
        self.set_role("bos", self.sot_id)
        self.set_role("eos", self.eot_id)

    sot_id = property(lambda self: self.backend.token_to_id(SOT), doc="<start_of_text> id (49406).")
    eot_id = property(lambda self: self.backend.token_to_id(EOT), doc="<end_of_text> id (49407).")

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[list[int]]:
        """Ids of each text after CLIP's cleaning; with `add_special_tokens`, wrapped in sot ... eot."""
        if isinstance(texts, str):
            raise TypeError("encode_batch(texts) takes a list of strings; for one string use encode(text)")
        cleaned = [clip_clean(t) for t in texts]
        out = [e.ids for e in self.backend.encode_batch(cleaned, add_special_tokens=False)]
        for i, t in enumerate(cleaned):
            if SOT in t or EOT in t:  # CLIP honours a special only where its regex starts a piece there
                out[i] = self._encode_pieces(t)
        return [[self.sot_id, *ids, self.eot_id] for ids in out] if add_special_tokens else out

    def _encode_pieces(self, text: str) -> list[int]:
        pieces = _SPLIT_WITH_SPECIALS.findall(text)
        special = {SOT: self.sot_id, EOT: self.eot_id}
        plain = iter(e.ids for e in self.backend.encode_batch([p for p in pieces if p not in special]))
        return [i for p in pieces for i in ([special[p]] if p in special else next(plain))]

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        """open_clip.tokenize: (N, context_length) LongTensor, [sot] + ids + [eot], zero-padded (None: the
        tokenizer's own context_length, 77 unless given)."""
        context_length = self.context_length if context_length is None else context_length
        if context_length < 2:
            raise ValueError(f"context_length={context_length} leaves no room for <start_of_text> and <end_of_text>")
        rows = self.encode_batch([texts] if isinstance(texts, str) else list(texts), add_special_tokens=True)
        result = torch.zeros(len(rows), context_length, dtype=torch.long)
        for r, ids in enumerate(rows):
            if len(ids) > context_length:
                ids = ids[:context_length - 1] + [self.eot_id]
            result[r, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        return result

    def __repr__(self) -> str:
        return f"ClipTokenizer(vocab_size={self.vocab_size})"


def _byte_symbols() -> list[str]:
    """CLIP's first 256 vocabulary entries: GPT-2's bytes_to_unicode values in its dict order, i.e. the
    188 printable bytes as themselves, then the other 68 bytes as chr(256), chr(257), ..."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(256 - len(printable))]
