"""Rewrite the results section of BENCHMARKS.md from bench/results/*.json (the latest run of each
benchmark, with its machine, date and command). Text outside the markers is kept as written.

    python bench/report.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- results:start (bench/report.py writes this part) -->", "<!-- results:end -->"
ORDER = ["quickstart_vs_nanogpt", "train_throughput", "decode", "smollm2"]


def section(name: str, result: dict) -> str:
    m = result["machine"]
    lines = [
        f"## {name}",
        "",
        f"- command: `{m['command']}`",
        f"- date: {m['date']}",
        f"- machine: {m['cpu']}, {m['cores']} cores ({', '.join(m.get('cpu_flags', []))}), "
        f"{m.get('memory_gb', '?')} GB; torch {m['torch']} with {m['torch_threads']} thread(s)"
        + (f", transformers {m['transformers']}" if "transformers" in m else "")
        + f"; 1-min load average at the end {m.get('load_avg_1min', '?')}",
    ]
    if "isa_class" in m:  # what torch dispatched to, and the caps that made an AVX-512 machine stand in for another
        caps = " ".join(f"{k}={v}" for k, v in m.get("dispatch_caps", {}).items())
        lines.append(f"- ISA class: {m['isa_class']}" + (f" (simulated: {caps})" if caps else ""))
    for title, t in result["tables"].items():
        lines += ["", f"**{title}**", "", table(t["headers"], t["rows"])]
    return "\n".join(lines)


def main() -> None:
    results = {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))}
    names = sorted(results, key=lambda n: (next((i for i, o in enumerate(ORDER) if n.startswith(o)), len(ORDER)), n))
    body = "\n\n".join(section(n, results[n]) for n in names)
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{START}\n{END}\n"
    if START not in text or END not in text:
        raise SystemExit(f"{path} lacks the markers {START!r} / {END!r}; add them where the tables go")
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    path.write_text(f"{head}{START}\n\n{body}\n\n{END}{tail}")
    print(f"wrote {path} ({', '.join(names)})")


if __name__ == "__main__":
    main()
