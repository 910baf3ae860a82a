"""BERT-style encoder: parity with transformers.BertForPreTraining, padding invariance, bidirectionality."""

from __future__ import annotations

import pytest
import torch
import transformers
from torch.testing import assert_close

from groundup.config import ConfigError, preset
from groundup.models import EncoderForClassification, EncoderForPreTraining, build_model, mean_pool

V, D, H, FF, L, P = 99, 32, 4, 37, 2, 64


def bert_key_map(n_layer: int) -> dict[str, str]:
    """HF BertForPreTraining state-dict name -> groundup EncoderForPreTraining name.

    Written to move as-is into groundup/interop/hf.py. Tied tensors appear under both of their
    names on each side (word embeddings = MLM decoder weight; cls.predictions.bias = decoder bias)."""
    table = {
        "bert.embeddings.word_embeddings.weight": "encoder.embed.tok_emb.weight",
        "bert.embeddings.position_embeddings.weight": "encoder.embed.pos_emb.weight",
        "bert.embeddings.token_type_embeddings.weight": "encoder.embed.seg_emb.weight",
        "bert.embeddings.LayerNorm.weight": "encoder.embed.norm.weight",
        "bert.embeddings.LayerNorm.bias": "encoder.embed.norm.bias",
        "bert.pooler.dense.weight": "pooler.dense.weight",
        "bert.pooler.dense.bias": "pooler.dense.bias",
        "cls.predictions.transform.dense.weight": "mlm_head.dense.weight",
        "cls.predictions.transform.dense.bias": "mlm_head.dense.bias",
        "cls.predictions.transform.LayerNorm.weight": "mlm_head.norm.weight",
        "cls.predictions.transform.LayerNorm.bias": "mlm_head.norm.bias",
        "cls.predictions.decoder.weight": "mlm_head.decoder.weight",
        "cls.predictions.decoder.bias": "mlm_head.decoder.bias",
        "cls.predictions.bias": "mlm_head.decoder.bias",
        "cls.seq_relationship.weight": "nsp_head.weight",
        "cls.seq_relationship.bias": "nsp_head.bias",
    }
    layer = {
        "attention.self.query": "attn.q_proj",
        "attention.self.key": "attn.k_proj",
        "attention.self.value": "attn.v_proj",
        "attention.output.dense": "attn.o_proj",
        "attention.output.LayerNorm": "attn_norm",  # post-norm: LayerNorm(x + attn(x))
        "intermediate.dense": "mlp.up_proj",
        "output.dense": "mlp.down_proj",
        "output.LayerNorm": "mlp_norm",  # post-norm: LayerNorm(x + mlp(x))
    }
    for i in range(n_layer):
        for hf, ours in layer.items():
            for kind in ("weight", "bias"):
                table[f"bert.encoder.layer.{i}.{hf}.{kind}"] = f"encoder.blocks.{i}.{ours}.{kind}"
    return table


@pytest.fixture(scope="module")
def pair() -> tuple[torch.nn.Module, EncoderForPreTraining]:
    torch.manual_seed(0)
    hf_cfg = transformers.BertConfig(
        vocab_size=V, hidden_size=D, num_hidden_layers=L, num_attention_heads=H, intermediate_size=FF,
        max_position_embeddings=P, type_vocab_size=2, hidden_act="gelu", layer_norm_eps=1e-12,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    hf = transformers.BertForPreTraining(hf_cfg).eval()
    with torch.no_grad():  # random everything (biases and norm gains too), so a swapped tensor shows
        for name, p in hf.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if "LayerNorm.weight" in name else 0.1 * torch.randn_like(p))
    cfg = preset("bert-tiny", vocab_size=V, d_model=D, n_head=H, d_ff=FF, n_layer=L, block_size=P)
    ours = EncoderForPreTraining(cfg)
    table = bert_key_map(L)
    hf_sd, our_keys = hf.state_dict(), set(ours.state_dict())
    assert set(hf_sd) == set(table), f"unmapped HF keys: {set(hf_sd) ^ set(table)}"
    assert set(table.values()) == our_keys, f"unmapped groundup keys: {our_keys ^ set(table.values())}"
    ours.load_state_dict({ours_name: hf_sd[hf_name] for hf_name, ours_name in table.items()}, strict=True)
    return hf, ours.eval()


def _inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V, (3, 11), generator=g)
    segments = (torch.arange(11) >= 5).long().expand(3, 11).contiguous()
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, 8:] = 0
    mask[2, 4:] = 0
    return ids, segments, mask


@pytest.mark.parametrize("use_segments", [False, True])
@pytest.mark.parametrize("use_mask", [False, True])
def test_parity_with_hf_bert(pair, use_segments: bool, use_mask: bool) -> None:
    hf, ours = pair
    ids, segments, mask = _inputs()
    seg = segments if use_segments else None
    am = mask if use_mask else None
    with torch.no_grad():
        ref = hf(input_ids=ids, token_type_ids=seg, attention_mask=am, output_hidden_states=True)
        out = ours(ids, token_type_ids=seg, attention_mask=am)
    # Padded positions' outputs are undefined (HF lets a pad query see the real tokens, we also let it
    # see itself); compare real positions only, which is what any consumer reads.
    real = (mask if use_mask else torch.ones_like(mask)).bool()
    assert_close(out.hidden_states[real], ref.hidden_states[-1][real], atol=1e-5, rtol=1e-4)
    assert_close(out.mlm_logits[real], ref.prediction_logits[real], atol=1e-5, rtol=1e-4)
    assert_close(out.nsp_logits, ref.seq_relationship_logits, atol=1e-5, rtol=1e-4)
    if use_segments:  # the segment embedding is really used: no segments gives different states
        plain = ours(ids, attention_mask=am).hidden_states
        assert not torch.allclose(plain, out.hidden_states, atol=1e-3)


def test_padding_invariance(pair) -> None:
    _, ours = pair
    ids, segments, _ = _inputs(2)
    padded = torch.cat([ids, torch.zeros(3, 5, dtype=torch.long)], dim=1)  # (3, 16)
    pad_mask = torch.cat([torch.ones(3, 11), torch.zeros(3, 5)], dim=1).long()
    seg_padded = torch.cat([segments, torch.zeros(3, 5, dtype=torch.long)], dim=1)
    with torch.no_grad():
        base = ours(ids, token_type_ids=segments).hidden_states
        with_pads = ours(padded, token_type_ids=seg_padded, attention_mask=pad_mask).hidden_states
        assert_close(with_pads[:, :11], base, atol=1e-5, rtol=1e-4)
        assert_close(ours.embed(padded, pad_mask), ours.embed(ids), atol=1e-5, rtol=1e-4)
        # Without the mask the pads leak into real positions: the invariance above is the mask's doing.
        leaky = ours(padded, token_type_ids=seg_padded).hidden_states
        assert not torch.allclose(leaky[:, :11], base, atol=1e-3)


def test_bidirectional(pair) -> None:
    _, ours = pair
    ids, _, _ = _inputs(3)
    changed = ids.clone()
    changed[:, -1] = (ids[:, -1] % (V - 1)) + 1  # a different, non-pad token
    with torch.no_grad():
        a, b = ours(ids).hidden_states, ours(changed).hidden_states
    # Every earlier position sees the last token (a causal model would leave them all unchanged).
    diff = (a[:, :-1] - b[:, :-1]).abs().amax(dim=-1)  # (B, T-1)
    assert bool((diff > 1e-4).all())


def test_mean_pool() -> None:
    hidden = torch.tensor([[[1.0, 0.0], [3.0, 4.0], [100.0, 100.0]]])  # (1, 3, 2)
    mask = torch.tensor([[1, 1, 0]])
    assert_close(mean_pool(hidden, mask, normalize=False), torch.tensor([[2.0, 2.0]]))
    unit = mean_pool(hidden, mask, normalize=True)
    assert_close(unit, torch.tensor([[2.0, 2.0]]) / (8.0**0.5))
    assert_close(mean_pool(hidden, None, normalize=False), hidden.mean(dim=1))


def test_classification_head_and_tying() -> None:
    torch.manual_seed(0)
    cfg = preset("bert-tiny", n_class=5, n_layer=1)
    clf = EncoderForClassification(cfg).eval()
    ids = torch.randint(1, cfg.vocab_size, (4, 9))
    assert clf(ids, attention_mask=torch.ones_like(ids)).shape == (4, 5)
    assert clf.config is cfg
    pre = build_model("bert-tiny", n_layer=1)
    assert isinstance(pre, EncoderForPreTraining)
    assert pre.mlm_head.decoder.weight is pre.encoder.embed.tok_emb.weight


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="arch='encoder'"):
        EncoderForPreTraining(preset("gpt-tiny"))
    with pytest.raises(ConfigError, match="n_class"):
        EncoderForClassification(preset("bert-tiny", n_class=0))
    no_seg = EncoderForPreTraining(preset("bert-tiny", n_layer=1, n_segment=0))
    ids = torch.randint(1, 65, (1, 4))
    with pytest.raises(ValueError, match="n_segment"):
        no_seg(ids, token_type_ids=torch.zeros_like(ids))
