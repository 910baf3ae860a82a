"""groundup's CLIP tokenizer against the oracle, open_clip's SimpleTokenizer (open-clip-torch 3.3.0).

`import open_clip` needs torchvision (not installed here), so the oracle's `tokenizer.py` is loaded
on its own from the installed package directory; it imports only ftfy, numpy, regex and torch."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

from groundup import tokenizer_clip
from groundup.tokenizer import Tokenizer
from groundup.tokenizer_clip import ClipTokenizer, clip_clean, clip_vocab_path

TEXTS = [
    "a photo of a cat",
    "A PHOTO of a Dog!!",
    "MiXeD CaSe WoRdS",
    "it's they're we've I'm you'll he'd IT'S",
    "don't'S '''s",
    "3.14159 and 1,000,000 and 2024-01-31",
    "123abc456",
    "émigré café naïve Ångström",
    "e\u0301 (decomposed accent)",
    "🙂🐱 emoji 👍🏽 and flags 🇫🇷",
    "fish &amp; chips &lt;b&gt; &amp;amp; &quot;quoted&quot;",
    "",
    "   ",
    "  extra   whitespace\there\n\nand\r\nnewlines  ",
    "日本語のテキスト、中文",
    "Привет, МИР",
    "ΟΔΟΣ Σ",
    "İstanbul",
    "ﬁne ﬂour",
    "ｆｕｌｌｗｉｄｔｈ ＡＢＣ",
    "Ã©tÃ© mojibake",
    "zero\u200bwidth\u00a0nbsp",
    "$$$ %%% ^^^ ... ?!?",
    "co-op re-entry snake_case_name",
    "https://example.com/path?q=1&x=2",
    "<|startoftext|>hi<|endoftext|>",
    "x!<end_of_text>y <start_of_text> a<START_OF_TEXT>b",
    "\x00\x01control\x7f",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    " ".join(["a long caption that will be truncated"] * 20),
]


def _load_oracle():
    spec = importlib.util.find_spec("open_clip")
    assert spec is not None, "oracle missing: pip install --no-deps open-clip-torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4"
    file = Path(spec.submodule_search_locations[0]) / "tokenizer.py"
    mod_spec = importlib.util.spec_from_file_location("_open_clip_tokenizer_oracle", file)
    module = importlib.util.module_from_spec(mod_spec)
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    mod_spec.loader.exec_module(module)  # sets TOKENIZERS_PARALLELISM=false on import: undone below
    if saved is None:
        os.environ.pop("TOKENIZERS_PARALLELISM", None)
    else:
        os.environ["TOKENIZERS_PARALLELISM"] = saved
    return module


@pytest.fixture(scope="module")
def oracle():
    return _load_oracle()


@pytest.fixture(scope="module")
def ref(oracle):
    return oracle.SimpleTokenizer()


@pytest.fixture(scope="module")
def tok():
    return ClipTokenizer()


def test_vocabulary_and_special_ids(tok, ref):
    assert isinstance(tok, Tokenizer)
    assert tok.vocab_size == ref.vocab_size == 49408
    assert (tok.sot_id, tok.eot_id) == (ref.sot_token_id, ref.eot_token_id) == (49406, 49407)
    assert (tok.bos_id, tok.eos_id) == (49406, 49407)
    assert tok.backend.get_vocab() == ref.encoder  # every token string at the same id


@pytest.mark.parametrize("text", TEXTS)
def test_encode_equals_open_clip(tok, ref, text):
    assert tok.encode(text) == ref.encode(text)


def test_encode_batch_equals_open_clip(tok, ref):
    assert tok.encode_batch(TEXTS) == [ref.encode(t) for t in TEXTS]
    assert tok.encode_batch(TEXTS[:3], add_special_tokens=True) == [[49406, *ref.encode(t), 49407] for t in TEXTS[:3]]


def test_known_ids(tok):
    # fixed expected ids, so a broken oracle cannot hide a broken tokenizer
    assert tok(["a photo of a cat"])[0, :8].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407, 0]


@pytest.mark.parametrize("context_length", [77, 16, 2])
def test_call_equals_open_clip_tokenize(tok, ref, oracle, context_length):
    ours = tok(TEXTS, context_length=context_length)
    assert ours.dtype == torch.long and ours.shape == (len(TEXTS), context_length)
    assert torch.equal(ours, ref(TEXTS, context_length=context_length))
    if context_length == 77:
        assert torch.equal(ours, oracle.tokenize(TEXTS))  # the module-level function, default length


def test_call_single_string_and_truncation(tok):
    single = tok("a photo of a cat")
    assert single.shape == (1, 77) and torch.equal(single, tok(["a photo of a cat"]))
    long = tok([TEXTS[-1]])[0]
    assert len(tok.encode(TEXTS[-1])) > 77
    assert long[0] == 49406 and long[-1] == 49407 and (long != 0).all()
    assert long[1:-1].tolist() == tok.encode(TEXTS[-1])[:75]
    short = tok(["a cat"])[0]
    assert short[:4].tolist() == [49406, 320, 2368, 49407] and (short[4:] == 0).all()
    with pytest.raises(ValueError, match="context_length"):
        tok(["a cat"], context_length=1)


@pytest.mark.parametrize("text", TEXTS)
def test_decode_equals_open_clip_and_round_trips(tok, ref, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == ref.decode(ids)
    # lossless up to spaces: decoding puts a space after every word (each "</w>")
    assert "".join(tok.decode(ids).split()) == "".join(clip_clean(text).split())


def test_decode_round_trip_of_plain_words(tok):
    for text in ["A Photo of a CAT", "two   dogs\tplaying in the snow"]:
        assert tok.decode(tok.encode(text)) == clip_clean(text) + " "
    assert tok.decode([49406, 320, 2368, 49407]) == "<start_of_text>a cat <end_of_text>"
    assert tok.decode([49406, 320, 2368, 49407], skip_special_tokens=True) == "a cat "


def test_clean_matches_open_clip(oracle):
    for text in TEXTS:
        assert clip_clean(text) == oracle._clean_lower(text)


def test_clean_without_ftfy_falls_back_to_nfc(monkeypatch):
    monkeypatch.setitem(sys.modules, "ftfy", None)  # makes `import ftfy` raise ImportError
    monkeypatch.setattr(tokenizer_clip, "_warned_no_ftfy", False)
    with pytest.warns(UserWarning, match="ftfy is not installed"):
        assert clip_clean("Caf\u0065\u0301 &amp;  Co") == "caf\u00e9 & co"


def test_vocab_path_found_without_importing_open_clip():
    path = clip_vocab_path()
    assert path.name == "bpe_simple_vocab_16e6.txt.gz" and path.is_file()
    assert clip_vocab_path(path) == path
    assert ClipTokenizer(str(path)).encode("a cat") == [320, 2368]


def test_missing_vocabulary_path_is_a_clear_error(tmp_path, monkeypatch):
    missing = tmp_path / "nope.txt.gz"
    with pytest.raises(FileNotFoundError, match="no such file"):
        clip_vocab_path(missing)
    with pytest.raises(FileNotFoundError, match="no such file"):
        ClipTokenizer(missing)
    monkeypatch.setattr(tokenizer_clip.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps open-clip-torch==3\.3\.0"):
        clip_vocab_path()
    not_gzip = tmp_path / "merges.txt.gz"
    not_gzip.write_text("not gzip")
    with pytest.raises(ValueError, match="not a gzipped CLIP merges file"):
        ClipTokenizer(not_gzip)
