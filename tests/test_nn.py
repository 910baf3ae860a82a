"""The nn parts against their papers' formulas and against each other."""

import math

import pytest
import torch

from groundup.config import ConfigError, ModelConfig, preset
from groundup.nn import (
    Attention,
    RMSNorm,
    alibi_bias,
    alibi_slopes,
    apply_rope,
    attend,
    build_mask,
    rope_table,
    sinusoidal_table,
)


def qkv(B=2, H=4, Hkv=4, T=7, S=7, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, T, D, generator=g), torch.randn(B, Hkv, S, D, generator=g),
            torch.randn(B, Hkv, S, D, generator=g))


@pytest.mark.parametrize("Hkv", [4, 2, 1])
def test_sdpa_equals_naive_causal(Hkv):
    q, k, v = qkv(Hkv=Hkv)
    torch.testing.assert_close(attend(q, k, v, is_causal=True), attend(q, k, v, is_causal=True, backend="naive"))


def test_sdpa_equals_naive_with_padding_and_alibi():
    q, k, v = qkv()
    pad = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
    for slopes in (None, alibi_slopes(4)):
        mask, is_causal = build_mask(7, 0, True, pad, slopes)
        assert not is_causal
        torch.testing.assert_close(attend(q, k, v, mask), attend(q, k, v, mask, backend="naive"))


def test_naive_attention_is_softmax_formula():
    q, k, v = qkv(B=1, H=1, Hkv=1, T=3, S=3, D=4)
    expected = torch.softmax(q[0, 0] @ k[0, 0].T / 2.0, dim=-1) @ v[0, 0]
    torch.testing.assert_close(attend(q, k, v, backend="naive")[0, 0], expected)


def test_gqa_equals_mha_with_repeated_kv_heads():
    """A GQA layer equals an MHA layer whose k/v weights repeat each kv head across its query group."""
    torch.manual_seed(0)
    gqa = Attention(ModelConfig(d_model=32, n_head=4, n_kv_head=2))
    mha = Attention(ModelConfig(d_model=32, n_head=4, n_kv_head=4))
    D = 8
    with torch.no_grad():
        for name in ("q_proj", "o_proj"):
            getattr(mha, name).load_state_dict(getattr(gqa, name).state_dict())
        for name in ("k_proj", "v_proj"):
            w = getattr(gqa, name).weight.view(2, D, 32).repeat_interleave(2, dim=0).reshape(32, 32)
            b = getattr(gqa, name).bias.view(2, D).repeat_interleave(2, dim=0).reshape(32)
            getattr(mha, name).weight.copy_(w)
            getattr(mha, name).bias.copy_(b)
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(gqa(x, is_causal=True), mha(x, is_causal=True))


def test_alibi_slopes_match_paper():
    # Press et al.: for 8 heads the slopes are 1/2, 1/4, ..., 1/256.
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0 ** -i for i in range(1, 9)]))
    # 6 heads: the 4-head geometric sequence, then every other slope of the 8-head one.
    torch.testing.assert_close(alibi_slopes(6), torch.tensor([2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8, 2.0**-1, 2.0**-3]))


def test_alibi_bias_hand_checked():
    bias = alibi_bias(torch.tensor([0.5]), torch.arange(3), torch.arange(3))
    assert bias[0, 2].tolist() == [-1.0, -0.5, 0.0]
    assert bias[0, 0].tolist() == [0.0, -0.5, -1.0]


def test_rope_rotates_pairs_by_position_angle():
    # head_dim 2 -> one frequency of 1 rad/position: (x0, x1) rotates by p radians.
    cos, sin = rope_table(4, 2)
    x = torch.tensor([1.0, 2.0]).expand(1, 1, 4, 2)
    y = apply_rope(x, cos[None, None], sin[None, None])
    for p in range(4):
        c, s = math.cos(p), math.sin(p)
        torch.testing.assert_close(y[0, 0, p], torch.tensor([1.0 * c - 2.0 * s, 2.0 * c + 1.0 * s]))


def test_rope_scores_depend_only_on_relative_position():
    cos, sin = rope_table(32, 16, theta=500.0)
    q, k = torch.randn(16), torch.randn(16)

    def rotated(v, p):
        return apply_rope(v.view(1, 1, 1, 16), cos[p].view(1, 1, 1, 16), sin[p].view(1, 1, 1, 16)).flatten()

    score = lambda m, n: rotated(q, m) @ rotated(k, n)
    torch.testing.assert_close(score(5, 2), score(20, 17))
    torch.testing.assert_close(score(9, 9), score(0, 0))


def test_sinusoidal_table_formula():
    table = sinusoidal_table(50, 16)
    p, i = 37, 3
    assert table[p, 2 * i].item() == pytest.approx(math.sin(p / 10000 ** (2 * i / 16)), abs=1e-5)
    assert table[p, 2 * i + 1].item() == pytest.approx(math.cos(p / 10000 ** (2 * i / 16)), abs=1e-5)


def test_rmsnorm_formula():
    norm = RMSNorm(4, eps=0.0)
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    torch.testing.assert_close(norm(x), x / math.sqrt(7.5))


def test_fully_padded_rows_stay_finite():
    mask, _ = build_mask(3, 0, True, torch.tensor([[0, 0, 1]]))
    q, k, v = qkv(B=1, T=3, S=3)
    assert torch.isfinite(attend(q, k, v, mask)).all()


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(d_model=100, n_head=3), "d_model"),
        (dict(n_head=6, n_kv_head=4), "n_kv_head"),
        (dict(pos="absolute"), "pos"),
        (dict(norm="batchnorm"), "norm"),
        (dict(n_layer=0), "n_layer"),
    ],
)
def test_bad_config_names_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field):
        ModelConfig(**overrides)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="gpt2"):
        preset("gpt5")


def test_config_from_dict_rejects_unknown_fields():
    with pytest.raises(ConfigError, match="n_layers"):
        ModelConfig.from_dict({"n_layers": 3})
