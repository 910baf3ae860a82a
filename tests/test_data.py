"""Data: the packaged corpus, LM token streams, MLM + NSP, seq2seq batches."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from groundup.data import (
    LMData,
    MLMData,
    Seq2SeqData,
    char_vocab,
    mask_tokens,
    prepare_lm_data,
    read_text_corpus,
    reversal_pairs,
    shakespeare_path,
    split_documents,
)
from groundup.tokenizer import char_tokenizer, train_wordpiece, wordpiece_from_vocab


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def corpus() -> str:
    return read_text_corpus(shakespeare_path())


# --- corpus ----------------------------------------------------------------------------------
def test_packaged_shakespeare_looks_like_tiny_shakespeare(corpus):
    assert 900_000 <= shakespeare_path().stat().st_size <= 1_200_000
    assert corpus.isascii() and "[" not in corpus and "<" not in corpus  # no stage directions, no markup
    assert corpus.startswith("FIRST CITIZEN:\nBefore we proceed any further, hear me speak.\n\n")
    speeches = corpus.split("\n\n")
    assert len(speeches) > 5000
    assert all(s.split("\n")[0].endswith(":") and len(s.split("\n")) >= 2 for s in speeches)


def test_read_text_corpus_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_text_corpus(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(ValueError, match="empty"):
        read_text_corpus(tmp_path / "empty.txt")


# --- causal LM -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory, corpus):
    text = corpus[:20_000]
    out = tmp_path_factory.mktemp("lm")
    prepare_lm_data(text, char_tokenizer(text), out, val_fraction=0.1)
    return out, np.array(char_tokenizer(text).encode(text))


def test_prepare_lm_data_writes_raw_uint16_stream(lm_dir):
    out, stream = lm_dir
    meta = json.loads((out / "meta.json").read_text())
    assert meta == {"dtype": "uint16", "vocab_size": int(stream.max()) + 1,
                    "train_tokens": 18_000, "val_tokens": 2_000}
    train = np.fromfile(out / "train.bin", dtype=np.uint16)
    val = np.fromfile(out / "val.bin", dtype=np.uint16)
    np.testing.assert_array_equal(np.concatenate([train, val]), stream)  # val = the last 10%
    assert not list(out.glob("*.tmp"))


def test_lm_batches_are_consecutive_slices_with_shifted_labels(lm_dir):
    out, stream = lm_dir
    data = LMData(out, block_size=32)
    batch = data.get_batch("train", 16, gen())
    x, y = batch["input_ids"], batch["labels"]
    assert x.shape == y.shape == (16, 32) and x.dtype == y.dtype == torch.int64
    train = stream[:18_000]
    windows = np.lib.stride_tricks.sliding_window_view(train, 33)  # every (T+1)-window
    for row_x, row_y in zip(x.numpy(), y.numpy(), strict=True):
        starts = np.flatnonzero((windows[:, :32] == row_x).all(1))
        assert len(starts) >= 1  # a real slice of the training stream
        assert any((windows[s, 1:] == row_y).all() for s in starts)  # labels = the next tokens
    val = LMData(out, block_size=32).get_batch("val", 4, gen())["input_ids"].numpy()
    val_windows = np.lib.stride_tricks.sliding_window_view(stream[18_000:], 32)
    assert all((val_windows == row).all(1).any() for row in val)


def test_lm_in_memory_arrays_and_uint32(tmp_path):
    class BigVocab:  # stands in for a tokenizer with more than 65536 ids
        vocab_size = 70_000

        def encode(self, text):
            return [69_999 - i for i in range(len(text))]

    data = prepare_lm_data("x" * 100, BigVocab(), tmp_path, val_fraction=0.0, block_size=8)
    assert json.loads((tmp_path / "meta.json").read_text())["dtype"] == "uint32"
    assert data.num_tokens("train") == 100 and data.num_tokens("val") == 0
    b = data.get_batch("train", 3, gen())
    assert b["input_ids"].max() <= 69_999 and (b["labels"] == b["input_ids"] - 1).all()
    arr = LMData({"train": np.arange(50), "val": np.arange(50)}, block_size=5)
    b = arr.get_batch("train", 8, gen())
    assert (b["input_ids"] == b["input_ids"][:, :1] + torch.arange(5)).all()
    assert (b["labels"] == b["input_ids"] + 1).all() and b["labels"].max() <= 49  # never past the end


def test_lm_get_batch_uses_only_the_generator(lm_dir):
    data = LMData(lm_dir[0], block_size=16)
    torch.manual_seed(123)  # the global RNG must not matter
    a = data.get_batch("train", 8, gen(7))
    torch.manual_seed(999)
    b = data.get_batch("train", 8, gen(7))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["input_ids"], data.get_batch("train", 8, gen(8))["input_ids"])
    g = gen(7)
    data.get_batch("train", 8, g)
    state = g.get_state()  # what the training loop checkpoints
    nxt = data.get_batch("train", 8, g)
    g2 = torch.Generator()
    g2.set_state(state)
    assert torch.equal(nxt["input_ids"], data.get_batch("train", 8, g2)["input_ids"])


def test_lm_errors(lm_dir, tmp_path):
    data = LMData(lm_dir[0], block_size=2_000)
    with pytest.raises(ValueError, match=r"'val' has 2000 tokens.*block_size=2000 needs at least 2001"):
        data.get_batch("val", 1, gen())
    with pytest.raises(ValueError, match="unknown split"):
        data.get_batch("test", 1, gen())
    with pytest.raises(FileNotFoundError, match="prepare_lm_data"):
        LMData(tmp_path, block_size=8)
    with pytest.raises(ValueError, match="val_fraction"):
        prepare_lm_data("abc", char_tokenizer("abc"), tmp_path, val_fraction=1.0)


# --- masking ---------------------------------------------------------------------------------
def test_mask_tokens_statistics():
    """Tolerances are 5 binomial standard deviations: a correct implementation fails with
    probability < 1e-6 per check (and the seed is fixed anyway); a wrong rate fails."""
    V, mask_id, B, T = 1000, 4, 200, 1000
    ids = torch.randint(5, V, (B, T), generator=gen(1))  # no original token is [MASK]
    special = torch.rand(B, T, generator=gen(2)) < 0.1
    ids_before = ids.clone()
    out, labels = mask_tokens(ids, special, mask_id, V, gen(3))
    assert torch.equal(ids, ids_before)  # the input is not modified

    selected = labels != -100
    n = int((~special).sum())
    p_hat = selected.sum().item() / n
    assert abs(p_hat - 0.15) < 5 * math.sqrt(0.15 * 0.85 / n)
    assert not selected[special].any() and torch.equal(out[special], ids[special])
    assert torch.equal(labels[selected], ids[selected])
    assert torch.equal(out[~selected], ids[~selected])  # only selected tokens change

    k = int(selected.sum())
    tol = 5 * math.sqrt(0.8 * 0.2 / k)  # the largest of the three binomial stds
    to_mask = (out[selected] == mask_id).float().mean().item()
    kept = (out[selected] == ids[selected]).float().mean().item()
    randomized = 1 - to_mask - kept
    assert abs(to_mask - (0.8 + 0.1 / V)) < tol  # a random draw can also hit [MASK] (1/V)
    assert abs(kept - (0.1 + 0.1 / V)) < tol  # ... or the original token (1/V)
    assert abs(randomized - 0.1 * (1 - 2 / V)) < tol

    out2, labels2 = mask_tokens(ids, special, mask_id, V, gen(3))
    assert torch.equal(out, out2) and torch.equal(labels, labels2)
    with pytest.raises(ValueError, match="p=1.5"):
        mask_tokens(ids, special, mask_id, V, gen(), p=1.5)


# --- MLM + NSP -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def numbered(tmp_path_factory):
    """30 documents x 6 sentences of 1-4 tokens, every token id unique, so an id tells which
    document and sentence it came from."""
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    path.write_text("\n".join(specials + [f"t{i}" for i in range(1000)]) + "\n")
    tok = wordpiece_from_vocab(path)
    rng = np.random.default_rng(0)
    where, docs, nxt = {}, [], 5
    for d in range(30):
        doc = []
        for s in range(6):
            sent = list(range(nxt, nxt + int(rng.integers(1, 5))))
            nxt += len(sent)
            where.update({t: (d, s) for t in sent})
            doc.append(sent)
        docs.append(doc)
    return tok, docs, where


def test_mlm_nsp_pairs_are_true_next_or_random(numbered):
    tok, docs, where = numbered
    data = MLMData(docs, tok, block_size=12, val_fraction=0.0)
    batch = data.get_batch("train", 2000, gen())
    original = torch.where(batch["labels"] != -100, batch["labels"], batch["input_ids"])
    assert batch["input_ids"].shape[1] <= 12
    for ids, types, att, nsp in zip(original.tolist(), batch["token_type_ids"].tolist(),
                                    batch["attention_mask"].tolist(), batch["nsp_labels"].tolist(), strict=True):
        n = sum(att)
        assert att == [1] * n + [0] * (len(ids) - n) and ids[n:] == [tok.pad_id] * (len(ids) - n)
        sep = [i for i, t in enumerate(ids) if t == tok.sep_id]
        assert ids[0] == tok.cls_id and len(sep) == 2 and sep[1] == n - 1
        a, b = ids[1:sep[0]], ids[sep[0] + 1:sep[1]]
        assert a and b and types[:n] == [0] * (len(a) + 2) + [1] * (len(b) + 1)
        (da, sa), (db, sb) = where[a[-1]], where[b[0]]
        assert {where[t][0] for t in a} == {da}  # A is one document's text
        if nsp == 0:
            assert (db, sb) == (da, sa + 1)  # B starts with the sentence right after A
        else:
            assert db != da
    frac_random = batch["nsp_labels"].float().mean().item()
    assert abs(frac_random - 0.5) < 5 * math.sqrt(0.25 / 2000)


def test_mlm_never_masks_special_tokens(numbered):
    tok, docs, _ = numbered
    batch = MLMData(docs, tok, block_size=12, val_fraction=0.0).get_batch("train", 500, gen(1))
    original = torch.where(batch["labels"] != -100, batch["labels"], batch["input_ids"])
    special = torch.isin(original, torch.tensor([tok.cls_id, tok.sep_id])) | (batch["attention_mask"] == 0)
    assert special.sum() >= 3 * 500 and (batch["labels"][special] == -100).all()
    assert torch.equal(batch["input_ids"][special], original[special])
    real = (batch["attention_mask"] == 1).sum().item()
    assert 0.05 < (batch["labels"] != -100).sum().item() / real < 0.15  # specials excluded from the 15%


def test_mlm_from_shakespeare(corpus):
    text = corpus[:60_000]
    tok = train_wordpiece([text], vocab_size=800)
    data = MLMData.from_text(text, tok, block_size=48)
    b = data.get_batch("val", 8, gen(5))
    assert set(b) == {"input_ids", "token_type_ids", "attention_mask", "labels", "nsp_labels"}
    assert b["input_ids"].shape[0] == 8 and b["input_ids"].shape[1] <= 48 and b["nsp_labels"].shape == (8,)
    assert all(t.dtype == torch.int64 for t in b.values())
    again = data.get_batch("val", 8, gen(5))
    assert all(torch.equal(b[k], again[k]) for k in b)
    assert split_documents("A b. C d?\nE!\n\n\nF.") == [["A b.", "C d?", "E!"], ["F."]]


def test_mlm_errors(numbered):
    tok, docs, _ = numbered
    with pytest.raises(ValueError, match=r"lacks special tokens \['cls', 'sep', 'pad', 'mask'\]"):
        MLMData(docs, char_tokenizer("abc"), block_size=12)
    with pytest.raises(ValueError, match="NSP needs >= 2 documents"):
        MLMData(docs[:1], tok, block_size=12, val_fraction=0.0)
    with pytest.raises(ValueError, match="split 'val'"):
        MLMData(docs[:12], tok, block_size=12, val_fraction=0.1)  # 1 val document: no random B
    with pytest.raises(ValueError, match="'val'"):
        MLMData(docs, tok, block_size=12, val_fraction=0.0).get_batch("val", 2, gen())


# --- seq2seq ---------------------------------------------------------------------------------
def test_reversal_pairs_and_vocab():
    pairs = reversal_pairs(200, 2, 6, list("abcd"), seed=3)
    assert pairs == reversal_pairs(200, 2, 6, list("abcd"), seed=3) != reversal_pairs(200, 2, 6, list("abcd"), seed=4)
    assert all(t == s[::-1] and 2 <= len(s) <= 6 and set(s) <= set("abcd") for s, t in pairs)
    assert {len(s) for s, _ in pairs} == {2, 3, 4, 5, 6}
    v = char_vocab("abcd")
    assert v.size == 7 and v.encode("dab") == [6, 3, 4] and v.decode([6, 3, 4, v.eos_id, 5]) == list("dab")
    with pytest.raises(ValueError, match="'z'"):
        v.encode("az")
    with pytest.raises(ValueError, match="min_len"):
        reversal_pairs(3, 0, 2, list("ab"))


def test_seq2seq_batches_teacher_forcing():
    v = char_vocab("abcdef")
    pairs = [(v.encode(s), v.encode(t)) for s, t in reversal_pairs(300, 1, 9, list("abcdef"), seed=0)]
    data = Seq2SeqData(pairs, block_size=16, pad_id=v.pad_id, bos_id=v.bos_id, eos_id=v.eos_id, val_fraction=0.2)
    assert len(data.splits["train"]) == 240 and len(data.splits["val"]) == 60
    b = data.get_batch("train", 64, gen())
    src, mask, tgt_in, labels = b["src_ids"], b["src_mask"], b["tgt_in"], b["labels"]
    assert src.shape == mask.shape and tgt_in.shape == labels.shape and mask.dtype == torch.bool
    assert src.shape[1] == mask.sum(1).max() and tgt_in.shape[1] == mask.sum(1).max() + 1  # padded to longest
    train = {tuple(s) for s, _ in data.splits["train"]}
    for s, m, ti, lab in zip(src.tolist(), mask.tolist(), tgt_in.tolist(), labels.tolist(), strict=True):
        real = [t for t, keep in zip(s, m, strict=True) if keep]
        assert m == [True] * len(real) + [False] * (len(s) - len(real)) and tuple(real) in train
        assert s[len(real):] == [v.pad_id] * (len(s) - len(real))
        tgt = real[::-1]  # the task: the target is the reversed source
        assert ti == [v.bos_id, *tgt] + [v.pad_id] * (len(ti) - len(tgt) - 1)
        assert lab == [*tgt, v.eos_id] + [-100] * (len(lab) - len(tgt) - 1)


def test_seq2seq_truncation_separate_vocab_and_errors():
    pairs = [([7] * 30, [9] * 30), ([8, 8], [5])]
    data = Seq2SeqData(pairs, block_size=8, pad_id=0, bos_id=1, eos_id=2, val_fraction=0.0, src_pad_id=3)
    b = data.get_batch("train", 16, gen())
    assert b["src_ids"].shape == (16, 8) and b["tgt_in"].shape == (16, 8)
    short = b["src_mask"].sum(1) == 2
    assert short.any() and (b["src_ids"][short][:, 2:] == 3).all()  # the source's own pad id
    assert (b["labels"][~short] == torch.tensor([9] * 7 + [2])).all()  # cut, still ends in <eos>
    with pytest.raises(ValueError, match=r"pairs\[1\] has an empty source"):
        Seq2SeqData([([1], [2]), ([], [2])], 8, 0, 1, 2)
    with pytest.raises(ValueError, match="'val'"):
        data.get_batch("val", 2, gen())
