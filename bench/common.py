"""Shared benchmark helpers: interleaved timing with warmup + median, side-by-side tables, and
results JSON stamped with the machine, date and command.

Every benchmark runs the anchor and groundup on the same work in the same process. Timing
interleaves them (A B A B ...) so that drift of a shared, noisy 2-core machine hits both alike;
the median of the timed repeats is reported, and ratios (groundup / anchor) are what count.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from groundup import runtime

RESULTS = Path(__file__).resolve().parent / "results"


def parser(description: str) -> argparse.ArgumentParser:
    """The flags every benchmark shares: --quick (fewer repeats) and --threads."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="fewer warmup/timed repeats (a smoke run, noisier)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads (default: all cores)")
    p.add_argument("--tag", default="", help="keep this run beside the default one: results/<name>-<tag>.json")
    return p


def measure_parser(description: str) -> argparse.ArgumentParser:
    """parser() plus --measure NAME: a benchmark that runs each configuration in a fresh process of itself."""
    p = parser(description)
    p.add_argument("--measure", default="", help="(internal) measure one configuration in this process")
    return p


def report_measure(payload: dict[str, Any]) -> None:
    """What a --measure process hands back to its parent (one line of its stdout)."""
    print("MEASURE " + json.dumps(payload), flush=True)


def run_measure(cmd: list[str]) -> dict[str, Any]:
    """Run a --measure child and return its payload; a child that failed stops the benchmark with its output."""
    done = subprocess.run(cmd, capture_output=True, text=True)
    line = next((x for x in done.stdout.splitlines() if x.startswith("MEASURE ")), None)
    if line is None:
        raise SystemExit(f"{shlex.join(cmd)} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return json.loads(line[len("MEASURE "):])


def result_name(name: str, tag: str = "") -> str:
    return f"{name}-{tag}" if tag else name


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The ISA extensions that decide CPU matmul speed (AVX-512, AMX), as /proc/cpuinfo lists them."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(f for f in flags if f in {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"})


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cpu_flags": cpu_flags(),
        "isa_class": runtime.machine().describe(),  # what torch dispatches to (see the caps below)
        "dispatch_caps": {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if k in os.environ},
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "load_avg_1min": round(os.getloadavg()[0], 2),  # > cores means other work shared the CPU
    }
    try:
        mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal"))
        info["memory_gb"] = round(mem_kb / 2**20, 1)
    except (OSError, StopIteration):
        pass
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


def interleaved(
    fns: dict[str, Callable[[], Any]], warmup: int, repeat: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """(wall, cpu): seconds per call of each fn, run round-robin (A B A B ...) after `warmup` untimed
    rounds. cpu is this process's CPU time: with one thread it leaves out the time other processes held
    the core, so its ratio stays honest on a shared machine (with more threads it counts spin-waits)."""
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(warmup + repeat):
        for name, fn in fns.items():
            gc.collect()
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            t1, c1 = time.perf_counter(), time.process_time()
            if i >= warmup:
                wall[name].append(t1 - t0)
                cpu[name].append(c1 - c0)
    return wall, cpu


def speedup(anchor: Sequence[float], ours: Sequence[float]) -> float:
    """median(anchor) / median(ours): > 1 means groundup took less time."""
    return statistics.median(anchor) / statistics.median(ours)


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def spread(xs: Sequence[float]) -> float:
    """Relative spread of the timed repeats, (max - min) / median: how far to trust the median."""
    return (max(xs) - min(xs)) / statistics.median(xs) if len(xs) > 1 else 0.0


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion p measured on n questions."""
    if n == 0:
        return 0.0, 1.0
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def seed_gap(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float | None]:
    """(mean(xs) - mean(ys), the 95% margin of that difference from the seeds' spread; None with one seed each)."""
    gap = statistics.fmean(xs) - statistics.fmean(ys)
    if min(len(xs), len(ys)) < 2:
        return gap, None
    return gap, 1.96 * math.sqrt(statistics.variance(xs) / len(xs) + statistics.variance(ys) / len(ys))


def profile_ops(fns: dict[str, Callable[[], Any]], rows: int = 18) -> None:
    """Print where each fn spends its time: torch.profiler's ops sorted by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    for name, fn in fns.items():
        fn()  # warm
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        print(f"\n--- profile: {name} ---")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def fmt(x: Any) -> str:
    if isinstance(x, float):
        if x == 0 or abs(x) >= 100:
            return f"{x:,.0f}"
        return f"{x:.2f}" if abs(x) >= 0.01 else f"{x:.3g}"
    return str(x)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (readable in a terminal, pasteable into BENCHMARKS.md)."""
    cells = [[str(h) for h in headers]] + [[fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: list[str]) -> str:  # first column left-aligned, numbers right-aligned
        cols = [c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths, strict=True))]
        return "| " + " | ".join(cols) + " |"

    rule = "|" + "|".join("-" * (w + 1) + (":" if j else "-") for j, w in enumerate(widths)) + "|"
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


def write_results(name: str, tables: dict[str, dict[str, Any]], extra: dict[str, Any] | None = None) -> Path:
    """bench/results/<name>.json: {"machine": ..., "tables": {title: {"headers", "rows"}}, **extra}."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "machine": machine_info(), "tables": tables, **(extra or {})}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def show(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """Print a titled table and return it in the form write_results stores."""
    print(f"\n### {title}\n\n{table(headers, rows)}\n", flush=True)
    return {"headers": list(headers), "rows": [list(r) for r in rows]}


def setup(threads: int, seed: int = 0) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    load = os.getloadavg()[0]
    if load > (os.cpu_count() or 1) - 0.5:
        print(f"WARNING: load average {load:.1f} on {os.cpu_count()} cores: other work shares the CPU. Multi-thread "
              "kernels then stall at every barrier (x10 slower, not a fair number); prefer --threads 1 or a quiet "
              "machine.", flush=True)


def claims_section(quick: bool, checked: Callable[[], tuple[list[str], list[str]]], disagree_intro: str,
                   agree: str = "nowhere.") -> list[str]:
    """A docs page's closing section: each claim's verdict (checked() -> (says, disagree)), then where our
    numbers disagree; a smoke run checks nothing."""
    lines = ["## What this shows, and where it disagrees with the claim", ""]
    if quick:
        return lines + ["Not checked: a smoke run cannot test the claim.", ""]
    says, disagree = checked()
    return lines + [f"- {s}" for s in says] + ["", disagree_intro + ("; ".join(disagree) + "." if disagree else agree),
                                               ""]
