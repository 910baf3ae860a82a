"""Packed bf16 linears compute what nn.Linear computes."""

import copy

import torch

from groundup.config import preset
from groundup.models.decoder import DecoderLM
from groundup.nn.packed_linear import PackedLinear, pack_for_inference


def test_packed_linear_equals_linear_at_decode_and_prefill_shapes():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 96).to(torch.bfloat16)
    packed = PackedLinear(linear)
    for shape in [(1, 1, 64), (8, 1, 64), (2, 33, 64)]:
        x = torch.randn(shape, dtype=torch.bfloat16)
        torch.testing.assert_close(packed(x).float(), linear(x).float(), atol=2e-2, rtol=2e-2)


def test_packing_a_bf16_model_keeps_its_logits_and_skips_fp32():
    torch.manual_seed(0)
    model = DecoderLM(preset("llama-tiny", vocab_size=80, n_layer=2)).eval()
    assert pack_for_inference(model) == 0  # fp32: stock kernels are already at the limit
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    packed = copy.deepcopy(bf16)
    n = pack_for_inference(packed)
    assert n == 2 * 7 + 1  # q, k, v, o, gate, up, down per layer + the head
    ids = torch.randint(0, 80, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(packed(ids).float(), bf16(ids).float(), atol=5e-2, rtol=5e-2)
