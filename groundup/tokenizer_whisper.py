"""The Whisper vocabulary (Radford et al. 2022, "Robust Speech Recognition via Large-Scale Weak
Supervision") with its special tokens, read from the `tokenizer.json` that ships with the
CTranslate2 / Hugging Face weights; ids agree with openai-whisper and faster-whisper.

Layout of the ids (English-only vocab / multilingual vocab):

    0 ..                      byte-level BPE text tokens (GPT-2's 50,256 / Whisper's 50,257)
    eot                       <|endoftext|>                50256 / 50257
    sot                       <|startoftranscript|>        50257 / 50258
    sot+1 .. translate-1      one token per language, <|en|> first (99 here; large-v3 adds <|yue|>)
    translate, transcribe, sot_lm, sot_prev, no_speech (<|nocaptions|> / <|nospeech|>), no_timestamps
    timestamp_begin ..        <|0.00|> .. <|30.00|>, 1501 tokens in 0.02 s steps

The timestamp tokens are not in `tokenizer.json`; they are the model's last 1501 output rows and
exist here as arithmetic only. `n_vocab` (the model's output size) is what tells an English-only
model (51,864) from a multilingual one (51,865 or more), as in openai-whisper; the language tokens
cannot, because the English-only tokenizer.json carries them too.

    tok = WhisperTokenizer.from_dir(model_dir)    # tokenizer.json [+ vocabulary.txt]
    tok.sot_sequence("de", "transcribe")          # [50258, 50261, 50359, 50363] on whisper-base
    tok.decode_with_timestamps(ids)               # " Hello<|1.08|> world"
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import tokenizers

from groundup.tokenizer import TOKENIZER_FILE, Tokenizer

__all__ = ["WhisperTokenizer", "LANGUAGES", "TO_LANGUAGE_CODE", "TASKS"]

VOCABULARY_FILE = "vocabulary.txt"  # CTranslate2's: line i is token i, timestamps included
N_TIMESTAMPS = 1501  # <|0.00|> .. <|30.00|>
TIMESTAMPS_PER_SECOND = 50  # 0.02 s per step; dividing by 50 gives the exact 2-decimal float
MULTILINGUAL_MIN_VOCAB = 51865  # openai-whisper's rule: n_vocab >= 51865 is multilingual
TASKS = ("transcribe", "translate")
# Older Hugging Face exports (the .en ones among them) spell Hebrew with its pre-1989 code
_CODE_ALIASES = {"iw": "he"}

# openai-whisper's tokenizer.py, in its order (the order of the language tokens in the vocab)
LANGUAGES: dict[str, str] = {
    "en": "english", "zh": "chinese", "de": "german", "es": "spanish", "ru": "russian", "ko": "korean",
    "fr": "french", "ja": "japanese", "pt": "portuguese", "tr": "turkish", "pl": "polish", "ca": "catalan",
    "nl": "dutch", "ar": "arabic", "sv": "swedish", "it": "italian", "id": "indonesian", "hi": "hindi",
    "fi": "finnish", "vi": "vietnamese", "he": "hebrew", "uk": "ukrainian", "el": "greek", "ms": "malay",
    "cs": "czech", "ro": "romanian", "da": "danish", "hu": "hungarian", "ta": "tamil", "no": "norwegian",
    "th": "thai", "ur": "urdu", "hr": "croatian", "bg": "bulgarian", "lt": "lithuanian", "la": "latin",
    "mi": "maori", "ml": "malayalam", "cy": "welsh", "sk": "slovak", "te": "telugu", "fa": "persian",
    "lv": "latvian", "bn": "bengali", "sr": "serbian", "az": "azerbaijani", "sl": "slovenian", "kn": "kannada",
    "et": "estonian", "mk": "macedonian", "br": "breton", "eu": "basque", "is": "icelandic", "hy": "armenian",
    "ne": "nepali", "mn": "mongolian", "bs": "bosnian", "kk": "kazakh", "sq": "albanian", "sw": "swahili",
    "gl": "galician", "mr": "marathi", "pa": "punjabi", "si": "sinhala", "km": "khmer", "sn": "shona",
    "yo": "yoruba", "so": "somali", "af": "afrikaans", "oc": "occitan", "ka": "georgian", "be": "belarusian",
    "tg": "tajik", "sd": "sindhi", "gu": "gujarati", "am": "amharic", "yi": "yiddish", "lo": "lao",
    "uz": "uzbek", "fo": "faroese", "ht": "haitian creole", "ps": "pashto", "tk": "turkmen", "nn": "nynorsk",
    "mt": "maltese", "sa": "sanskrit", "lb": "luxembourgish", "my": "myanmar", "bo": "tibetan", "tl": "tagalog",
    "mg": "malagasy", "as": "assamese", "tt": "tatar", "haw": "hawaiian", "ln": "lingala", "ha": "hausa",
    "ba": "bashkir", "jw": "javanese", "su": "sundanese", "yue": "cantonese",
}
# language name -> code, with openai-whisper's aliases
TO_LANGUAGE_CODE: dict[str, str] = {
    **{name: code for code, name in LANGUAGES.items()},
    "burmese": "my", "valencian": "ca", "flemish": "nl", "haitian": "ht", "letzeburgesch": "lb",
    "pushto": "ps", "panjabi": "pa", "moldavian": "ro", "moldovan": "ro", "sinhalese": "si",
    "castilian": "es", "mandarin": "zh",
}

EOT, SOT = "<|endoftext|>", "<|startoftranscript|>"
_REQUIRED = (EOT, SOT, "<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|notimestamps|>")


class WhisperTokenizer(Tokenizer):
    """Whisper's tokenizer as a groundup `Tokenizer` (`backend` is the `tokenizers.Tokenizer`).

    `n_vocab` is the model's vocabulary size (its output rows, timestamps included); None means
    the tokenizer's size plus 1501 timestamps, which is what every Whisper checkpoint has."""

    def __init__(self, backend: tokenizers.Tokenizer, n_vocab: int | None = None) -> None:
        super().__init__(backend)
        missing = [t for t in _REQUIRED if backend.token_to_id(t) is None]
        if missing:
            raise ValueError(f"WhisperTokenizer: the tokenizer has no {', '.join(missing)}; "
                             "pass the tokenizer.json of a Whisper model")
        ids = {t: backend.token_to_id(t) for t in _REQUIRED}
        self.eot, self.sot = ids[EOT], ids[SOT]
        self.translate, self.transcribe = ids["<|translate|>"], ids["<|transcribe|>"]
        self.sot_lm, self.sot_prev = ids["<|startoflm|>"], ids["<|startofprev|>"]
        self.no_timestamps = ids["<|notimestamps|>"]
        self.timestamp_begin = self.no_timestamps + 1
        # large-v3 renamed <|nocaptions|> to <|nospeech|>; faster-whisper looks for both, in this order
        no_speech = backend.token_to_id("<|nospeech|>") or backend.token_to_id("<|nocaptions|>")
        if no_speech is None:
            raise ValueError("WhisperTokenizer: the tokenizer has neither <|nospeech|> nor <|nocaptions|>; "
                             "pass the tokenizer.json of a Whisper model")
        self.no_speech: int = no_speech

        self.language_ids: dict[str, int] = {}  # the tokens between sot and translate, as in openai-whisper
        for i in range(self.sot + 1, self.translate):
            token = backend.id_to_token(i) or ""
            if not (token.startswith("<|") and token.endswith("|>")):
                raise ValueError(f"WhisperTokenizer: id {i} ({token!r}) lies between {SOT} and <|translate|> "
                                 "but is not a language token; the tokenizer.json is not a Whisper one")
            code = token[2:-2]
            self.language_ids[_CODE_ALIASES.get(code, code)] = i
        self.language_codes: tuple[str, ...] = tuple(self.language_ids)

        base_size = backend.get_vocab_size(with_added_tokens=True)
        self.n_vocab = base_size + N_TIMESTAMPS if n_vocab is None else int(n_vocab)
        if self.n_vocab <= self.timestamp_begin:
            raise ValueError(
                f"WhisperTokenizer(n_vocab={self.n_vocab}): leaves no timestamp tokens after <|notimestamps|> "
                f"(id {self.no_timestamps}); pass the model's vocabulary size ({base_size + N_TIMESTAMPS} for "
                f"this tokenizer, the line count of {VOCABULARY_FILE}) or leave n_vocab unset"
            )
        self.set_role("bos", self.sot)  # GPT-2's rule would pick <|endoftext|>; Whisper decodes from sot
        self.set_role("eos", self.eot)

    # --- loading ------------------------------------------------------------------------------
    @classmethod
    def from_file(cls, tokenizer_json: str | os.PathLike, n_vocab: int | None = None) -> WhisperTokenizer:
        """A Whisper `tokenizer.json`; n_vocab None: the tokenizer's size + 1501 timestamps."""
        file = Path(tokenizer_json)
        if not file.is_file():
            raise FileNotFoundError(f"WhisperTokenizer.from_file(tokenizer_json={str(file)!r}): no such file; "
                                    f"pass the {TOKENIZER_FILE} shipped with the Whisper weights")
        try:
            backend = tokenizers.Tokenizer.from_file(str(file))
        except Exception as e:  # tokenizers raises a bare Exception on a malformed file
            raise ValueError(f"WhisperTokenizer: {file} is not a valid tokenizers JSON file ({e})") from e
        return cls(backend, n_vocab)

    @classmethod
    def from_dir(cls, path: str | os.PathLike, n_vocab: int | None = None) -> WhisperTokenizer:
        """A model folder holding `tokenizer.json`; its `vocabulary.txt`, when present, gives n_vocab."""
        folder = Path(path)
        if not (folder / TOKENIZER_FILE).is_file():
            raise FileNotFoundError(f"WhisperTokenizer.from_dir(path={str(folder)!r}): no {TOKENIZER_FILE} there; "
                                    "pass the folder of a CTranslate2 / Hugging Face Whisper model")
        vocab_file = folder / VOCABULARY_FILE
        lines = _read_lines(vocab_file) if vocab_file.is_file() else None
        if n_vocab is None and lines is not None:
            n_vocab = len(lines)
        tok = cls.from_file(folder / TOKENIZER_FILE, n_vocab)
        if lines is not None:  # a vocabulary.txt from another model would shift every timestamp
            for i, want in ((tok.eot, EOT), (tok.timestamp_begin, "<|0.00|>")):
                if i >= len(lines) or lines[i] != want:
                    got = lines[i] if i < len(lines) else "nothing"
                    raise ValueError(f"WhisperTokenizer.from_dir: line {i} of {vocab_file} is {got!r}, but "
                                     f"{TOKENIZER_FILE} puts {want} there; the two files are from different models")
        return tok

    # --- vocabulary ---------------------------------------------------------------------------
    @property
    def multilingual(self) -> bool:
        """True for the multilingual models (n_vocab >= 51865), False for the .en ones (51864)."""
        return self.n_vocab >= MULTILINGUAL_MIN_VOCAB

    @property
    def vocab_size(self) -> int:
        """The model's vocabulary size, n_vocab: text tokens, specials and timestamps."""
        return self.n_vocab

    @property
    def n_timestamps(self) -> int:
        return self.n_vocab - self.timestamp_begin

    def id_to_token(self, i: int) -> str | None:
        """The token of id `i`, timestamps as "<|1.08|>" (the lines of vocabulary.txt)."""
        if self.timestamp_begin <= i < self.n_vocab:
            return f"<|{self.timestamp_seconds(i):.2f}|>"
        return self.backend.id_to_token(i)

    def token_to_id(self, token: str) -> int | None:
        if token.startswith("<|") and token.endswith("|>") and self.backend.token_to_id(token) is None:
            try:
                i = self.timestamp_id(float(token[2:-2]))
            except (ValueError, OverflowError):  # not a number, or inf
                return None
            return i if self.id_to_token(i) == token else None  # only the exact "<|1.08|>" spelling
        return self.backend.token_to_id(token)

    # --- timestamps ---------------------------------------------------------------------------
    def timestamp_seconds(self, token_id: int) -> float:
        """Seconds of a timestamp id: (id - timestamp_begin) * 0.02."""
        if not self.timestamp_begin <= token_id < self.n_vocab:
            raise ValueError(f"timestamp_seconds({token_id}): not a timestamp id; timestamps are "
                             f"{self.timestamp_begin} .. {self.n_vocab - 1}")
        return (token_id - self.timestamp_begin) / TIMESTAMPS_PER_SECOND

    def timestamp_id(self, seconds: float) -> int:
        """The id of the timestamp nearest `seconds` (0.02 s steps)."""
        step = round(seconds * TIMESTAMPS_PER_SECOND)
        if not 0 <= step < self.n_timestamps:
            last = (self.n_timestamps - 1) / TIMESTAMPS_PER_SECOND
            raise ValueError(f"timestamp_id(seconds={seconds}): Whisper timestamps cover 0.00 .. {last:.2f} s "
                             "(one 30 s window); pass a time inside the window")
        return self.timestamp_begin + step

    # --- encoding / decoding ------------------------------------------------------------------
    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[list[int]]:
        """Token ids of each text, no special tokens. The tokenizer.json's template prepends an
        English-only prompt whatever the model, so it is refused rather than applied."""
        if add_special_tokens:
            raise ValueError("WhisperTokenizer.encode(add_special_tokens=True) is not supported: build the "
                             "prompt as tok.sot_sequence(language, task) + tok.encode(text)")
        return super().encode_batch(texts)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`, special tokens and timestamps dropped (faster-whisper's decode); with
        skip_special_tokens=False both are written out as tokens, e.g. "<|en|>" and "<|1.08|>"."""
        return self._render(ids, timestamps=not skip_special_tokens, specials=not skip_special_tokens)

    def decode_with_timestamps(self, ids: Iterable[int]) -> str:
        """Text with timestamps written as "<|1.08|>"; other special tokens are dropped."""
        return self._render(ids, timestamps=True, specials=False)

    def _render(self, ids: Iterable[int], timestamps: bool, specials: bool) -> str:
        parts: list[str] = []
        text: list[int] = []
        for i in map(int, ids):
            if not 0 <= i < self.n_vocab:
                raise ValueError(f"decode: id {i} is outside the vocabulary (0 .. {self.n_vocab - 1})")
            if i < self.eot:
                text.append(i)
                continue
            if timestamps and i >= self.timestamp_begin or specials and i < self.timestamp_begin:
                # byte-level BPE must decode a run of text ids together: one character spans several ids
                parts.append(self.backend.decode(text))
                parts.append(self.id_to_token(i) or "")
                text = []
        parts.append(self.backend.decode(text))
        return "".join(parts)

    # --- prompts ------------------------------------------------------------------------------
    def language_code(self, language: str) -> str:
        """The code of a language given by code ("de") or name ("German"); ValueError if this vocab lacks it."""
        key = language.strip().lower()
        code = _CODE_ALIASES.get(key, TO_LANGUAGE_CODE.get(key, key))
        if code in self.language_ids:
            return code
        if code in LANGUAGES:
            hint = " such as whisper-large-v3, the first with <|yue|>" if code == "yue" else ""
            raise ValueError(f"language {language!r} ({LANGUAGES[code]}) has no token in this model's vocabulary "
                             f"(it has {len(self.language_ids)} languages); use a model that knows it{hint}")
        shown = ", ".join(self.language_codes[:8])
        raise ValueError(f"unknown language {language!r}; pass a code such as {shown} (all {len(self.language_ids)}: "
                         "tok.language_codes) or an English name such as 'german'")

    def sot_sequence(
        self, language: str | None = None, task: str = "transcribe", timestamps: bool = False
    ) -> list[int]:
        """The decoder prompt: [sot, language, task] on a multilingual model, [sot] on an English-only
        one, followed by <|notimestamps|> unless `timestamps`."""
        if task not in TASKS:
            raise ValueError(f"sot_sequence(task={task!r}): the task is one of {', '.join(TASKS)}")
        tail = [] if timestamps else [self.no_timestamps]
        if not self.multilingual:
            # openai-whisper prompts .en models with [sot] alone: no language, no task token
            if task == "translate" or language is not None and self.language_code(language) != "en":
                asked, flag = ("task='translate'", "--task translate") if task == "translate" else (
                    f"language={language!r}", "--language")
                raise ValueError(f"this Whisper model is English-only (n_vocab={self.n_vocab}, e.g. tiny.en), so "
                                 f"{asked} cannot be honoured; drop {flag} or use a multilingual model such as "
                                 "whisper-base")
            return [self.sot, *tail]
        if language is None:
            raise ValueError("sot_sequence(language=None): a multilingual model needs the spoken language, e.g. "
                             "language='en'; to detect it, decode one step after [tok.sot] over tok.language_ids")
        return [self.sot, self.language_ids[self.language_code(language)], getattr(self, task), *tail]

    # --- suppression --------------------------------------------------------------------------
    def non_speech_tokens(self) -> list[int]:
        """openai-whisper's non-speech tokens: ids that would start speaker tags or sound
        annotations ("♪♪♪", "( SPEAKING FOREIGN LANGUAGE )", "[DAVID]"), suppressed while decoding;
        basic punctuation (, . ? !) stays allowed."""
        symbols = list('"#()*+/:;<=>@[\\]^_`{|}~「」『』')
        symbols += "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪".split()
        # U+2640..U+267F share their first two UTF-8 bytes, so their first token is safe to suppress
        miscellaneous = set("♩♪♫♬♭♮♯")
        # hyphens and single quotes stay allowed between words, not at the start of one
        result = {self.encode(" -")[0], self.encode(" '")[0]}
        for symbol in symbols + sorted(miscellaneous):
            for ids in (self.encode(symbol), self.encode(" " + symbol)):
                if len(ids) == 1 or symbol in miscellaneous:
                    result.add(ids[0])
        return sorted(result)

    def suppress_tokens(self) -> list[int]:
        """What openai-whisper suppresses at every step by default (suppress_tokens="-1"): the
        non-speech tokens and the task / prompt specials (CTranslate2's config.json suppress_ids)."""
        specials = {self.transcribe, self.translate, self.sot, self.sot_prev, self.sot_lm, self.no_speech}
        return sorted(set(self.non_speech_tokens()) | specials)

    def begin_suppress_tokens(self) -> list[int]:
        """Suppressed at the first sampled step (suppress_blank): a lone space and <|endoftext|>."""
        return [*self.encode(" "), self.eot]

    def __repr__(self) -> str:
        kind = "multilingual" if self.multilingual else "English-only"
        return f"WhisperTokenizer({kind}, n_vocab={self.n_vocab}, languages={len(self.language_ids)})"


def _read_lines(file: Path) -> list[str]:
    # split on "\n" only: str.splitlines would also break at \r, \x1c, U+2028 ... inside a token
    text = file.read_text(encoding="utf-8")
    return text[:-1].split("\n") if text.endswith("\n") else text.split("\n")
