"""Tokenizers: char, byte-level BPE (GPT-2), WordPiece (BERT), all one file format.

Every tokenizer here is a Hugging Face `tokenizers.Tokenizer` underneath, so a single
`tokenizer.json` saves and loads all of them and they interoperate with the HF ecosystem:

    char_tokenizer(text)            WordLevel over single characters (nanoGPT's char model)
    train_bpe(texts, vocab_size)    byte-level BPE, lossless on any Unicode (Radford et al. 2019)
    train_wordpiece(texts, ...)     lowercase WordPiece (Devlin et al. 2019, BERT)
    wordpiece_from_vocab(vocab.txt) an existing BERT vocabulary

`Tokenizer.encode` adds no special tokens by default: groundup's data builders place
[CLS]/[SEP]/<|endoftext|> themselves, so what `encode` returns is exactly the text.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import tokenizers
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers

__all__ = [
    "Tokenizer", "char_tokenizer", "train_bpe", "train_wordpiece", "wordpiece_from_vocab",
    "load_tokenizer",
]

TOKENIZER_FILE = "tokenizer.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # the file name transformers uses too
ROLES_FILE = "tokenizer_config.json"  # bos_token / eos_token / ... as Hugging Face names them
SAVED_ROLES = ("bos", "eos", "pad", "unk")
BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

# Special-token roles, found by name among the tokenizer's *special* added tokens, first match
# wins. GPT-2 uses <|endoftext|> both to begin and to end a document, so it is last for bos/eos.
_ROLES: dict[str, tuple[str, ...]] = {
    "bos": ("<s>", "<bos>", "[BOS]", "<|begin_of_text|>", "<|startoftext|>", "<|endoftext|>"),
    "eos": ("</s>", "<eos>", "[EOS]", "<|end_of_text|>", "<|endoftext|>"),
    "pad": ("[PAD]", "<pad>", "<|pad|>"),
    "cls": ("[CLS]", "<cls>"),
    "sep": ("[SEP]", "<sep>"),
    "mask": ("[MASK]", "<mask>"),
    "unk": ("[UNK]", "<unk>", "<|unk|>"),
}


class Tokenizer:
    """A thin, typed wrapper over `tokenizers.Tokenizer` (kept as `.backend`)."""

    def __init__(self, backend: tokenizers.Tokenizer) -> None:
        self.backend = backend
        self.chat_template: str | None = None  # Jinja chat markup, when the checkpoint ships one
        specials = {t.content: i for i, t in backend.get_added_tokens_decoder().items() if t.special}
        self._role_ids = {
            role: next((specials[n] for n in names if n in specials), None)
            for role, names in _ROLES.items()
        }

    # --- encoding -------------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`; with `add_special_tokens` the post-processor's template
        (e.g. "[CLS] $A [SEP]" for WordPiece) is applied."""
        return self.encode_batch([text], add_special_tokens)[0]

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[list[int]]:
        """Token ids of each text, encoded in parallel by the Rust backend."""
        if isinstance(texts, str):
            raise TypeError("encode_batch(texts) takes a list of strings; for one string use encode(text)")
        try:
            return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)]
        except Exception as e:  # tokenizers raises a bare Exception, e.g. for an unknown char
            known = self.backend.get_vocab()
            missing = sorted({c for t in texts for c in t if c not in known})[:10]
            raise ValueError(
                f"cannot encode text ({e}); characters not in the vocabulary: {missing}. A char "
                "tokenizer knows only the characters it was built from: rebuild it with "
                "char_tokenizer(text) on text containing them all, or use train_bpe (any text)"
            ) from e

    def encode_pair(self, a: str, b: str) -> tuple[list[int], list[int]]:
        """BERT sentence pair "[CLS] a [SEP] b [SEP]" -> (ids, token_type_ids: 0 for a, 1 for b)."""
        cls, sep = self.cls_id, self.sep_id
        if cls is None or sep is None:
            raise ValueError(
                "encode_pair needs [CLS] and [SEP] special tokens; this tokenizer has none: "
                "build it with train_wordpiece(...) or wordpiece_from_vocab(...)"
            )
        ia, ib = self.encode_batch([a, b])
        ids = [cls, *ia, sep, *ib, sep]
        return ids, [0] * (len(ia) + 2) + [1] * (len(ib) + 1)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids`. Special tokens are kept by default so decode(encode(t)) == t."""
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    # --- vocabulary -----------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (the embedding table needs this many rows)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self.backend.id_to_token(i)

    @property
    def special_ids(self) -> set[int]:
        """Ids of all special added tokens (never masked, never split)."""
        return {i for i, t in self.backend.get_added_tokens_decoder().items() if t.special}

    def set_role(self, role: str, token_id: int) -> None:
        """Declare which id plays a role (bos, eos, pad, ...) when a checkpoint says so explicitly."""
        if role not in self._role_ids:
            raise ValueError(f"unknown token role {role!r}; roles are {sorted(self._role_ids)}")
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"{role} id {token_id} is outside the vocabulary (size {self.vocab_size})")
        self._role_ids[role] = token_id

    bos_id = property(lambda self: self._role_ids["bos"], doc="Begin-of-sequence id or None.")
    eos_id = property(lambda self: self._role_ids["eos"], doc="End-of-sequence id or None.")
    pad_id = property(lambda self: self._role_ids["pad"], doc="Padding id or None.")
    cls_id = property(lambda self: self._role_ids["cls"], doc="[CLS] id or None.")
    sep_id = property(lambda self: self._role_ids["sep"], doc="[SEP] id or None.")
    mask_id = property(lambda self: self._role_ids["mask"], doc="[MASK] id or None.")
    unk_id = property(lambda self: self._role_ids["unk"], doc="Unknown-token id or None.")

    # --- files ----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write `tokenizer.json` into directory `path` (created), or to `path` if it ends in
        .json, and beside it tokenizer_config.json naming the bos / eos / pad / unk tokens (Hugging Face's keys), so
        roles set from a checkpoint's word (a GGUF's eos <|im_end|>) survive. Each file is written to a temp file
        first and renamed, so a crash never leaves half a file."""
        path = Path(path)
        file = path if path.suffix == ".json" else path / TOKENIZER_FILE
        file.parent.mkdir(parents=True, exist_ok=True)
        roles = {f"{r}_token": self.id_to_token(i) for r in SAVED_ROLES if (i := self._role_ids[r]) is not None}
        for target, text in ((file, self.backend.to_str(pretty=True)), (file.parent / ROLES_FILE, json.dumps(roles))):
            tmp = target.with_name(target.name + ".tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, target)
        if self.chat_template is not None:
            (file.parent / CHAT_TEMPLATE_FILE).write_text(self.chat_template, encoding="utf-8")
        return file

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self.backend.to_str() == other.backend.to_str()

    def __repr__(self) -> str:
        model = type(self.backend.model).__name__
        return f"Tokenizer({model}, vocab_size={self.vocab_size})"


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load a `tokenizer.json` (or a directory holding one), as written by `Tokenizer.save`
    or by Hugging Face `tokenizers`/`transformers`."""
    path = Path(path)
    file = path / TOKENIZER_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(
            f"load_tokenizer(path={str(path)!r}): no {TOKENIZER_FILE} there; pass a directory "
            f"containing {TOKENIZER_FILE} or the file itself (create one with Tokenizer.save)"
        )
    try:
        tok = Tokenizer(tokenizers.Tokenizer.from_file(str(file)))
    except Exception as e:
        raise ValueError(f"load_tokenizer: {file} is not a valid tokenizers JSON file ({e})") from e
    template = file.parent / CHAT_TEMPLATE_FILE
    tok.chat_template = template.read_text(encoding="utf-8") if template.is_file() else None
    roles = file.parent / ROLES_FILE
    declared = json.loads(roles.read_text(encoding="utf-8")) if roles.is_file() else {}
    for role in SAVED_ROLES:
        found = declared_id(tok, declared.get(f"{role}_token"))
        if found is not None:
            tok.set_role(role, found)  # the saved word wins over the guess by token name
    return tok


def declared_id(tok: Tokenizer, value: object) -> int | None:
    """The id of a token as tokenizer_config.json names it (a string, or {"content": ...}); None if unknown."""
    if isinstance(value, dict):
        value = value.get("content")
    return tok.token_to_id(value) if isinstance(value, str) else None


# --- constructors ----------------------------------------------------------------------------
def char_tokenizer(text: str, special_tokens: Sequence[str] = ()) -> Tokenizer:
    """One id per distinct character of `text`, in sorted order (ids match nanoGPT's
    shakespeare_char); `special_tokens`, if any, get the ids after the characters."""
    if not text:
        raise ValueError("char_tokenizer(text=''): text is empty; pass the corpus whose characters form the vocabulary")
    vocab = {c: i for i, c in enumerate(sorted(set(text)))}
    # WordLevel wants an unk name; "<unk>" is not in the vocab, so an unknown char raises.
    tk = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every char
    tk.decoder = decoders.Fuse()  # join the pieces with nothing between them
    tk.add_special_tokens(list(special_tokens))
    return Tokenizer(tk)


def train_bpe(
    texts: Iterable[str], vocab_size: int, special_tokens: Sequence[str] = ("<|endoftext|>",)
) -> Tokenizer:
    """Byte-level BPE like GPT-2: text -> UTF-8 bytes -> merges, so every string round-trips.
    `vocab_size` counts the 256 byte symbols and the special tokens."""
    minimum = 256 + len(special_tokens)
    if vocab_size < minimum:
        raise ValueError(
            f"train_bpe(vocab_size={vocab_size}) is too small: the 256 byte symbols and "
            f"{len(special_tokens)} special token(s) need {minimum}; use vocab_size >= {minimum}"
        )
    tk = tokenizers.Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's split regex
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(special_tokens), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen or not
    )
    _train(tk, trainer, texts, "train_bpe")
    return Tokenizer(tk)


def train_wordpiece(
    texts: Iterable[str], vocab_size: int, special_tokens: Sequence[str] = BERT_SPECIALS
) -> Tokenizer:
    """Lowercase WordPiece like BERT-base-uncased ("playing" -> "play", "##ing").

    Trained as HF's WordPieceTrainer does (BPE merges over words, "##" marking non-initial pieces), but
    reproducibly: that trainer adds the "##" characters in hash-map order, so equal-count merges, and with
    them the vocabulary, differ from process to process. Here every non-initial character is first mapped to
    a private-use twin, the prefix-free BPE trainer (deterministic) learns the merges, and the twins become
    "##" pieces again."""
    if "[UNK]" not in special_tokens:
        raise ValueError(f"train_wordpiece(special_tokens={tuple(special_tokens)}): must include '[UNK]'")
    bert = _bert_pipeline(models.WordPiece(unk_token="[UNK]"), lowercase=True)
    split = lambda t: [w for w, _ in bert.pre_tokenizer.pre_tokenize_str(bert.normalizer.normalize_str(t))]
    marked = (" ".join(w[0] + "".join(map(_twin, w[1:])) for w in split(t)) for t in _as_list(texts))
    tk = tokenizers.Tokenizer(models.BPE(unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    _train(tk, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens), show_progress=False),
           marked, "train_wordpiece")
    if tk.get_vocab_size() > vocab_size:  # the trainer keeps the whole alphabet regardless
        raise ValueError(
            f"train_wordpiece(vocab_size={vocab_size}) is too small: the characters of the text "
            f"plus special tokens alone need {tk.get_vocab_size()}; use a larger vocab_size"
        )
    vocab: dict[str, int] = {}
    for t, _ in sorted(tk.get_vocab().items(), key=lambda kv: kv[1]):
        piece = t if t in special_tokens else "##" * _is_twin(t[0]) + "".join(map(_untwin, t))
        vocab.setdefault(piece, len(vocab))  # ids stay dense if an untwinnable character made two pieces equal
    bert.model = models.WordPiece(vocab, unk_token="[UNK]")
    bert.add_special_tokens(list(special_tokens))  # keeps their ids, never split
    return _with_bert_template(bert)


_TWIN = 0xF0000  # Unicode plane 15, private use: no text character lands there


def _twin(c: str) -> str:
    return chr(_TWIN + ord(c)) if ord(c) < 0xFFFE else c  # astral characters stay (they cannot be twinned)


def _is_twin(c: str) -> bool:
    return _TWIN <= ord(c) < _TWIN + 0xFFFE


def _untwin(c: str) -> str:
    return chr(ord(c) - _TWIN) if _is_twin(c) else c


def wordpiece_from_vocab(vocab_txt_path: str | os.PathLike, lowercase: bool = True) -> Tokenizer:
    """A BERT `vocab.txt` (one token per line, line number = id) as a WordPiece tokenizer."""
    path = Path(vocab_txt_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"wordpiece_from_vocab(vocab_txt_path={str(path)!r}): no such file; pass a BERT vocab.txt"
        )
    tokens = path.read_text(encoding="utf-8").splitlines()
    vocab = {t: i for i, t in enumerate(tokens)}
    if "[UNK]" not in vocab:
        raise ValueError(f"wordpiece_from_vocab: {path} has no [UNK] line; is it a BERT vocab.txt?")
    tk = _bert_pipeline(models.WordPiece(vocab, unk_token="[UNK]"), lowercase=lowercase)
    tk.add_special_tokens([t for t in BERT_SPECIALS if t in vocab])  # keeps their ids, never split
    return _with_bert_template(tk)


# --- helpers ---------------------------------------------------------------------------------
def _as_list(texts: Iterable[str] | str) -> Iterable[str]:
    return [texts] if isinstance(texts, str) else texts


def _train(tk: tokenizers.Tokenizer, trainer: trainers.Trainer, texts: Iterable[str], fn: str) -> None:
    texts = _as_list(texts)
    n_chars = 0

    def counted() -> Iterator[str]:  # streams the texts while checking they are not all empty
        nonlocal n_chars
        for t in texts:
            n_chars += len(t.strip())
            yield t

    tk.train_from_iterator(counted(), trainer=trainer)
    if n_chars == 0:
        raise ValueError(f"{fn}(texts=...): the texts are empty (or only whitespace); pass the training corpus")


def _bert_pipeline(model: models.Model, lowercase: bool) -> tokenizers.Tokenizer:
    tk = tokenizers.Tokenizer(model)
    tk.normalizer = normalizers.BertNormalizer(lowercase=lowercase)  # + strip accents, clean text
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.decoder = decoders.WordPiece()
    return tk


def _with_bert_template(tk: tokenizers.Tokenizer) -> Tokenizer:
    """Attach "[CLS] $A [SEP] $B [SEP]" for encode(..., add_special_tokens=True)."""
    cls, sep = tk.token_to_id("[CLS]"), tk.token_to_id("[SEP]")
    if cls is not None and sep is not None:
        tk.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
        )
    return Tokenizer(tk)
