"""Attention variants: ALiBi / RoPE run past their training context, learned positions refuse it clearly,
KV-cache bytes per token follow 2 * n_layer * n_kv_head * head_dim * bytes, and window_perplexity scores
non-overlapping windows as the ALiBi paper does."""

import math

import pytest
import torch

from groundup.config import preset
from groundup.eval import perplexity, window_perplexity
from groundup.models.decoder import DecoderLM
from groundup.nn import KVCache, kv_bytes_per_token

VOCAB, BLOCK = 40, 16



def tiny(pos: str, **extra) -> DecoderLM:
    torch.manual_seed(0)
    cfg = preset("gpt-tiny", vocab_size=VOCAB, d_model=32, n_layer=2, n_head=4, block_size=BLOCK, pos=pos, **extra)
    return DecoderLM(cfg).eval()


@pytest.mark.parametrize("pos", ["alibi", "rope"])
def test_relative_positions_run_at_4x_context_and_keep_the_first_block(pos):
    # Causal attention: positions < BLOCK cannot see the later tokens, and neither ALiBi's bias (-m|i-j|) nor
    # RoPE's rotation depends on the sequence length, so the first BLOCK logits must match the short input's.
    model = tiny(pos)
    ids = torch.randint(0, VOCAB, (2, 4 * BLOCK))
    with torch.no_grad():
        long = model(ids)
        short = model(ids[:, :BLOCK])
    assert long.shape == (2, 4 * BLOCK, VOCAB)
    assert torch.isfinite(long).all()
    torch.testing.assert_close(long[:, :BLOCK], short, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("pos", ["learned", "sinusoidal"])
def test_absolute_positions_past_the_table_name_block_size(pos):
    model = tiny(pos)
    with pytest.raises(ValueError, match=f"block_size={BLOCK}"):
        model(torch.randint(0, VOCAB, (1, BLOCK + 1)))
    with pytest.raises(ValueError, match=f"block_size={BLOCK}"):
        window_perplexity(model, torch.randint(0, VOCAB, (4 * BLOCK + 1,)), context=2 * BLOCK)


def test_learned_positions_evaluate_up_to_their_table():
    result = window_perplexity(tiny("learned"), torch.randint(0, VOCAB, (3 * BLOCK + 1,)), context=BLOCK)
    assert result["windows"] == 3 and result["tokens"] == 3 * BLOCK


@pytest.mark.parametrize("n_kv_head", [1, 2, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kv_bytes_formula_equals_the_cache_tensors(n_kv_head, dtype):
    model = tiny("rope", n_kv_head=n_kv_head)
    cache = model.new_cache(batch_size=3, max_len=20, dtype=dtype)
    head_dim = 32 // 4
    formula = kv_bytes_per_token(2, n_kv_head, head_dim, dtype)
    assert cache.bytes_per_token() == formula
    # Hand count: 2 (k, v) * 2 layers * n_kv_head * 8 dims * element size; the whole cache is that per slot.
    assert formula == 2 * 2 * n_kv_head * 8 * (4 if dtype == torch.float32 else 2)
    assert cache.nbytes() == formula * 3 * 20


def test_mqa_cache_is_n_head_times_smaller_than_mha():
    mha = KVCache(4, 1, 8, 64, 16).bytes_per_token()
    mqa = KVCache(4, 1, 1, 64, 16).bytes_per_token()
    assert mha == 8 * mqa == 2 * 4 * 8 * 16 * 4


def test_kv_bytes_rejects_bad_input_by_name():
    with pytest.raises(ValueError, match="n_kv_head=0"):
        kv_bytes_per_token(2, 0, 8)


class ZeroLogits(torch.nn.Module):
    """A 'model' that predicts the uniform distribution: its perplexity is exactly the vocabulary size."""

    def __init__(self) -> None:
        super().__init__()
        self.config = preset("gpt-tiny", vocab_size=VOCAB, block_size=BLOCK, pos="alibi")
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*ids.shape, VOCAB)


def test_window_perplexity_of_uniform_predictions_is_the_vocab_size():
    result = window_perplexity(ZeroLogits(), torch.randint(0, VOCAB, (10 * BLOCK + 5,)), context=3 * BLOCK,
                               score_last=BLOCK, batch_size=2)
    assert result["windows"] == 3  # (10*16 + 5 - 1) // 48; the 20-token tail is dropped
    assert result["tokens"] == 3 * BLOCK
    assert math.isclose(result["ppl"], VOCAB, rel_tol=1e-6)


def test_window_perplexity_at_block_size_equals_sliding_perplexity_with_full_stride():
    # The existing perplexity() with stride = block_size also scores every token once in disjoint windows.
    model = tiny("alibi")
    ids = torch.randint(0, VOCAB, (5 * BLOCK + 1,))
    ours = window_perplexity(model, ids, context=BLOCK, batch_size=2)
    reference = perplexity(model, ids, stride=BLOCK)
    assert ours["tokens"] == reference["tokens"] == 5 * BLOCK
    assert math.isclose(ours["nll"], reference["nll"], rel_tol=1e-5)


def test_score_last_matches_a_hand_written_loop():
    model = tiny("rope")
    ids = torch.randint(0, VOCAB, (4 * BLOCK + 1,))
    context, last = 2 * BLOCK, 5
    nll = []
    with torch.no_grad():
        for w in range(2):
            window = ids[w * context : (w + 1) * context + 1]
            logp = model(window[None, :-1])[0].log_softmax(-1)  # (context, V)
            nll += [-logp[t, window[t + 1]].item() for t in range(context - last, context)]
    result = window_perplexity(model, ids, context=context, score_last=last)
    assert result["tokens"] == 10
    assert math.isclose(result["nll"], sum(nll) / len(nll), rel_tol=1e-5)


BAD_ARGUMENTS = [(dict(context=0), "context=0"), (dict(context=8, score_last=9), "score_last=9"),
                 (dict(context=100), "at least context")]


@pytest.mark.parametrize("kwargs, field", BAD_ARGUMENTS)
def test_window_perplexity_bad_arguments_are_named(kwargs, field):
    with pytest.raises(ValueError, match=field):
        window_perplexity(tiny("alibi"), torch.randint(0, VOCAB, (50,)), **kwargs)


def one_query_masks(B: int, H: int, S: int) -> dict[str, torch.Tensor | None]:
    from groundup.nn import alibi_slopes, build_mask

    pad = torch.ones(B, S, dtype=torch.long)
    pad[0, :3] = 0  # left padding in row 0
    return {"none": None, "padding": build_mask(1, S - 1, True, pad)[0],
            "alibi": build_mask(1, S - 1, True, None, alibi_slopes(H))[0],
            "alibi+padding": build_mask(1, S - 1, True, pad, alibi_slopes(H))[0]}


@pytest.mark.parametrize("n_kv_head", [1, 2])
@pytest.mark.parametrize("mask_kind", ["none", "padding", "alibi", "alibi+padding"])
def test_one_query_shared_kv_sdpa_equals_naive(n_kv_head, mask_kind):
    # The SDPA decode path folds query heads of a group into the query axis; the naive path repeats K/V
    # per head as the definition says. Head h must still read K/V head h // (H / n_kv_head).
    from groundup.nn import attend

    torch.manual_seed(0)
    B, H, S, D = 2, 4, 9, 8
    q, k, v = torch.randn(B, H, 1, D), torch.randn(B, n_kv_head, S, D), torch.randn(B, n_kv_head, S, D)
    mask = one_query_masks(B, H, S)[mask_kind]
    torch.testing.assert_close(attend(q, k, v, mask, backend="sdpa"), attend(q, k, v, mask, backend="naive"),
                               atol=1e-5, rtol=1e-5)
