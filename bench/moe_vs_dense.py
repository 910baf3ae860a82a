"""Mixture of experts vs dense: decoders with the same ACTIVE MLP parameters per token, trained the same way.

Every model is the quickstart's char-level Llama (4 layers, 4 heads, d=128, context 64, SwiGLU with d_ff
F=344) on the Shakespeare corpus the quickstart uses, with the same batches (same seed), steps, learning-rate
schedule and the ONE training loop (pretrain -> train). Only the MLP differs:

    dense          one SwiGLU MLP, d_ff = F                                           (the anchor)
    switch-4e-top1 4 experts of d_ff = F, top-1, raw-probability gate, capacity factor 1.25 (Switch Transformer)
    mixtral-8e-top2  8 experts of d_ff = F/2, top-2, renormalised weights, no token dropping (Mixtral)

Each token runs F hidden units in all three (2 x F/2 for top-2), so the MoEs hold more parameters at (about) the
dense model's compute. Reported: validation loss on the whole val split (non-overlapping windows of the context),
training tokens/s measured interleaved (dense, switch, mixtral, dense, ...) on the same batches after training,
its ratio to dense, and the routers' balance and dropping on validation text.

Each variant trains with --seeds seeds (1337, 1338, ...: each its own init and batches, shared by the variants);
the val loss is their mean, and a gap to dense is called within noise when it is inside the 95% margin of the
seeds' spread. The speed and routing columns come from the first seed's models.

    python bench/moe_vs_dense.py [--quick] [--threads N] [--steps S] [--seeds K]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402

from groundup.eval import window_perplexity  # noqa: E402
from groundup.loading import load_pretrained  # noqa: E402
from groundup.nn import MoE  # noqa: E402
from groundup.pretrain import DataSpec, PretrainJob, pretrain  # noqa: E402
from groundup.train import TrainConfig  # noqa: E402
from groundup.train.metrics import read_metrics  # noqa: E402
from groundup.train.objectives import causal_lm  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs"
F = 344
BASE = dict(preset="llama-tiny", block_size=64, n_layer=4, n_head=4, n_kv_head=4, d_model=128, d_ff=F)
VARIANTS: dict[str, dict] = {
    "dense": {},
    "switch-4e-top1": dict(n_expert=4, n_expert_per_token=1, expert_capacity_factor=1.25, router_norm_topk=False),
    "mixtral-8e-top2": dict(n_expert=8, n_expert_per_token=2, d_ff=F // 2),
}
BATCH = 12


def job(name: str, out: Path, steps: int, quick: bool, seed: int = 1337) -> PretrainJob:
    """The quickstart's recipe (quickstart.py), with the variant's MLP fields: every variant the same recipe."""
    train = TrainConfig(
        out_dir=str(out / name), max_steps=steps, batch_size=BATCH, lr=3e-3, min_lr=3e-4,
        warmup_steps=max(1, min(50, steps // 10)), weight_decay=0.1, beta2=0.99, eval_every=max(1, steps // 8),
        eval_batches=2 if quick else 10, ckpt_every=0, dtype="fp32", seed=seed, log_every=10, progress=False,
    )
    return PretrainJob(model={**BASE, **VARIANTS[name]}, data=DataSpec(tokenizer="char"), train=train)


def counts(model: torch.nn.Module) -> tuple[int, int]:
    """(total parameters, parameters one token uses): an MoE block counts only k of its experts."""
    total = sum(p.numel() for p in model.parameters())
    idle = 0
    for m in model.modules():
        if isinstance(m, MoE):
            per_expert = sum(p.numel() for p in m.experts[0].parameters())
            idle += (m.n_expert - m.k) * per_expert
    return total, total - idle


def routing_stats(model: torch.nn.Module, val: torch.Tensor) -> tuple[float, float]:
    """(max/mean expert load, dropped fraction of (token, expert) pairs) over one val batch, all MoE layers."""
    moes = [m for m in model.modules() if isinstance(m, MoE)]
    if not moes:
        return float("nan"), float("nan")
    windows = val[: BATCH * 64].view(BATCH, 64)
    with torch.no_grad():
        model.eval()(windows)
    imbalance = np.mean([float(m.last_load.max() / m.last_load.float().mean()) for m in moes])
    dropped = sum(int(m.last_dropped) for m in moes) / sum(windows.numel() * m.k for m in moes)
    return float(imbalance), dropped


def step_fn(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]):
    """One training step per call (objective with router losses, backward, AdamW), cycling through batches."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
    state = {"i": 0}

    def step() -> None:
        batch = batches[state["i"] % len(batches)]
        state["i"] += 1
        opt.zero_grad(set_to_none=True)
        causal_lm(model, batch)[0].backward()
        opt.step()

    return step


def plot(curves: dict[str, list[tuple[float, float]]], speed: dict[str, float], path: Path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4))
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    for name, points in curves.items():
        left.plot(*zip(*points, strict=True), "o-", ms=3, label=name)
    left.set(xlabel="step", ylabel="val loss (nats/char, loop's eval batches)", title=title)
    left.grid(alpha=0.3)
    left.legend()
    right.bar(list(speed), list(speed.values()), color=["C0", "C1", "C2"][: len(speed)])
    right.axhline(1.0, color="k", lw=0.8)
    right.set(ylabel="training tokens/s ÷ dense", title="speed (interleaved, same batches)")
    right.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def verdicts(per_seed: dict[str, list[float]]) -> list[str]:
    """Each MoE against dense at equal active parameters: better, worse or within noise of the seeds."""
    out = []
    for name, losses in per_seed.items():
        if name == "dense":
            continue
        gap, margin = common.seed_gap(losses, per_seed["dense"])
        if margin is None:
            out.append(f"- {name}: val loss {gap:+.4f} vs dense (one seed: not evidence either way).")
        else:
            word = "within noise" if abs(gap) <= margin else ("worse than dense" if gap > 0 else "better than dense")
            out.append(f"- {name}: val loss {gap:+.4f} vs dense, 95% margin {margin:.4f} over {len(losses)} seeds: "
                       f"{word}.")
    return out


def write_doc(args, rows: list, headers: list[str], steps: int, png: Path, verdict: list[str]) -> Path:
    info = common.machine_info()
    smoke = ("> **SMOKE RUN ONLY: these numbers are not results.** `--quick` trains a few steps to check that "
             "everything runs (val loss on the first 5,120 validation tokens only); replace this page with the full "
             "run's output.\n\n") if args.quick else ""
    text = (
        f"# Mixture of experts vs dense at equal active parameters (Shakespeare-char)\n\n{smoke}"
        f"Command: `{info['command']}`  \nMachine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, "
        f"{torch.get_num_threads()} thread(s), {info['date']} (load average {info['load_avg_1min']})\n\n"
        f"The quickstart's char-level Llama (4 layers, d=128, context 64) trained {steps} steps (batch {BATCH}, "
        "lr 3e-3 cosine to 3e-4, fp32, the same recipe for every variant, each seed the same batches for all) by "
        "the one training loop; only the MLP "
        f"differs: dense d_ff={F}; 4 experts of d_ff={F}, top-1, Switch gate (raw probability), capacity factor "
        f"1.25; 8 experts of d_ff={F // 2}, top-2, Mixtral gate (renormalised), no dropping. Router losses: "
        "load balancing 0.01, z-loss 0.001 per layer. Val loss: the whole validation split in non-overlapping "
        "64-token windows. tokens/s: training steps (objective + backward + AdamW) timed interleaved after "
        "training, median; the ratio to dense is the claim, absolute numbers are for this machine only. Run "
        "seconds: the whole pretrain() call (steps, evals, checkpoint), one model after another, so noisier. Load "
        "imbalance: max / mean expert load on a validation batch (1 = perfectly balanced).\n\n"
        f"{common.table(headers, rows)}\n\n![val loss and speed]({png.name})\n\n"
        "## At equal active parameters, does an MoE learn more per step?\n\n" + "\n".join(verdict) + "\n"
    )
    path = DOCS / "moe_vs_dense.md"
    path.write_text(text)
    return path


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="training steps per model (default 600, quick 20)")
    p.add_argument("--seeds", type=int, default=None, help="training seeds per variant (default 3, quick 1)")
    args = p.parse_args()
    common.setup(args.threads)
    steps = args.steps or (20 if args.quick else 600)
    seeds = [1337 + i for i in range(args.seeds or (1 if args.quick else 3))]
    models, curves, seconds, per_seed = {}, {}, {}, {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="moe_vs_dense-") as tmp:
        out = Path(tmp)
        for seed in seeds:
            for name in VARIANTS:
                print(f"training {name} for {steps} steps (seed {seed}) ...", flush=True)
                t0 = time.perf_counter()
                result = pretrain(job(name, out / str(seed), steps, args.quick, seed))
                model = load_pretrained(result.checkpoint)[0].float()
                if seed == seeds[0]:
                    seconds[name] = time.perf_counter() - t0
                    curves[name] = [(r["step"], r["val_loss"]) for r in read_metrics(result.metrics_csv)
                                    if r["val_loss"] is not None]
                    models[name] = model
                val = torch.from_numpy(np.fromfile(out / str(seed) / name / "data" / "val.bin", dtype=np.uint16)
                                       .astype(np.int64))
                per_seed[name].append(window_perplexity(model, val[: 64 * 80 + 1] if args.quick else val, 64,
                                                        batch_size=64)["nll"])
        val, train_ids = (torch.from_numpy(np.fromfile(out / str(seeds[0]) / "dense" / "data" / f"{split}.bin",
                                                       dtype=np.uint16).astype(np.int64)) for split in ("val", "train"))
    if args.quick:
        val = val[: 64 * 80 + 1]
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(4):
        start = torch.randint(0, len(train_ids) - 65, (BATCH,), generator=g)
        rows = torch.stack([train_ids[s : s + 65] for s in start.tolist()])  # (B, 65)
        batches.append({"input_ids": rows[:, :-1], "labels": rows[:, 1:]})
    # routing first: the timed steps below keep training the models
    quality = {name: sum(losses) / len(losses) for name, losses in per_seed.items()}
    routing = {name: routing_stats(model, val) for name, model in models.items()}
    warmup, repeat = (1, 3) if args.quick else (3, 15)
    wall, cpu = common.interleaved({n: step_fn(m, batches) for n, m in models.items()}, warmup, repeat)
    tokens = BATCH * 64
    headers = ["model", "params (total)", "params (active/token)", f"val loss (mean of {len(seeds)} seeds)",
               "per seed", "Δ val vs dense (95% margin)", "train tok/s", "tok/s ÷ dense", "by CPU time",
               "run seconds", "load imbalance", "dropped"]
    rows, speed = [], {}
    for name, model in models.items():
        total, active = counts(model)
        imbalance, dropped = routing[name]
        speed[name] = common.speedup(wall["dense"], wall[name])  # > 1: faster than dense
        moe = name != "dense"
        gap, margin = common.seed_gap(per_seed[name], per_seed["dense"])
        rows.append([name, f"{total:,}", f"{active:,}", quality[name], " / ".join(f"{x:.4f}" for x in per_seed[name]),
                     f"{gap:+.4f}" + (f" (±{margin:.4f})" if margin is not None and moe else ""),
                     tokens / common.median(wall[name]), speed[name], common.speedup(cpu["dense"], cpu[name]),
                     seconds[name], f"{imbalance:.2f}" if moe else "-", f"{dropped:.1%}" if moe else "-"])
    title = (f"MoE vs dense at equal active MLP parameters, Shakespeare-char, {steps} steps, batch {BATCH}, ctx 64 "
             f"({repeat} timed steps per model after {warmup} warmup, interleaved)")
    table = common.show(title, headers, rows)
    DOCS.mkdir(exist_ok=True)
    png = DOCS / "moe_vs_dense.png"
    plot(curves, speed, png, f"{steps} steps, same batches")
    doc = write_doc(args, rows, headers, steps, png, verdicts(per_seed))
    path = common.write_results(common.result_name("moe_vs_dense", args.tag), {title: table},
                                {"val_curves": curves, "seconds_per_step": {"wall": wall, "cpu": cpu},
                                 "val_loss_per_seed": per_seed, "seeds": seeds})
    print(f"wrote {path}, {doc}, {png}")


if __name__ == "__main__":
    main()
