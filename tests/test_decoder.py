"""Decoder invariants: the KV cache changes nothing, the future never leaks, padding is invisible."""

import pytest
import torch

from groundup.config import preset
from groundup.generate import ContextLimitWarning, GenerationConfig, generate, sample
from groundup.models.decoder import DecoderLM

VARIANTS = {
    "learned": dict(pos="learned"),
    "sinusoidal": dict(pos="sinusoidal"),
    "rope": dict(pos="rope", norm="rmsnorm", mlp="swiglu", bias=False),
    "alibi": dict(pos="alibi"),
    "gqa": dict(pos="rope", n_kv_head=2),
    "mqa": dict(pos="rope", n_kv_head=1),
    "postnorm": dict(prenorm=False),
}


def tiny(variant: str, **extra) -> DecoderLM:
    torch.manual_seed(0)
    shape = dict(vocab_size=50, d_model=32, n_layer=2, n_head=4, block_size=32)
    cfg = preset("gpt-tiny", **shape, **VARIANTS[variant], **extra)
    return DecoderLM(cfg).eval()


@pytest.mark.parametrize("variant", VARIANTS)
def test_kv_cache_decode_equals_full_forward(variant):
    model = tiny(variant)
    ids = torch.randint(0, 50, (2, 12))
    full = model(ids)
    cache = model.new_cache(2, 12)
    pieces = [model(ids[:, :5], cache=cache)]  # prefill
    pieces += [model(ids[:, t : t + 1], cache=cache, start=t) for t in range(5, 9)]  # one token at a time
    pieces.append(model(ids[:, 9:], cache=cache, start=9))  # a chunk after decoding
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("variant", VARIANTS)
def test_future_tokens_never_change_earlier_logits(variant):
    model = tiny(variant)
    ids = torch.randint(0, 50, (1, 10))
    changed = ids.clone()
    changed[0, 6] = (ids[0, 6] + 1) % 50
    a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


@pytest.mark.parametrize("variant", ["learned", "rope", "alibi"])
def test_left_padding_is_invisible(variant):
    model = tiny(variant)
    ids = torch.randint(1, 50, (1, 6))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], dim=1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1]])
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(padded, attention_mask=mask, position_ids=position_ids)
    torch.testing.assert_close(out[:, 3:], model(ids), atol=1e-5, rtol=1e-4)


def test_sdpa_and_naive_models_agree():
    sdpa, naive = tiny("alibi"), tiny("alibi", attn_backend="naive")
    ids = torch.randint(0, 50, (2, 16))
    torch.testing.assert_close(sdpa(ids), naive(ids), atol=1e-5, rtol=1e-4)


def test_tied_embeddings_share_storage():
    model = tiny("learned")
    assert model.lm_head.weight.data_ptr() == model.embed.tok_emb.weight.data_ptr()
    untied = tiny("learned", tie_embeddings=False)
    assert untied.lm_head.weight.data_ptr() != untied.embed.tok_emb.weight.data_ptr()


def test_learned_positions_reject_inputs_past_the_context():
    model = tiny("learned")
    with pytest.raises(ValueError, match="block_size=32"):
        model(torch.zeros(1, 33, dtype=torch.long))


@pytest.mark.parametrize("variant", ["learned", "alibi", "gqa"])
def test_batched_generation_of_unequal_prompts_equals_one_at_a_time(variant):
    model = tiny(variant)
    prompts = [[1, 2, 3, 4, 5, 6, 7], [9, 8], [3, 3, 3, 3]]
    cfg = GenerationConfig(max_new_tokens=8, temperature=0)
    assert generate(model, prompts, cfg) == [generate(model, p, cfg)[0] for p in prompts]


def test_greedy_generation_equals_argmax_without_cache():
    model = tiny("rope")
    ids = [5, 6, 7]
    for _ in range(8):
        ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    assert generate(model, [5, 6, 7], GenerationConfig(max_new_tokens=8, temperature=0))[0] == ids[3:]


def test_generation_stops_at_eos_and_at_the_context_end():
    model = tiny("learned")
    first = generate(model, [1, 2], GenerationConfig(max_new_tokens=5, temperature=0))[0][0]
    assert generate(model, [1, 2], GenerationConfig(max_new_tokens=5, temperature=0, eos_id=first))[0] == [first]
    # block_size 32: a 30-token prompt leaves room for 2 tokens only, and learned positions cannot slide past it.
    with pytest.warns(ContextLimitWarning, match="stopped after 2 of 10 tokens"):
        assert len(generate(model, list(range(30)), GenerationConfig(max_new_tokens=10, temperature=0))[0]) == 2


def test_prompt_longer_than_context_is_a_clear_error():
    with pytest.raises(ValueError, match="block_size=32"):
        generate(tiny("learned"), list(range(40)), GenerationConfig(max_new_tokens=2))


def test_seeded_sampling_is_reproducible():
    model = tiny("learned")
    cfg = GenerationConfig(max_new_tokens=12, temperature=1.0, seed=3)
    assert generate(model, [1, 2], cfg) == generate(model, [1, 2], cfg)
    assert generate(model, [1, 2], cfg) != generate(model, [1, 2], GenerationConfig(max_new_tokens=12, seed=4))


def test_top_k_and_top_p_only_sample_allowed_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    top_k = {int(sample(logits, GenerationConfig(top_k=2), g)) for _ in range(200)}
    assert top_k == {0, 1}
    # top_p=0.7: 0.5 alone is short of 0.7, 0.5 + 0.3 reaches it, so tokens 0 and 1 remain.
    top_p = {int(sample(logits, GenerationConfig(top_p=0.7), g)) for _ in range(200)}
    assert top_p == {0, 1}
    assert int(sample(logits, GenerationConfig(temperature=0))) == 0


@pytest.mark.parametrize("bad", [dict(max_new_tokens=0), dict(temperature=-1), dict(top_k=0), dict(top_p=1.5)])
def test_bad_generation_config_names_the_field(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        GenerationConfig(**bad)
