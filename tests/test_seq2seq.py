"""Encoder-decoder Transformer: causality, source padding, vocabularies, greedy decoding, and learning to reverse."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from groundup.config import ConfigError, preset
from groundup.data import Seq2SeqData, char_vocab, reversal_pairs
from groundup.models import Seq2Seq, build_model
from groundup.train import TrainConfig, train

BOS, EOS, PAD = 1, 2, 0


def tiny(**overrides) -> Seq2Seq:
    torch.manual_seed(0)
    cfg = dict(vocab_size=23, d_model=32, n_head=4, d_ff=64, n_layer=2, block_size=24)
    return Seq2Seq(preset("transformer-tiny", **{**cfg, **overrides})).eval()


def batch(seed: int = 0, vocab: int = 23) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(3, vocab, (3, 7), generator=g)
    tgt = torch.randint(3, vocab, (3, 6), generator=g)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 5:] = False
    return src, tgt, mask


@pytest.mark.parametrize(
    "overrides", [{}, {"prenorm": False}, {"pos": "learned"}, {"pos": "rope"}, {"attn_backend": "naive"}]
)
def test_decoder_sees_no_future(overrides) -> None:
    model = tiny(**overrides)
    src, tgt, mask = batch()
    with torch.no_grad():
        base = model(src, tgt, mask)
        for t in range(tgt.shape[1] - 1):
            changed = tgt.clone()
            changed[:, t + 1] = (tgt[:, t + 1] - 2) % 20 + 3  # another non-special token
            out = model(src, changed, mask)
            assert_close(out[:, : t + 1], base[:, : t + 1], atol=1e-6, rtol=1e-5)
            assert not torch.allclose(out[:, t + 1], base[:, t + 1], atol=1e-4)  # position t+1 does see it


def test_source_padding_invariance() -> None:
    model = tiny()
    src, tgt, mask = batch(1)
    padded = torch.cat([src, torch.full((3, 4), PAD)], dim=1)  # (3, 11)
    pad_mask = torch.cat([mask, torch.zeros(3, 4, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        base = model(src, tgt, mask)
        assert_close(model(padded, tgt, pad_mask), base, atol=1e-5, rtol=1e-4)
        assert_close(model.encode(padded, pad_mask)[:, :7][mask], model.encode(src, mask)[mask], atol=1e-5, rtol=1e-4)
        # Unmasked pads do reach the decoder through cross-attention: the mask is what removes them.
        assert not torch.allclose(model(padded, tgt), base, atol=1e-4)


def test_encoder_is_bidirectional_and_memory_feeds_decoder() -> None:
    model = tiny()
    src, tgt, _ = batch(2)
    changed = src.clone()
    changed[:, -1] = (src[:, -1] - 2) % 20 + 3
    with torch.no_grad():
        a, b = model.encode(src), model.encode(changed)
        assert bool(((a[:, 0] - b[:, 0]).abs().amax(dim=-1) > 1e-4).all())  # the first token sees the last
        assert not torch.allclose(model(src, tgt), model(changed, tgt), atol=1e-4)


def test_shared_and_separate_vocabularies() -> None:
    shared = tiny()
    src, tgt, mask = batch()
    assert shared(src, tgt, mask).shape == (3, 6, 23)
    assert shared.decoder.embed.tok_emb.weight is shared.encoder.embed.tok_emb.weight
    assert shared.lm_head.weight is shared.encoder.embed.tok_emb.weight

    separate = tiny(tgt_vocab_size=11)
    tgt_small = tgt % 8 + 3  # target ids < 11; source ids still from the 23-token source vocabulary
    assert separate(src, tgt_small, mask).shape == (3, 6, 11)
    assert separate.encoder.embed.tok_emb.weight.shape == (23, 32)
    assert separate.decoder.embed.tok_emb.weight.shape == (11, 32)
    assert separate.lm_head.weight is separate.decoder.embed.tok_emb.weight

    untied = tiny(tgt_vocab_size=11, tie_embeddings=False)
    assert untied.lm_head.weight is not untied.decoder.embed.tok_emb.weight
    assert isinstance(build_model("transformer-tiny"), Seq2Seq)


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="arch='seq2seq'"):
        Seq2Seq(preset("bert-tiny"))
    with pytest.raises(ConfigError, match="tgt_vocab_size"):
        tiny(tgt_vocab_size=0)
    model = tiny()
    src, _, mask = batch()
    with pytest.raises(ValueError, match="max_len"):
        model.greedy_decode(src, mask, BOS, EOS, max_len=25)  # block_size is 24


def test_greedy_decode_is_stepwise_argmax_and_row_independent() -> None:
    model = tiny().train()
    src, _, mask = batch(3)
    out = model.greedy_decode(src, mask, BOS, EOS, max_len=9)
    assert model.training  # mode restored
    assert out.shape == (3, 9) and out.dtype == torch.long
    model.eval()
    with torch.no_grad():
        tgt_in = torch.cat([torch.full((3, 1), BOS), out[:, :-1]], dim=1)  # (3, 9)
        assert torch.equal(model(src, tgt_in, mask).argmax(dim=-1), out)  # no EOS here: every step is an argmax
    for b in range(3):  # a row decoded alone (its padding cut off) gives the same tokens
        n = int(mask[b].sum())
        alone = model.greedy_decode(src[b : b + 1, :n], None, BOS, EOS, max_len=9)
        assert torch.equal(alone[0], out[b])


def test_greedy_decode_stops_each_row_at_eos() -> None:
    model = tiny()
    src, _, mask = batch(4)
    first = model.greedy_decode(src, mask, BOS, EOS, max_len=6)
    # Use the first generated token of row 0 as "EOS": row 0 stops at once, the others run on or stop where it appears.
    eos = int(first[0, 0])
    out = model.greedy_decode(src, mask, BOS, eos, max_len=6)
    for row in out.tolist():
        if eos in row:
            k = row.index(eos)
            assert all(t == PAD for t in row[k + 1 :])
    assert out[0, 0] == eos
    if out.shape[1] < 6:  # stopped early: only possible when every row has hit EOS
        assert all(eos in row for row in out.tolist())


def _pad(seqs: list[list[int]], value: int) -> torch.Tensor:
    out = torch.full((len(seqs), max(map(len, seqs))), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s)
    return out


def test_learns_to_reverse(tmp_path) -> None:
    """A small Transformer learns to reverse sequences of 3..8 symbols over 10 symbols: >= 95% exact
    match (EOS included) on held-out sequences it never saw, with greedy decoding."""
    vocab = char_vocab("abcdefghij")
    encode = lambda pairs: [(vocab.encode(a), vocab.encode(b)) for a, b in pairs]
    train_pairs = encode(reversal_pairs(20000, 3, 8, vocab.symbols, seed=0))
    seen = {tuple(a) for a, _ in train_pairs}
    held_out = [p for p in encode(reversal_pairs(600, 3, 8, vocab.symbols, seed=1000)) if tuple(p[0]) not in seen]
    assert len(held_out) > 400
    torch.manual_seed(0)
    cfg = preset("transformer-tiny", vocab_size=vocab.size, d_model=64, d_ff=256, n_layer=2, block_size=16)
    model = Seq2Seq(cfg)
    data = Seq2SeqData(train_pairs, 16, vocab.pad_id, vocab.bos_id, vocab.eos_id, val_fraction=0.0)
    tcfg = TrainConfig(
        out_dir=str(tmp_path), max_steps=300, batch_size=64, lr=3e-3, min_lr=3e-4, warmup_steps=30,
        weight_decay=0.0, eval_every=0, dtype="fp32", device="cpu", progress=False, seed=0,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest and immune to a busy machine
    try:
        result = train(model, "seq2seq", data, tcfg)
        sources = [a for a, _ in held_out]
        src, src_mask = _pad(sources, vocab.pad_id), _pad(sources, -1) != -1  # (N, S) each
        out = model.greedy_decode(src, src_mask, vocab.bos_id, vocab.eos_id, max_len=10)
    finally:
        torch.set_num_threads(threads)
    assert result.losses[-1] < 0.5 * result.losses[0]
    exact = [row.tolist()[: len(b) + 1] == [*b, vocab.eos_id] for row, (_, b) in zip(out, held_out, strict=True)]
    assert sum(exact) / len(exact) >= 0.95, f"exact match {sum(exact) / len(exact):.3f}"
