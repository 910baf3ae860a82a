"""Fused attention (PyTorch SDPA kernels) vs groundup's naive attention: time and peak memory of causal
self-attention, forward and forward + backward, from 256 to 8192 tokens.

One attention call of the ~4-layer d-128 models (batch 1, 4 heads of 32 dims) through groundup.nn.attend:
backend="naive" (q kᵀ, mask, softmax, @ v: the (T, T) score matrix in memory) and backend="sdpa" pinned to
one kernel with torch.nn.attention.sdpa_kernel: on CPU flash (tiled, never holds T x T) and math (PyTorch's
reference, also T x T); on CUDA also memory-efficient (xformers-style), and bf16 instead of fp32.

Peak memory = what the call adds on top of its inputs. CPU: each point runs in a fresh child process;
VmHWM (peak resident set) is reset right before the call (/proc/self/clear_refs) and read after it, minus
the resident set before it. CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus
memory_allocated before. Naive and math stop where their (B, H, T, T) fp32 score matrix alone would exceed
--max-scores-mib, or where the previous length took longer than --time-limit seconds; the table says so.

    python bench/attention_backends.py [--quick] [--threads N] [--lengths 256 ... 8192]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402
from memory import reset_peak, window_peak_mb  # noqa: E402

from groundup.nn import attend  # noqa: E402

CUDA = torch.cuda.is_available()
BACKENDS = ["naive", "sdpa-math", "sdpa-flash"] + (["sdpa-efficient"] if CUDA else [])
QUADRATIC = {"naive", "sdpa-math"}  # hold the whole (B, H, T, T) score matrix
ANCHOR = "naive"
MODES = ["fwd", "fwd+bwd"]
DOCS = Path(__file__).resolve().parents[1] / "docs"


def rss_mb() -> float:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def call(backend: str, mode: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grad: torch.Tensor):
    """One causal attention call (+ backward) with the SDPA kernel pinned; returns a function to time."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kernel = {"sdpa-math": SDPBackend.MATH, "sdpa-flash": SDPBackend.FLASH_ATTENTION,
              "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION}.get(backend)

    def run() -> None:
        with sdpa_kernel([kernel]) if kernel is not None else contextlib.nullcontext():
            if mode == "fwd":
                with torch.inference_mode():
                    attend(q, k, v, is_causal=True, backend="naive" if kernel is None else "sdpa")
            else:
                out = attend(q, k, v, is_causal=True, backend="naive" if kernel is None else "sdpa")
                out.backward(grad)
                q.grad = k.grad = v.grad = None
        if CUDA:
            torch.cuda.synchronize()

    return run


def measure(backend: str, T: int, mode: str, args) -> dict[str, Any]:
    """Peak extra memory of the first call, then the median time of args.repeat more calls."""
    device, dtype = ("cuda", torch.bfloat16) if CUDA else ("cpu", torch.float32)
    gen = torch.Generator(device=device).manual_seed(0)

    def inputs(n: int) -> tuple[torch.Tensor, ...]:
        shape = (args.batch, args.heads, n, args.head_dim)  # (B, H, T, D)
        q, k, v, grad = (torch.randn(shape, generator=gen, device=device, dtype=dtype) for _ in range(4))
        return tuple(t.requires_grad_(mode == "fwd+bwd") for t in (q, k, v)) + (grad,)

    call(backend, mode, *inputs(64))()  # one-time set-up (kernels, thread pools, autograd) stays out of the peak
    fn = call(backend, mode, *inputs(T))
    if CUDA:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        fn()
        first = time.perf_counter() - t0
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        base = rss_mb()
        fresh = reset_peak()
        t0 = time.perf_counter()
        fn()
        first = time.perf_counter() - t0
        hwm = window_peak_mb()
        peak = hwm - base if fresh and hwm is not None else None
    times = [first]
    if first < args.time_limit:
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return {"status": "ok", "ms": 1e3 * common.median(times), "peak_mib": peak, "repeats": len(times),
            "spread": common.spread(times)}


def child(args) -> None:
    common.setup(args.threads)
    backend, T, mode = args.point
    Path(args.out_json).write_text(json.dumps(measure(backend, int(T), mode, args)))


def point(backend: str, T: int, mode: str, args) -> dict[str, Any]:
    if CUDA:  # CUDA's allocator statistics are per call: no child process needed
        return measure(backend, T, mode, args)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "point.json"
        cmd = [sys.executable, __file__, "--point", backend, str(T), mode, "--out-json", str(out), "--threads",
               str(args.threads), "--batch", str(args.batch), "--heads", str(args.heads), "--head-dim",
               str(args.head_dim), "--repeat", str(args.repeat), "--time-limit", str(args.time_limit)]
        try:
            rc = subprocess.run(cmd, timeout=max(120.0, 20 * args.time_limit)).returncode
        except subprocess.TimeoutExpired:
            return {"status": "timed out"}
        return json.loads(out.read_text()) if out.is_file() else {"status": f"failed (exit code {rc})"}


def scores_mib(T: int, args) -> float:
    return args.batch * args.heads * T * T * 4 / 2**20  # fp32 (B, H, T, T)


def run_all(args) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    slow: dict[tuple[str, str], float] = {}  # (backend, mode) -> seconds of its last length
    for T in args.lengths:
        for mode in MODES:
            for backend in BACKENDS:
                key = f"{backend}|{T}|{mode}"
                if backend in QUADRATIC and scores_mib(T, args) > args.max_scores_mib:
                    results[key] = {"status": f"skipped: T x T scores {scores_mib(T, args):,.0f} MiB > "
                                              f"--max-scores-mib {args.max_scores_mib:,.0f}"}
                elif slow.get((backend, mode), 0.0) > args.time_limit:
                    results[key] = {"status": f"skipped: the previous length took {slow[(backend, mode)]:.0f} s > "
                                              f"--time-limit {args.time_limit:.0f}"}
                else:
                    results[key] = point(backend, T, mode, args)
                    if results[key]["status"] == "ok":
                        slow[(backend, mode)] = results[key]["ms"] / 1e3
                r = results[key]
                shown = f"{r['ms']:.1f} ms, peak {r['peak_mib']}" if r["status"] == "ok" else r["status"]
                print(f"  T={T} {mode} {backend}: {shown}", flush=True)
    return results


def rows(results: dict[str, dict[str, Any]], args) -> list[list[Any]]:
    out = []
    for T in args.lengths:
        for mode in MODES:
            anchor = results[f"{ANCHOR}|{T}|{mode}"]
            for backend in BACKENDS:
                r = results[f"{backend}|{T}|{mode}"]
                if r["status"] != "ok":
                    out.append([T, mode, backend, r["status"], "-", "-", "-", scores_mib(T, args)])
                    continue
                ok = anchor["status"] == "ok"
                mem_ratio = (anchor["peak_mib"] / r["peak_mib"] if ok and anchor["peak_mib"] and r["peak_mib"]
                             else "-")
                out.append([T, mode, backend, r["ms"], anchor["ms"] / r["ms"] if ok else "-",
                            "-" if r["peak_mib"] is None else r["peak_mib"], mem_ratio, scores_mib(T, args)])
    return out


HEADERS = ["T", "mode", "backend", "ms (median)", f"speedup vs {ANCHOR}", "peak extra MiB",
           f"{ANCHOR} memory / this", "fp32 T x T scores MiB"]


def growth(results: dict[str, dict[str, Any]], backend: str, mode: str, field: str, lengths: list[int]):
    """(exponent, T0, T1): log-log slope of `field` between the two longest lengths this backend ran."""
    done = [T for T in lengths if results[f"{backend}|{T}|{mode}"]["status"] == "ok"
            and results[f"{backend}|{T}|{mode}"].get(field)]
    if len(done) < 2:
        return None
    a, b = done[-2], done[-1]
    ya, yb = results[f"{backend}|{a}|{mode}"][field], results[f"{backend}|{b}|{mode}"][field]
    return math.log(yb / ya) / math.log(b / a), a, b


def claims(results: dict[str, dict[str, Any]], args) -> tuple[list[str], list[str]]:
    says, disagree = [], []
    for mode in MODES:
        for backend in ("naive", "sdpa-flash"):
            g = growth(results, backend, mode, "peak_mib", args.lengths)
            if g:
                says.append(f"**Memory growth, {backend} {mode}**: peak extra memory ~ T^{g[0]:.2f} between T = {g[1]}"
                            f" and {g[2]} (T^2 = the score matrix; T^1 = only q, k, v, out-sized buffers).")
        if (g := growth(results, "sdpa-flash", mode, "peak_mib", args.lengths)) and g[0] > 1.5:
            disagree.append(f"flash attention's memory grows ~T^{g[0]:.2f} ({mode}), not linearly")
        common_T = [T for T in args.lengths if all(results[f"{b}|{T}|{mode}"]["status"] == "ok"
                                                    for b in (ANCHOR, "sdpa-flash"))]
        if common_T:
            T = common_T[-1]
            n, f = results[f"{ANCHOR}|{T}|{mode}"], results[f"sdpa-flash|{T}|{mode}"]
            says.append(f"**Fused vs naive at T = {T}, {mode}**: flash {n['ms'] / f['ms']:.2f}x the naive speed"
                        + (f", {n['peak_mib'] / f['peak_mib']:.1f}x less memory" if n["peak_mib"] and f["peak_mib"]
                           else "") + ".")
            if f["ms"] > n["ms"]:
                disagree.append(f"flash is slower than naive at T = {T} ({mode}) on this machine")
    stopped = [T for T in args.lengths if results[f"{ANCHOR}|{T}|fwd"]["status"] != "ok"]
    if stopped:
        says.append(f"**Where naive stops**: T = {', '.join(map(str, stopped))}: "
                    f"{results[f'{ANCHOR}|{stopped[0]}|fwd']['status']}.")
    return says, disagree


def plot(results: dict[str, dict[str, Any]], args, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for backend in BACKENDS:
        for mode, style in zip(MODES, ("-", "--"), strict=True):
            ok = [T for T in args.lengths if results[f"{backend}|{T}|{mode}"]["status"] == "ok"]
            for ax, field in zip(axes, ("ms", "peak_mib"), strict=True):
                ys = [results[f"{backend}|{T}|{mode}"][field] for T in ok]
                if ok and all(y for y in ys):
                    ax.plot(ok, ys, style, marker="o", label=f"{backend} {mode}")
    for ax, label in zip(axes, ("time per call, ms (log)", "peak extra memory, MiB (log)"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(args.lengths, [str(T) for T in args.lengths])
        ax.set_xlabel("sequence length T")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"causal attention, B={args.batch}, H={args.heads}, D={args.head_dim}, "
                 f"{'CUDA bf16' if CUDA else 'CPU fp32'}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_docs(results, args, command: str, seconds: float) -> tuple[Path, Path]:
    DOCS.mkdir(exist_ok=True)
    png = plot(results, args, DOCS / "attention_backends.png")
    info = common.machine_info()
    device = torch.cuda.get_device_name() if CUDA else f"{info['cpu']}, {info['cores']} cores"
    lines = ["# Attention backends: fused SDPA kernels vs naive attention", ""]
    if args.quick:
        lines += ["> **SMOKE RUN ONLY: these numbers are not results.** `--quick` runs short lengths once each, only "
                  "to check that the script runs end to end. Replace this page with the full run's output.", ""]
    memory = ("CUDA: `torch.cuda.max_memory_allocated()` after `reset_peak_memory_stats()`, minus "
              "`memory_allocated()` before the call" if CUDA else
              "CPU: each point in a fresh child process; VmHWM reset via `/proc/self/clear_refs` right before the "
              "first call and read after it, minus VmRSS before (so: the call's own allocations, as resident pages)")
    lines += [
        f"Command: `{command}` (full run: `python bench/attention_backends.py`), {seconds / 60:.1f} min  ",
        f"Machine: {device}, {info['torch_threads']} torch threads, torch {info['torch']}, load "
        f"{info['load_avg_1min']}, {info['date']}", "",
        f"One causal self-attention call through `groundup.nn.attend`, q, k, v of shape (B={args.batch}, "
        f"H={args.heads}, T, D={args.head_dim}), {'bf16' if CUDA else 'fp32'}: `backend='naive'` vs "
        "`backend='sdpa'` with one kernel pinned by `torch.nn.attention.sdpa_kernel`. fwd runs under "
        "`inference_mode`; fwd+bwd back-propagates a fixed random gradient into q, k, v. Time: median of "
        f"{args.repeat} calls after a first (untimed) one. Peak memory: {memory}. Naive and math hold the "
        f"(B, H, T, T) score matrix and stop above --max-scores-mib {args.max_scores_mib:,.0f}; any backend stops "
        f"after a length that took more than --time-limit {args.time_limit:.0f} s.", "",
        common.table(HEADERS, rows(results, args)), "",
        "![time and peak memory vs sequence length](attention_backends.png)", ""]
    lines += common.claims_section(
        args.quick, lambda: claims(results, args),
        "The claim (Dao et al. 2022): fused, tiled attention never materialises the T x T matrix, so its memory grows "
        "linearly in T and it runs faster by moving fewer bytes. Where our numbers disagree: ")
    md = DOCS / "attention_backends.md"
    md.write_text("\n".join(lines))
    return md, png


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=None, help="sequence lengths (default 256 .. 8192)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--repeat", type=int, default=None, help="timed calls per point (default 3; --quick 1)")
    p.add_argument("--max-scores-mib", type=float, default=None,
                   help="skip naive / math where the fp32 T x T scores exceed this (default 512 CPU, 16384 CUDA)")
    p.add_argument("--time-limit", type=float, default=30.0, help="seconds per call after which longer T is skipped")
    p.add_argument("--point", nargs=3, help=argparse.SUPPRESS)  # the child: backend T mode
    p.add_argument("--out-json", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.lengths = sorted(args.lengths or ([256, 512] if args.quick else [256, 512, 1024, 2048, 4096, 8192]))
    args.repeat = args.repeat or (1 if args.quick else 3)
    # --quick: a 2 MiB cap, so that the smoke run also takes the "naive stops here" path at T = 512
    args.max_scores_mib = args.max_scores_mib or (2.0 if args.quick else 16384.0 if CUDA else 512.0)
    if args.point:
        return child(args)
    common.setup(args.threads)
    command = common.machine_info()["command"]
    t0 = time.perf_counter()
    results = run_all(args)
    seconds = time.perf_counter() - t0
    title = (f"Causal attention, B={args.batch} H={args.heads} D={args.head_dim}, {'CUDA bf16' if CUDA else 'CPU fp32'}"
             f": time and peak memory vs T, ratios against {ANCHOR} in the same run"
             + (" [SMOKE RUN: not results]" if args.quick else ""))
    tables = {title: common.show(title, HEADERS, rows(results, args))}
    path = common.write_results(common.result_name("attention_backends", args.tag), tables,
                                {"quick": args.quick, "seconds": seconds, "results": results})
    md, png = write_docs(results, args, command, seconds)
    print(f"total {seconds:.0f} s; wrote {path}, {md}, {png}")
    if args.quick:
        print("claims text (smoke numbers, meaningless):", *claims(results, args), sep="\n  ")


if __name__ == "__main__":
    main()
