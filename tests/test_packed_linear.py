"""Inference layouts of linear layers compute what nn.Linear computes."""

import copy

import pytest
import torch

from groundup.config import preset
from groundup.models.decoder import DecoderLM
from groundup.nn.packed_linear import PackedLinear, TransposedLinear, pack_for_inference

CASES = [(PackedLinear, torch.bfloat16, 2e-2), (TransposedLinear, torch.float32, 1e-5)]


@pytest.mark.parametrize("kind, dtype, tol", CASES)
def test_fast_linears_equal_linear_at_decode_and_prefill_shapes(kind, dtype, tol):
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 96).to(dtype)
    fast = kind(linear)
    for shape in [(1, 1, 64), (8, 1, 64), (2, 33, 64)]:
        x = torch.randn(shape, dtype=dtype)
        torch.testing.assert_close(fast(x).float(), linear(x).float(), atol=tol, rtol=tol)


@pytest.mark.parametrize(
    "kind, dtype, tol", [(TransposedLinear, torch.float32, 1e-5), (PackedLinear, torch.bfloat16, 5e-2)],
)
def test_packing_a_model_keeps_its_logits(kind, dtype, tol):
    torch.manual_seed(0)
    model = DecoderLM(preset("llama-tiny", vocab_size=80, n_layer=2)).eval().to(dtype)
    packed = copy.deepcopy(model)
    assert pack_for_inference(packed) == 2 * 7 + 1  # q, k, v, o, gate, up, down per layer + the head
    assert isinstance(packed.lm_head, kind)
    ids = torch.randint(0, 80, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(packed(ids).float(), model(ids).float(), atol=tol, rtol=tol)
