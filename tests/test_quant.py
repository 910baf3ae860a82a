"""Weight-only quantization: error bounds per format, fused kernels vs the reference path, save/load, the module
swap on a decoder, and bad input."""

from __future__ import annotations

import copy

import pytest
import torch

from groundup import build_model, load_pretrained, quantize
from groundup.config import preset
from groundup.quant import QuantError, QuantLinear, dequantize, formats
from groundup.quant.linear import from_kernel_layout, int4_kernel_block, to_kernel_layout
from groundup.train import save_checkpoint

BF16_EPS = 2.0**-8  # bf16 keeps 8 significant bits: a rounding moves a value by at most 2^-9 of it



def weight(n: int = 128, k: int = 256, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    w[3] = 0.0  # an all-zero row / group / block must decode to zeros
    w[5, :64] += 4.0  # a group whose values sit far from zero (int4's zero must follow)
    return w


def tiny_decoder(d_model: int = 128) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(preset("llama-tiny", vocab_size=65, n_layer=2, d_model=d_model, n_head=4, n_kv_head=2,
                              d_ff=2 * d_model, block_size=32)).eval()


# --- formats ---------------------------------------------------------------------------------------------------
def test_int8_error_is_at_most_half_a_step_and_the_row_max_hits_127():
    w = weight()
    t = formats.quantize_int8(w)
    err = (formats.dequantize_int8(t) - w).abs()
    assert (err <= t["scale"][:, None] / 2 * (1 + 1e-6)).all()  # rounding to the nearest multiple of scale
    assert t["qweight"].dtype == torch.int8 and int(t["qweight"].abs().max()) == 127
    assert (t["qweight"][3] == 0).all() and (formats.dequantize_int8(t)[3] == 0).all()


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_int4_error_is_half_a_step_plus_bf16_rounding_of_scale_and_zero(group_size):
    w = weight()
    t = formats.quantize_int4(w, group_size)
    sz = t["scales_zeros"].float().transpose(0, 1)  # (N, G, 2)
    scale, zero = (sz[..., i].repeat_interleave(group_size, dim=1) for i in (0, 1))
    err = (formats.dequantize_int4(t) - w).abs()
    # codes are chosen with the stored (bf16) scale and zero, so the grid is off the group's [min, max] only by
    # their rounding: at most 2^-9 of zero, and 15 steps of 2^-9 of the scale, at either end of the range
    assert (err <= scale / 2 + BF16_EPS * (15 * scale + zero.abs()) + 1e-6).all()
    assert err[5, :64].max() <= scale[5, 0] / 2 + BF16_EPS * (15 * scale[5, 0] + zero[5, 0].abs())
    assert (formats.dequantize_int4(t)[3] == 0).all()
    assert t["qweight"].shape == (128, 128) and t["scales_zeros"].shape == (256 // group_size, 128, 2)


def test_nf4_values_are_exactly_levels_times_the_double_quantized_absmax():
    w = weight(64, 512)
    t = formats.quantize_nf4(w)
    deq = formats.dequantize_nf4(t).view(64, 8, 64)  # (N, blocks, 64)
    absmax = formats.nf4_absmax(t).view(64, 8, 1)
    codes = formats.unpack_nibbles(t["qweight"]).view(64, 8, 64).long()
    assert torch.equal(deq, formats.NF4_LEVELS[codes] * absmax)  # exactly a level times the block scale
    # double quantization: each absmax is within half an int8 step of the true block absmax
    true = w.view(64, 8, 64).abs().amax(-1).view(-1)
    step = t["absmax_scale"].repeat_interleave(formats.NF4_SCALE_BLOCK)[: true.numel()]
    assert ((formats.nf4_absmax(t) - true).abs() <= step / 2 + 1e-6).all()
    # each weight took the level nearest to w / (its exact absmax)
    normed = w.view(64, 8, 64) / true.clamp(min=formats.TINY).view(64, 8, 1)
    nearest = (normed[..., None] - formats.NF4_LEVELS).abs().amin(-1)
    assert ((normed - formats.NF4_LEVELS[codes]).abs() <= nearest + 1e-6).all()
    assert t["absmax_q"].dtype == torch.int8 and t["absmax_offset"].shape == (1,)


def test_our_int4_layout_is_the_kernels_and_round_trips():
    block = int4_kernel_block()
    assert block in (64, 32, 16)  # this CPU has the fused int4 kernel (PyTorch >= 2.6)
    codes = torch.randint(0, 16, (128, 96), generator=torch.Generator().manual_seed(1), dtype=torch.int32)
    packed = formats.pack_nibbles(codes)
    assert torch.equal(formats.unpack_nibbles(packed), codes.to(torch.uint8))
    theirs = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 2)
    assert torch.equal(to_kernel_layout(packed, block), theirs)
    assert torch.equal(from_kernel_layout(theirs, block), packed)


# --- QuantLinear -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_fused_kernel_equals_reference_within_bf16_rounding(fmt):
    w, bias = weight(), torch.randn(128)
    layer = QuantLinear.from_linear(fmt, w, bias)
    assert layer.kernel() == fmt
    x = torch.randn(5, 256, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        fused, xb = layer(x), x.to(torch.bfloat16)
        assert torch.equal(layer(xb), layer.matmul(xb) + bias.to(torch.bfloat16))  # decode fast path == general
        layer.use_kernel = False
        reference = layer(x)
    # the kernel computes with bf16 activations (and bf16 int8 scales) and rounds its output to bf16: each
    # product is off by at most ~3 bf16 roundings of itself, so the sum by 2^-7 of sum |x| |w|
    bound = 2 * BF16_EPS * (x.abs() @ layer.dequantize().abs().t()) + 1e-5
    assert ((fused - reference).abs() <= bound).all()
    assert not torch.equal(fused, reference)  # two different code paths really ran


@pytest.mark.parametrize("fmt", formats.FORMATS)
def test_input_gradient_is_the_dequantized_weights_and_nothing_is_kept_for_it(fmt):
    layer = QuantLinear.from_linear(fmt, weight())
    x = torch.randn(3, 256, requires_grad=True)
    g = torch.randn(3, 128)
    y = layer(x)
    assert y.grad_fn is not None and not list(layer.parameters())  # no weight Parameter to train
    y.backward(g)
    assert torch.allclose(x.grad, g @ layer.dequantize(), atol=1e-5)  # d(x W^T)/dx = W


def test_nf4_and_non_cpu_shapes_take_the_reference_path():
    assert QuantLinear.from_linear("nf4", weight()).kernel() is None
    # 80 rows are not whole kernel blocks on any machine (32 rows with AVX2, 64 with AVX-512)
    layer = QuantLinear.from_linear("int4", weight(80, 256))
    assert layer.kernel() is None
    x = torch.randn(2, 256)
    with torch.no_grad():
        assert torch.allclose(layer(x), x @ formats.dequantize_int4(formats.quantize_int4(weight(80, 256))).t())


def test_int8_widths_the_kernel_cannot_read_take_the_reference_path():
    """24 inputs are not whole 16-wide reads: the AVX-512 kernel would crash the process on them."""
    layer = QuantLinear.from_linear("int8", weight(64, 24))
    assert layer.kernel() is None
    x = torch.randn(3, 24)
    with torch.no_grad():
        assert torch.allclose(layer(x), x @ layer.dequantize().t(), atol=1e-5)
        assert layer(x.to(torch.bfloat16)).shape == (3, 64)  # the bf16 decode path does not reach the kernel either


def test_dtype_casts_leave_the_stored_format_alone():
    layer = QuantLinear.from_linear("int8", weight(), torch.randn(128))
    scale = layer.scale.clone()
    layer.to(torch.bfloat16)
    assert layer.scale.dtype == torch.float32 and torch.equal(layer.scale, scale)
    assert layer.kernel_scale.dtype == torch.bfloat16 and layer.bias.dtype == torch.bfloat16
    assert layer(torch.randn(2, 256, dtype=torch.bfloat16)).dtype == torch.bfloat16


# --- the model -------------------------------------------------------------------------------------------------
def test_quantize_swaps_the_block_linears_and_reports_exact_bytes():
    model = tiny_decoder()
    n_before = sum(p.numel() for p in model.parameters())  # the tied head counted once
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())  # e.g. RoPE tables
    report = quantize(model, "int8")
    swapped = [n for n, m in model.named_modules() if isinstance(m, QuantLinear)]
    assert len(swapped) == 2 * 7 and report.modules == 14
    assert type(model.lm_head) is torch.nn.Linear and model.lm_head.weight is model.embed.tok_emb.weight
    # int8: 1 byte a weight + a 4-byte scale and a 2-byte kernel copy per row; fp32 before
    linear = [(m.out_features, m.in_features) for m in model.modules() if isinstance(m, QuantLinear)]
    assert report.weight_bytes_before == sum(4 * o * i for o, i in linear)
    assert report.weight_bytes_after == sum(o * i + 6 * o for o, i in linear)
    assert report.model_bytes_before == 4 * n_before + buffers
    saved = report.weight_bytes_before - report.weight_bytes_after
    assert report.model_bytes_before - report.model_bytes_after == saved
    assert not any(p.dtype in (torch.int8, torch.uint8) for p in model.parameters())  # codes are buffers


def test_quantized_logits_stay_close_to_the_float_models():
    model = tiny_decoder()
    ids = torch.randint(0, 65, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(ids)
        errors = {}
        for fmt in formats.FORMATS:
            q = copy.deepcopy(model)
            quantize(q, fmt)
            errors[fmt] = float((q(ids) - ref).norm() / ref.norm())
    # weight noise relative to the weights: int8 ~ (absmax/127)/sqrt(12) / std ~ 0.8%; 4 bits ~ 16x that; the
    # logits carry a similar relative error (two layers, a tied float head); bf16 activations add ~0.4%
    assert errors["int8"] < 0.03
    assert errors["int4"] < 0.25 and errors["nf4"] < 0.25
    assert errors["int8"] < errors["int4"] and errors["int8"] < errors["nf4"]


@pytest.mark.parametrize("fmt", formats.FORMATS)
def test_save_and_load_give_identical_outputs(tmp_path, fmt):
    model = tiny_decoder()
    quantize(model, fmt)
    ids = torch.randint(0, 65, (1, 12))
    path = save_checkpoint(tmp_path / "ckpt", model)
    loaded, _ = load_pretrained(path)
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))
    assert loaded.config.extra["quantization"]["format"] == fmt
    kinds = {type(m).__name__ for n, m in loaded.named_modules() if n.endswith("q_proj")}
    assert kinds == {"QuantLinear"}
    state = model.state_dict()["blocks.0.attn.q_proj.qweight"]  # the portable layout, whatever the CPU
    assert torch.equal(formats.unpack_nibbles(state) if fmt != "int8" else state,
                       formats.unpack_nibbles(model.blocks[0].attn.q_proj.tensors()["qweight"])
                       if fmt != "int8" else model.blocks[0].attn.q_proj.qweight)


def test_dequantize_gives_back_float_linears_with_the_same_output():
    model = tiny_decoder()
    quantize(model, "nf4")
    ids = torch.randint(0, 65, (1, 8))
    with torch.no_grad():
        before = model(ids)
        dequantize(model)
        assert torch.allclose(model(ids), before, atol=1e-5)
    assert not any(isinstance(m, QuantLinear) for m in model.modules())
    assert "quantization" not in model.config.extra
    quantize(model, "int8")  # a float model again: quantizing is allowed


# --- bad input -------------------------------------------------------------------------------------------------
def test_quantizing_twice_is_refused():
    model = tiny_decoder()
    quantize(model, "int8")
    with pytest.raises(QuantError, match=r"already quantized \(int8\).*load it again"):
        quantize(model, "int4")


def test_unknown_format_lists_the_formats():
    with pytest.raises(QuantError, match=r"format 'fp8' is unknown; use one of \['int8', 'int4', 'nf4'\]"):
        quantize(tiny_decoder(), "fp8")


def test_group_size_must_divide_in_features_and_be_supported():
    model = build_model(preset("llama-tiny", vocab_size=65, n_layer=1, d_model=96, n_head=3, n_kv_head=1,
                               d_ff=192, block_size=16))
    with pytest.raises(QuantError, match=r"group_size=64 does not divide in_features=96; use group_size from \[32\]"):
        quantize(model, "int4", group_size=64)
    with pytest.raises(QuantError, match=r"group_size=48 is not supported for int4; use one of \[32, 64, 128\]"):
        quantize(model, "int4", group_size=48)
    with pytest.raises(QuantError, match=r"nf4 needs in_features divisible by its blocksize 64, got 96"):
        quantize(model, "nf4")
    assert not any(isinstance(m, QuantLinear) for m in model.modules())  # a refused plan changes nothing


def test_an_int8_head_quantizes_a_copy_of_the_tied_output_projection_and_saves(tmp_path):
    model = tiny_decoder()
    emb = model.embed.tok_emb.weight.detach().clone()
    ids = torch.randint(0, 65, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        body_only = copy.deepcopy(model)
        quantize(body_only, "int4")
        report = quantize(model, "int4", head="int8")
        assert isinstance(model.lm_head, QuantLinear) and model.lm_head.fmt == "int8"
        assert torch.equal(model.embed.tok_emb.weight, emb)  # the lookup table stays float
        # the head's int8 codes cost one byte per weight plus 6 per row, its float copy (tied) was 4 per weight
        assert report.weight_bytes_after - body_only.quant_report.weight_bytes_after == 65 * 128 + 6 * 65
        out, ref = model(ids), body_only(ids)
        assert float((out - ref).norm() / ref.norm()) < 0.02  # int8 head: a small change on top of int4
        loaded, _ = load_pretrained(save_checkpoint(tmp_path / "ckpt", model))
        assert torch.equal(loaded(ids), out)
    with pytest.raises(QuantError, match="unknown"):
        quantize(tiny_decoder(), "int4", head="int3")
