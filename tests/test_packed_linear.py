"""Inference layouts of linear layers compute what nn.Linear computes, where this machine runs them (the bf16 packed
layout needs native bf16; elsewhere pack_for_inference keeps plain layers: tests/test_runtime.py simulates both)."""

import copy

import pytest
import torch

from groundup import runtime
from groundup.config import preset, vision_preset
from groundup.models.decoder import DecoderLM
from groundup.models.vit import ViT
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


def test_many_rows_packs_fp32_for_every_row_count_with_the_same_outputs():
    """pack_for_inference(many_rows=True): an image encoder's fp32 linears packed by oneDNN for all rows."""
    torch.manual_seed(0)
    model = ViT(vision_preset("vit-tiny", n_layer=2)).eval()
    pixels = torch.randn(3, 1, 28, 28)
    with torch.inference_mode():
        want = model(pixels)
        swapped = pack_for_inference(model, many_rows=True)
        got = model(pixels)
    linears = [m for m in model.modules() if isinstance(m, PackedLinear)]
    assert swapped == len(linears) > 0 and all(m.max_packed_rows is None for m in linears)
    assert torch.allclose(got, want, atol=1e-5)


def test_a_machine_whose_onednn_cannot_pack_keeps_plain_linears(monkeypatch):
    """A CPU without oneDNN's packed kernel (simulated: the reorder raises): pack_for_inference(many_rows=True)
    swaps nothing and the encoder computes as before."""
    def no_reorder(*args, **kwargs):
        raise RuntimeError("mkldnn reorder not supported on this CPU")

    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", no_reorder)
    torch.manual_seed(0)
    model = ViT(vision_preset("vit-tiny", n_layer=1)).eval()
    pixels = torch.randn(2, 1, 28, 28)
    with torch.inference_mode():
        want = model(pixels)
        assert pack_for_inference(model, many_rows=True) == 0
        assert torch.equal(model(pixels), want)
    assert not any(isinstance(m, PackedLinear) for m in model.modules())
