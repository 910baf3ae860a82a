"""Tokenizers: exact round trips, special ids, one file format, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from groundup.data import read_text_corpus, shakespeare_path
from groundup.tokenizer import (
    Tokenizer,
    char_tokenizer,
    load_tokenizer,
    train_bpe,
    train_wordpiece,
    wordpiece_from_vocab,
)

UNICODE = "Héllo wörld!  Tabs\tand\nnewlines\n\n日本語のテキスト 😀🎉👩‍👩‍👧 Ωμέγα <|endoftext|> end  "
VOCAB_TXT = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "king", "play", "##ing",
             "##s", "hello", ",", ".", "!", "to", "be"]


@pytest.fixture(scope="module")
def corpus() -> str:
    return read_text_corpus(shakespeare_path())


@pytest.fixture(scope="module")
def bpe(corpus: str) -> Tokenizer:
    return train_bpe([corpus[:200_000]], vocab_size=512)


@pytest.fixture(scope="module")
def wordpiece(corpus: str) -> Tokenizer:
    return train_wordpiece([corpus[:200_000]], vocab_size=1500)


@pytest.fixture
def vocab_txt(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(VOCAB_TXT) + "\n", encoding="utf-8")
    return path


# --- char ------------------------------------------------------------------------------------
def test_char_round_trips_whole_corpus_with_nanogpt_ids(corpus):
    tok = char_tokenizer(corpus)
    chars = sorted(set(corpus))
    assert tok.vocab_size == len(chars) == 65  # tiny-shakespeare's 65 characters
    ids = tok.encode(corpus)
    assert len(ids) == len(corpus)
    assert ids[:200] == [chars.index(c) for c in corpus[:200]]  # id = rank of char, as nanoGPT
    assert tok.decode(ids) == corpus  # spaces and newlines included
    assert [tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id, tok.mask_id] == [None] * 5


def test_char_handles_any_unicode_it_was_built_from():
    tok = char_tokenizer(UNICODE)
    assert tok.decode(tok.encode(UNICODE)) == UNICODE
    assert tok.encode_batch(["日本", "😀"]) == [tok.encode("日本"), tok.encode("😀")]


def test_char_unknown_character_names_it():
    tok = char_tokenizer("abc")
    with pytest.raises(ValueError, match=r"\['z'\]"):
        tok.encode("abz")


def test_char_special_tokens_come_after_the_characters():
    tok = char_tokenizer("ba", special_tokens=["<|endoftext|>"])
    assert tok.encode("ab<|endoftext|>b") == [0, 1, 2, 1]
    assert tok.eos_id == tok.bos_id == 2 and tok.vocab_size == 3


# --- byte-level BPE --------------------------------------------------------------------------
def test_bpe_round_trips_arbitrary_unicode(bpe):
    for text in [UNICODE, "", " ", "\n\n\n", "a" * 1000, "ROMEO:\nO, she doth teach the torches!"]:
        assert bpe.decode(bpe.encode(text)) == text


def test_bpe_learns_merges_and_knows_its_special_token(bpe):
    assert bpe.vocab_size == 512
    assert len(bpe.encode(" the")) == 1  # a frequent word is one token, not 4 bytes
    eot = bpe.token_to_id("<|endoftext|>")
    assert eot is not None and bpe.bos_id == bpe.eos_id == eot  # GPT-2's convention
    assert bpe.encode("a<|endoftext|>b").count(eot) == 1  # never split into bytes
    assert bpe.pad_id is None and bpe.cls_id is None


def test_bpe_vocab_size_too_small():
    with pytest.raises(ValueError, match=r"vocab_size=100.*257"):
        train_bpe(["some text"], vocab_size=100)


@pytest.mark.parametrize("texts", [[], [""], ["  ", "\n"], iter([])])
def test_training_on_empty_text_is_an_error(texts):
    with pytest.raises(ValueError, match="empty"):
        train_bpe(texts, vocab_size=300)


# --- WordPiece -------------------------------------------------------------------------------
def test_wordpiece_lowercases_and_round_trips(wordpiece):
    text = "to be, or not to be. the king hath spoken, and we obey!"
    ids = wordpiece.encode(text)
    assert wordpiece.decode(ids) == text
    assert wordpiece.encode(text.upper()) == ids  # BERT-uncased: case is normalized away
    assert any(t.startswith("##") for t in map(wordpiece.id_to_token, wordpiece.encode("unfathomable")))


def test_wordpiece_special_ids_and_template(wordpiece):
    w = wordpiece
    assert [w.pad_id, w.unk_id, w.cls_id, w.sep_id, w.mask_id] == [0, 1, 2, 3, 4]
    assert w.bos_id is None and w.eos_id is None
    assert w.encode("the king", add_special_tokens=True) == [w.cls_id, *w.encode("the king"), w.sep_id]
    with pytest.raises(ValueError, match="vocab_size=5"):
        train_wordpiece(["the king is dead"], vocab_size=5)
    with pytest.raises(ValueError, match="empty"):
        train_wordpiece([""], vocab_size=100)


def test_encode_pair_matches_bert_template(wordpiece):
    a, b = "where is the king?", "gone to london."
    ids, types = wordpiece.encode_pair(a, b)
    ia, ib = wordpiece.encode(a), wordpiece.encode(b)
    assert ids == [wordpiece.cls_id, *ia, wordpiece.sep_id, *ib, wordpiece.sep_id]
    assert types == [0] * (len(ia) + 2) + [1] * (len(ib) + 1)
    ref = wordpiece.backend.encode(a, b, add_special_tokens=True)  # the HF post-processor
    assert (ids, types) == (ref.ids, ref.type_ids)
    with pytest.raises(ValueError, match=r"\[CLS\] and \[SEP\]"):
        char_tokenizer("abc").encode_pair("a", "b")


def test_wordpiece_from_vocab_uses_line_numbers(vocab_txt):
    tok = wordpiece_from_vocab(vocab_txt)
    assert tok.vocab_size == len(VOCAB_TXT)
    assert tok.encode("The KING playing!") == [6, 7, 8, 9, 14]
    assert tok.encode("zebra") == [tok.unk_id]
    assert [tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id] == [0, 2, 3, 4, 5]
    assert tok.encode("[MASK]") == [5]  # a special token is matched whole, not split


def test_wordpiece_from_vocab_matches_transformers(vocab_txt):
    from transformers import BertTokenizerFast

    ref = BertTokenizerFast.from_pretrained(vocab_txt.parent)  # an independent reference
    tok = wordpiece_from_vocab(vocab_txt)
    for a, b in [("The king, playing!", "To be."), ("hello zebra kings", "be the plays")]:
        enc = ref(a, b)
        assert tok.encode_pair(a, b) == (enc["input_ids"], enc["token_type_ids"])


def test_wordpiece_from_vocab_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocab_txt_path"):
        wordpiece_from_vocab(tmp_path / "nope.txt")
    bad = tmp_path / "vocab.txt"
    bad.write_text("a\nb\n")
    with pytest.raises(ValueError, match=r"\[UNK\]"):
        wordpiece_from_vocab(bad)


# --- one file format -------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["char", "bpe", "wordpiece"])
def test_save_load_round_trip(kind, tmp_path, corpus, bpe, wordpiece):
    tok = {"char": lambda: char_tokenizer(corpus[:5000]), "bpe": lambda: bpe, "wordpiece": lambda: wordpiece}[kind]()
    file = tok.save(tmp_path / "tok")
    assert file == tmp_path / "tok" / "tokenizer.json"
    assert json.loads(file.read_text())["model"]["type"] in {"WordLevel", "BPE", "WordPiece"}
    assert not list(file.parent.glob("*.tmp"))  # written atomically
    for loaded in (load_tokenizer(tmp_path / "tok"), load_tokenizer(file)):
        assert loaded == tok
        sample = corpus[:500]
        assert loaded.encode(sample) == tok.encode(sample)
        assert [loaded.bos_id, loaded.pad_id, loaded.cls_id, loaded.sep_id, loaded.mask_id, loaded.unk_id] == \
            [tok.bos_id, tok.pad_id, tok.cls_id, tok.sep_id, tok.mask_id, tok.unk_id]
    assert tok.save(tmp_path / "x.json") == tmp_path / "x.json"


def test_load_without_tokenizer_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid"):
        load_tokenizer(tmp_path)


def test_encode_batch_rejects_a_bare_string(bpe):
    with pytest.raises(TypeError, match="encode_batch"):
        bpe.encode_batch("abc")


def test_wordpiece_training_is_the_same_in_every_process(corpus):
    """HF's WordPieceTrainer gives a different vocabulary per process (hash-map order); ours must not."""
    code = ("import sys, json; from groundup.tokenizer import train_wordpiece; "
            "t = train_wordpiece([sys.stdin.read()], vocab_size=400); "
            "print(json.dumps(sorted(t.backend.get_vocab().items())))")
    runs = [subprocess.run([sys.executable, "-c", code], input=corpus[:50_000], capture_output=True, text=True,
                           check=True).stdout for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]
    vocab = dict(json.loads(runs[0]))
    assert sorted(vocab.values()) == list(range(len(vocab))) and len(vocab) == 400
    assert "##ing" in vocab and "the" in vocab  # word-initial pieces plain, continuations marked
