"""Inference layouts of linear layers compute what nn.Linear computes, where this machine runs them (the bf16 packed
layout needs native bf16; elsewhere pack_for_inference keeps plain layers: tests/test_runtime.py simulates both)."""

import copy

import pytest
import torch

from groundup import runtime
from groundup.config import preset
from groundup.models.decoder import DecoderLM
from groundup.nn.packed_linear import PackedLinear, TransposedLinear, pack_for_inference

ONEDNN_BF16 = runtime.fast_path("onednn_bf16_pack")
CASES = [(PackedLinear, torch.bfloat16, 2e-2), (TransposedLinear, torch.float32, 1e-5)]


@pytest.mark.parametrize("kind, dtype, tol", [c for c in CASES if c[0] is not PackedLinear or ONEDNN_BF16])
def test_fast_linears_equal_linear_at_decode_and_prefill_shapes(kind, dtype, tol):
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 96).to(dtype)
    fast = kind(linear)
    for shape in [(1, 1, 64), (8, 1, 64), (2, 33, 64)]:
        x = torch.randn(shape, dtype=dtype)
        torch.testing.assert_close(fast(x).float(), linear(x).float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("kind, dtype, tol", [
    (TransposedLinear, torch.float32, 1e-5),
    (PackedLinear if ONEDNN_BF16 else torch.nn.Linear, torch.bfloat16, 5e-2),  # without native bf16: kept as is
])
def test_packing_a_model_keeps_its_logits(kind, dtype, tol):
    torch.manual_seed(0)
    model = DecoderLM(preset("llama-tiny", vocab_size=80, n_layer=2)).eval().to(dtype)
    packed = copy.deepcopy(model)
    layers = 2 * 7 + 1  # q, k, v, o, gate, up, down per layer + the head
    assert pack_for_inference(packed) == (0 if kind is torch.nn.Linear else layers)
    assert type(packed.lm_head) is kind
    ids = torch.randint(0, 80, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(packed(ids).float(), model(ids).float(), atol=tol, rtol=tol)
