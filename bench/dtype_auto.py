"""dtype="auto" against the fixed choices, on this machine: the training step (fp32 vs bf16 autocast vs auto),
the decode step (fp32 vs bf16 vs auto, weights laid out as the CLI lays them out) and the activation dtype of the
int8 / int4 CPU kernels. The anchor is the same work in each fixed dtype, in the same run.

Run it once per kind of machine. An AVX-512 machine can also stand in for the others:
    python bench/dtype_auto.py
    ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 python bench/dtype_auto.py --tag avx512-bf16    # AVX-512 BF16, no AMX
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python bench/dtype_auto.py --tag avx2   # AVX2 only
(torch's kernels and oneDNN then dispatch as on that machine; groundup.runtime reads the same dispatch level).
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402

from groundup import runtime  # noqa: E402
from groundup.config import preset  # noqa: E402
from groundup.models import DecoderLM  # noqa: E402
from groundup.nn.packed_linear import pack_for_inference  # noqa: E402
from groundup.quant import QuantLinear  # noqa: E402
from groundup.train import TrainConfig  # noqa: E402

# (label, preset overrides, batch, context): nanoGPT's Shakespeare-char model, the quickstart model, and the
# quickstart's width at a longer context (bf16 autocast on AMX pays from about 2^24 rows x context x d_model^2)
QUICKSTART = dict(name="llama-tiny", n_layer=4, n_head=4, n_kv_head=4, d_model=128, d_ff=344, vocab_size=65)
TRAIN_SHAPES = [
    ("gpt 6L/384d ctx256 b12", dict(name="gpt-shakespeare-char", dropout=0.0, vocab_size=65), 12, 256),
    ("llama 4L/128d ctx64 b12 (quickstart)", dict(QUICKSTART, block_size=64), 12, 64),
    ("llama 4L/128d ctx256 b12", dict(QUICKSTART, block_size=256), 12, 256),
]


def train_step(cfg_kw: dict, batch: int, context: int, dtype: str):
    kw = dict(cfg_kw)
    model = DecoderLM(preset(kw.pop("name"), **kw)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, model.config.vocab_size, (batch, context), generator=g)
    y = torch.randint(0, model.config.vocab_size, (batch, context), generator=g)
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if dtype == "bf16" else contextlib.nullcontext

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with ctx():
            logits = model(x)  # (B, T, V)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        loss.backward()
        opt.step()

    return step


def decode_step(dtype: str, rows: int):
    """One cached decode step of a 12-layer, 768-wide decoder (GPT-2 124M's shape) at `rows` sequences."""
    model = DecoderLM(preset("gpt2", vocab_size=8192)).to(runtime.DTYPES[dtype]).eval()
    pack_for_inference(model)
    ids = torch.randint(0, 8192, (rows, 64))
    with torch.no_grad():
        cache = model.new_cache(rows, 128)
        model(ids, cache=cache)
    last = ids[:, -1:]

    @torch.no_grad()
    def step() -> None:  # the token at position 64, rewritten in place each call
        model(last, cache=cache, start=64, last_only=True)

    return step


def quant_mm(fmt: str, act: torch.dtype, rows: int):
    """20 products y = x W^T through the fused CPU kernel QuantLinear calls, 576 -> 1536 (SmolLM2's MLP up), with
    the activations (and the scales the kernel reads with them) in `act`."""
    layer = QuantLinear.from_linear(fmt, torch.randn(1536, 576))
    x, qweight = torch.randn(rows, 576).to(act), layer.qweight
    if fmt == "int8":
        scale = layer.scale.to(act)
        product = lambda: torch._weight_int8pack_mm(x, qweight, scale)
    else:
        scales_zeros = layer.scales_zeros.to(act)
        product = lambda: torch._weight_int4pack_mm_for_cpu(x, qweight, layer.group_size, scales_zeros)

    def mm() -> None:
        for _ in range(20):
            product()

    return mm


def row(label: str, fns: dict, auto: str, warmup: int, repeat: int, per_call: float) -> list:
    """[label, fp32 /s, bf16 /s, what auto picks, auto / the faster, auto / bf16] from interleaved timings."""
    wall, _ = common.interleaved(fns, warmup, repeat)
    rate = {k: per_call / common.median(v) for k, v in wall.items()}
    out = [label, rate["fp32"], rate["bf16"], auto, rate[auto] / max(rate.values()), rate[auto] / rate["bf16"]]
    print(out, flush=True)
    return out


HEADERS = ["fp32 /s", "bf16 /s", "auto ->", "auto / faster", "auto / bf16"]


def main() -> None:
    args = common.parser(__doc__.splitlines()[0]).parse_args()
    common.setup(args.threads)
    m = runtime.machine()
    print(f"machine: {m.describe()}", flush=True)
    warmup, repeat = (1, 3) if args.quick else (2, 7)
    tables = {}

    rows = []
    for label, kw, batch, context in TRAIN_SHAPES:
        work = batch * context * preset(kw["name"], **{k: v for k, v in kw.items() if k != "name"}).d_model ** 2
        auto = TrainConfig(device="cpu", batch_size=batch, dtype="auto").resolved_dtype(work)
        fns = {d: train_step(kw, batch, context, d) for d in ("fp32", "bf16")}
        rows.append(row(label, fns, auto, warmup, repeat, batch * context))
    title = f"Training step (fwd+bwd+AdamW), tokens/s, {m.describe()}"
    tables[title] = common.show(title, ["model", *HEADERS], rows)

    auto = runtime.resolve_dtype("auto", "cpu", "infer")
    rows = [row(f"{n} row(s)", {d: decode_step(d, n) for d in ("fp32", "bf16")}, auto, warmup, repeat * 3, n)
            for n in (1, 16)]
    title = f"Decode step, 12L/768d (GPT-2 124M's shape), packed for inference, tokens/s, {m.describe()}"
    tables[title] = common.show(title, ["rows", *HEADERS], rows)

    auto = "bf16" if runtime.quant_activation_dtype() == torch.bfloat16 else "fp32"
    acts = {"fp32": torch.float32, "bf16": torch.bfloat16}
    rows = [row(f"{fmt}, {n} row(s)", {k: quant_mm(fmt, a, n) for k, a in acts.items()}, auto, warmup, repeat * 3,
                20 * n) for fmt in ("int8", "int4") for n in (1, 16)]
    title = f"Fused weight-only kernels (576 -> 1536), activation rows/s by activation dtype, {m.describe()}"
    tables[title] = common.show(title, ["kernel", *HEADERS], rows)
    path = common.write_results(common.result_name("dtype_auto", args.tag), tables)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
