"""groundup.runtime on every kind of machine, simulated: what the probes report, the dtype "auto" picks, and the fast
paths taken only where they run (with the general path, and its results, everywhere else)."""

from __future__ import annotations

import copy
import logging
import sys
import warnings
from pathlib import Path

import pytest
import torch
from machines import ALL, AMX, AVX2, AVX512, AVX512_BF16, CUDA_AMPERE, CUDA_TURING

from groundup import runtime
from groundup.config import preset
from groundup.models.decoder import DecoderLM
from groundup.nn import packed_linear
from groundup.nn.packed_linear import PackedLinear, TransposedLinear, pack_for_inference
from groundup.quant import QuantLinear
from groundup.train import TrainConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from llama_cpp_flags import cmake_args, cpu_flags  # noqa: E402


def packing_runs_here() -> bool:
    """Whether oneDNN really packs bf16 weights on this machine's silicon (what a simulation cannot change)."""
    try:
        PackedLinear(torch.nn.Linear(16, 16).to(torch.bfloat16))
    except RuntimeError:
        return False
    return True


ONEDNN = packing_runs_here()


def fake_torch(monkeypatch, isa: str, avx512_bf16: bool, amx: bool, mkldnn_bf16: bool, cuda: str | None = None,
               cuda_bf16: bool = False) -> None:
    """Make torch's own probes answer as on another machine."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: isa)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: mkldnn_bf16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda is not None)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: cuda_bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: cuda)


@pytest.mark.parametrize("probes, expected", [
    (dict(isa="AVX2", avx512_bf16=False, amx=False, mkldnn_bf16=False), AVX2),  # Zen 3, Haswell..Comet Lake
    (dict(isa="AVX512", avx512_bf16=False, amx=False, mkldnn_bf16=True), AVX512),  # Skylake-X, Ice Lake
    (dict(isa="AVX512", avx512_bf16=True, amx=False, mkldnn_bf16=True), AVX512_BF16),  # Zen 4, Cooper Lake
    (dict(isa="AVX512", avx512_bf16=True, amx=True, mkldnn_bf16=True), AMX),  # Sapphire Rapids
    # the AVX2 dispatch level (ATEN_CPU_CAPABILITY=avx2) on AMX silicon: torch runs AVX2 kernels, so does runtime
    (dict(isa="AVX2", avx512_bf16=True, amx=True, mkldnn_bf16=True), AVX2),
    (dict(isa="AVX2", avx512_bf16=False, amx=False, mkldnn_bf16=False, cuda="NVIDIA A100", cuda_bf16=True),
     CUDA_AMPERE),
    (dict(isa="AVX2", avx512_bf16=False, amx=False, mkldnn_bf16=False, cuda="Tesla T4"), CUDA_TURING),
])
def test_probe_reads_torch_as_each_machine_reports_itself(monkeypatch, probes, expected):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    fake_torch(monkeypatch, **probes)
    assert runtime.probe() == expected


@pytest.mark.parametrize("cap, expected", [("AVX512_CORE_BF16", AVX512_BF16), ("AVX512_CORE_AMX", AMX),
                                           ("AVX512_CORE", AVX512)])
def test_onednn_cap_makes_an_amx_machine_run_as_a_lesser_one(monkeypatch, cap, expected):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    fake_torch(monkeypatch, isa="AVX512", avx512_bf16=True, amx=True, mkldnn_bf16=True)
    assert runtime.probe().amx == expected.amx and runtime.probe().cpu_bf16 == expected.cpu_bf16


# (machine, train on cpu, infer on cpu, infer on cuda): bf16 only where the hardware multiplies it
AUTO = {
    "avx2": ("fp32", "fp32", None),
    "avx512": ("fp32", "fp32", None),
    "avx512-bf16": ("fp32", "bf16", None),
    "amx": ("bf16", "bf16", None),
    "cuda-ampere": ("fp32", "fp32", "bf16"),
    "cuda-turing": ("fp32", "fp32", "fp32"),
}


@pytest.mark.parametrize("name", list(AUTO))
def test_auto_is_bf16_only_where_bf16_is_native(name):
    train_cpu, infer_cpu, cuda = AUTO[name]
    with runtime.simulate(ALL[name]):
        assert runtime.resolve_dtype("auto", "cpu", "train") == train_cpu
        assert runtime.resolve_dtype("auto", "cpu", "infer") == infer_cpu
        assert runtime.torch_dtype("auto") == runtime.DTYPES[infer_cpu]
        if cuda:
            assert runtime.resolve_dtype("auto", "cuda", "train") == cuda
            assert runtime.resolve_dtype("auto", "cuda", "infer") == cuda


def test_the_choice_is_said_in_words_a_user_can_check():
    with runtime.simulate(AVX2):
        assert runtime.dtype_note("auto", "fp32") == "dtype auto -> fp32 (CPU AVX2, no native bf16)"
    with runtime.simulate(AMX):
        assert runtime.dtype_note("auto", "bf16") == "dtype auto -> bf16 (CPU AVX512 + AMX, native bf16)"
    assert CUDA_AMPERE.describe("cuda") == "CUDA NVIDIA A100, native bf16"


def test_explicit_bf16_without_native_bf16_runs_and_warns_once():
    with runtime.simulate(AVX2):
        with pytest.warns(runtime.EmulatedBf16Warning, match=r"--dtype=bf16 on CPU AVX2, no native bf16: bf16 is"):
            assert runtime.resolve_dtype("bf16", "cpu", "infer", "--dtype") == "bf16"
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert runtime.resolve_dtype("bf16", "cpu", "infer", "--dtype") == "bf16"  # said once, not per call
    with runtime.simulate(AMX), warnings.catch_warnings():
        warnings.simplefilter("error")
        assert runtime.resolve_dtype("bf16", "cpu", "infer", "--dtype") == "bf16"  # native: nothing to say


@pytest.mark.parametrize("requested, match", [("fp8", r"--dtype='fp8' is unknown; use one of \['auto'"),
                                              ("fp16", r"--dtype=fp16 needs a GPU; on CPU use auto")])
def test_bad_dtypes_are_refused_with_the_field_named(requested, match):
    with pytest.raises(ValueError, match=match):
        runtime.resolve_dtype(requested, "cpu", "infer", "--dtype")


@pytest.mark.parametrize("name, expected", [("avx2", "fp32"), ("avx512-bf16", "fp32"), ("amx", "bf16")])
def test_train_config_defaults_to_auto_and_resolves_per_machine(name, expected):
    cfg = TrainConfig(device="cpu")
    assert cfg.dtype == "auto"
    with runtime.simulate(ALL[name]):
        assert cfg.resolved_dtype() == expected


def test_on_amx_bf16_autocast_is_picked_only_for_matmuls_large_enough_to_pay():
    with runtime.simulate(AMX):
        assert runtime.best_dtype("cpu", "train", 12 * 64 * 128**2) == "fp32"  # the quickstart: bf16 ran at 0.73x
        assert runtime.best_dtype("cpu", "train", 12 * 256 * 128**2) == "bf16"  # 1.29x
        assert runtime.best_dtype("cpu", "infer", 1) == "bf16"  # decoding reads weights: half the bytes in bf16


@pytest.mark.parametrize("machine, said", [
    (AVX2, "dtype auto -> fp32 (CPU AVX2, no native bf16)"),
    (AMX, "dtype auto -> fp32 (CPU AVX512 + AMX, native bf16)"),  # a tiny model: too small for AMX to pay
])
def test_the_training_loop_says_what_auto_chose(tmp_path, capsys, machine, said):
    from ddp_worker import LMStream, tiny_lm

    from groundup.train import train

    cfg = TrainConfig(out_dir=str(tmp_path), max_steps=1, batch_size=2, eval_every=0, warmup_steps=0, progress=False,
                      device="cpu")
    with runtime.simulate(machine):
        train(tiny_lm(), "causal_lm", LMStream(), cfg)
    assert said in capsys.readouterr().out


# --- fast paths -------------------------------------------------------------------------------------------------
def tiny_decoder(dtype: torch.dtype) -> DecoderLM:
    torch.manual_seed(0)
    return DecoderLM(preset("llama-tiny", vocab_size=80, n_layer=2)).eval().to(dtype)


def test_onednn_bf16_packing_is_only_asked_for_where_it_runs():
    assert not runtime.fast_path("onednn_bf16_pack") or runtime.machine().onednn_bf16
    with runtime.simulate(AVX2):
        assert not runtime.fast_path("onednn_bf16_pack")
        assert packed_linear.fast_layout(torch.bfloat16) is None
        assert packed_linear.fast_layout(torch.float32) is TransposedLinear  # fp32's layout runs everywhere
    with runtime.simulate(AMX):
        assert packed_linear.fast_layout(torch.bfloat16) is PackedLinear


def test_bf16_model_on_a_machine_without_native_bf16_keeps_plain_linears_and_its_logits():
    model = tiny_decoder(torch.bfloat16)
    kept = copy.deepcopy(model)
    with runtime.simulate(AVX2):
        assert pack_for_inference(kept) == 0
    assert type(kept.lm_head) is torch.nn.Linear
    ids = torch.randint(0, 80, (2, 12))
    with torch.no_grad():
        assert torch.equal(kept(ids), model(ids))


def test_packing_that_fails_anyway_falls_back_with_one_log_line(monkeypatch, caplog):
    def refuse(self, linear):
        raise RuntimeError("mkldnn_reorder_linear_weight: bf16 path needs the cpu support avx_ne_convert or avx512bw")

    monkeypatch.setattr(PackedLinear, "__init__", refuse)
    model = tiny_decoder(torch.bfloat16)
    expected = copy.deepcopy(model)
    with runtime.simulate(AMX), caplog.at_level(logging.WARNING, logger="groundup.nn.packed_linear"):
        assert pack_for_inference(model) == 0
    assert len(caplog.records) == 1 and "PackedLinear failed" in caplog.text and "keeping plain" in caplog.text
    ids = torch.randint(0, 80, (1, 5))
    with torch.no_grad():
        assert torch.equal(model(ids), expected(ids))


def test_quantized_decode_takes_the_kernel_with_fp32_models_too():
    """On AVX2 `auto` keeps the float parts in fp32; the int8 / int4 kernels still run (bf16 activations, their
    fast entry point on both AVX2 and AVX-512) and the layer answers in the model's dtype."""
    torch.manual_seed(0)
    for fmt in ("int8", "int4"):
        layer = QuantLinear.from_linear(fmt, torch.randn(64, 128), torch.randn(64))
        assert layer.kernel() == fmt
        x = torch.randn(3, 128)
        with torch.no_grad():
            y = layer(x)
            layer.use_kernel = False
            reference = layer(x)
        assert y.dtype == torch.float32
        # bf16 activations and output: ~3 bf16 roundings of each product (see test_quant)
        bound = 2.0**-7 * (x.abs() @ layer.dequantize().abs().t()) + 1e-5
        assert ((y - reference).abs() <= bound).all()


# --- llama.cpp, built for the ISA the machine has -----------------------------------------------------------------
ZEN3 = "flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma bmi2 avx2 sha_ni"
SAPPHIRE = ZEN3 + " avx512f avx512cd avx512vl avx512dq avx512bw avx512vbmi avx512_vnni avx512_bf16 amx_tile avx_vnni"


def test_llama_cpp_is_built_for_the_isa_the_cpu_lists():
    zen3 = cmake_args(cpu_flags(ZEN3))
    assert "-DGGML_NATIVE=OFF" in zen3 and "-DGGML_AVX2=ON" in zen3 and "-DGGML_FMA=ON" in zen3
    assert "-DGGML_AVX512=OFF" in zen3 and "-DGGML_AVX512_VNNI=OFF" in zen3 and "-DGGML_AVX_VNNI=OFF" in zen3
    spr = cmake_args(cpu_flags(SAPPHIRE))
    assert "-DGGML_AVX512=ON" in spr and "-DGGML_AVX512_BF16=ON" in spr and "-DGGML_AVX_VNNI=ON" in spr
    assert "AMX" not in spr  # ggml's AMX path needs tile state granted by the kernel: left off (see the script)
    assert cmake_args({"avx512f"}).count("=ON") == 0  # AVX-512 needs its whole base set, not avx512f alone
    assert cmake_args({"neon", "asimd"}, "aarch64") == "-DGGML_NATIVE=ON"


# --- the server's defaults ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("machine, dtype", [(AVX2, torch.float32), (AMX, torch.bfloat16)])
def test_serve_defaults_to_the_fastest_dtype_here_and_says_so(tmp_path, capsys, machine, dtype):
    from serve_helpers import chat_tokenizer, tiny_decoder

    from groundup.serve.server import ServeJob, build_engine
    from groundup.train import save_checkpoint

    tok = chat_tokenizer()
    path = save_checkpoint(tmp_path / "model", tiny_decoder(tok.vocab_size), tokenizer=tok)
    with runtime.simulate(machine):
        engine, _ = build_engine(ServeJob(model=str(path)))
    name = {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]
    assert f"dtype auto -> {name} ({machine.describe()})" in capsys.readouterr().out
    up = engine.model.blocks[0].mlp.up_proj
    assert up.weight.dtype == dtype
    # bf16 packs only where oneDNN really runs it; where it does not, the server starts with plain layers
    packed = {torch.float32: TransposedLinear, torch.bfloat16: PackedLinear if ONEDNN else torch.nn.Linear}[dtype]
    assert type(up) is packed


def test_an_int8_kernel_that_fails_here_leaves_the_reference_path_with_one_log_line(monkeypatch, caplog):
    from groundup.quant import linear

    def refuse(*args):
        raise RuntimeError("_weight_int8pack_mm: not implemented for this CPU")

    monkeypatch.setattr(torch, "_weight_int8pack_mm", refuse)
    linear.int8_kernel_runs.cache_clear()
    try:
        torch.manual_seed(0)
        with caplog.at_level(logging.WARNING, logger="groundup.quant.linear"):
            layers = [QuantLinear.from_linear("int8", torch.randn(32, 64)) for _ in range(3)]
        assert len(caplog.records) == 1 and "int8 kernel does not run here" in caplog.text
        assert all(layer.kernel() is None for layer in layers)
        x = torch.randn(2, 64)
        with torch.no_grad():
            assert torch.allclose(layers[0](x), x @ layers[0].dequantize().t(), atol=1e-5)
    finally:
        monkeypatch.undo()
        linear.int8_kernel_runs.cache_clear()
