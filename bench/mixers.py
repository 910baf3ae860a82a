"""Attention vs retention vs Hyena as the decoder's token mixer (ModelConfig.mixer), everything else the same.

Four experiments, each a section of docs/mixers.md with its table, plot and command:

    lm        equal parameters (d_ff evens out the mixers' own weights), equal data, steps and recipe, on
              Shakespeare-char and on the same text in a 2,048-token BPE: validation loss at equal steps and at
              equal training wall-clock (the fastest mixer's run time; each step's time measured interleaved)
    recall    associative recall (the key-value task of the Hyena / H3 papers, every repeated key a query):
              accuracy vs sequence length at 2 layers; each mixer learns the task at length 64, then trains on
              the same tokens at each length
    scaling   one training step (forward + backward) at sequence length 512..8192: seconds and peak memory
    decode    one generated token after a context of 256..4096 tokens: latency and cache bytes per token

    python bench/mixers.py [--quick] [--threads N] [--parts lm,recall,scaling,decode]

Each part writes bench/results/mixers_<part>.json; the page is rebuilt from every part's latest results, so the
parts can run apart. The scaling and decode parts measure each (mixer, length) in a fresh process (--measure),
so one peak does not hide another.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402
import memory  # noqa: E402

from groundup.config import preset  # noqa: E402
from groundup.eval import window_perplexity  # noqa: E402
from groundup.loading import load_pretrained  # noqa: E402
from groundup.models.decoder import DecoderLM  # noqa: E402
from groundup.pretrain import DataSpec, PretrainJob, pretrain  # noqa: E402
from groundup.train import TrainConfig  # noqa: E402
from groundup.train.metrics import read_metrics  # noqa: E402
from groundup.train.objectives import causal_lm  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs"
MIXERS = ("attention", "retention", "hyena")
PARTS = ("lm", "seeds", "recall", "scaling", "decode")
D, F_FF, CTX, BATCH = 128, 344, 256, 16
SHAPE = dict(preset="llama-tiny", n_layer=4, n_head=4, n_kv_head=4, d_model=D, block_size=CTX)


# --- lm: equal parameters --------------------------------------------------------------------------------------
def mixer_params(mixer: str, d_ff: int) -> int:
    fields = {k: v for k, v in SHAPE.items() if k != "preset"}
    model = DecoderLM(preset("llama-tiny", **fields, vocab_size=65, d_ff=d_ff, mixer=mixer))
    return sum(p.numel() for p in model.parameters())


def equal_d_ff(mixer: str) -> int:
    """The SwiGLU width (3 d weights per unit per layer) that brings this mixer's model to attention's size."""
    extra = mixer_params(mixer, F_FF) - mixer_params("attention", F_FF)
    return F_FF - round(extra / (3 * D * SHAPE["n_layer"]))


def lm_job(mixer: str, tokenizer: str, out: Path, steps: int, quick: bool, seed: int = 1337) -> PretrainJob:
    train = TrainConfig(
        out_dir=str(out / f"{tokenizer}-{mixer}"), max_steps=steps, batch_size=BATCH, lr=2e-3, min_lr=2e-4,
        warmup_steps=max(1, min(50, steps // 10)), weight_decay=0.1, beta2=0.99, eval_every=max(1, steps // 8),
        eval_batches=2 if quick else 8, ckpt_every=0, dtype="fp32", seed=seed, log_every=10, progress=False,
    )
    data = DataSpec(tokenizer=tokenizer, vocab_size=2048)
    return PretrainJob(model={**SHAPE, "d_ff": equal_d_ff(mixer), "mixer": mixer}, data=data, train=train)


def step_fn(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]):
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    state = {"i": 0}

    def step() -> None:
        batch = batches[state["i"] % len(batches)]
        state["i"] += 1
        opt.zero_grad(set_to_none=True)
        causal_lm(model, batch)[0].backward()
        opt.step()

    return step


def at_step(curve: list[tuple[float, float]], step: float) -> float:
    """The val loss curve read at a (fractional) step, linearly between its evals."""
    steps, losses = zip(*curve, strict=True)
    return float(np.interp(step, steps, losses))


def val_loss(result, folder: Path, quick: bool) -> float:
    model = load_pretrained(result.checkpoint)[0].float()
    val = torch.from_numpy(np.fromfile(folder / "val.bin", dtype=np.uint16).astype(np.int64))
    return window_perplexity(model, val[: CTX * 40 + 1] if quick else val, CTX, batch_size=32)["nll"]


def part_lm(args) -> dict:
    steps = args.steps or (10 if args.quick else 400)
    out: dict = {"steps": steps, "corpora": {}}
    with tempfile.TemporaryDirectory(prefix="mixers-lm-") as tmp:
        for tokenizer in ("char", "bpe"):
            models, curves, losses = {}, {}, {}
            for mixer in MIXERS:
                print(f"[lm] {tokenizer}: training {mixer} for {steps} steps ...", flush=True)
                result = pretrain(lm_job(mixer, tokenizer, Path(tmp), steps, args.quick))
                model = load_pretrained(result.checkpoint)[0].float()
                curves[mixer] = [(0, math.log(model.config.vocab_size))] + [
                    (r["step"], r["val_loss"]) for r in read_metrics(result.metrics_csv) if r["val_loss"] is not None]
                folder = Path(tmp) / f"{tokenizer}-{mixer}" / "data"
                losses[mixer] = val_loss(result, folder, args.quick)
                models[mixer] = model
                train_ids = np.fromfile(folder / "train.bin", dtype=np.uint16).astype(np.int64)
            g = torch.Generator().manual_seed(0)
            batches = []
            for _ in range(3):
                starts = torch.randint(0, len(train_ids) - CTX - 1, (BATCH,), generator=g).tolist()
                rows = torch.stack([torch.from_numpy(train_ids[s : s + CTX + 1]) for s in starts])
                batches.append({"input_ids": rows[:, :-1], "labels": rows[:, 1:]})
            wall, _ = common.interleaved({m: step_fn(models[m], batches) for m in MIXERS}, 1 if args.quick else 2,
                                         2 if args.quick else 6)
            per_step = {m: common.median(wall[m]) for m in MIXERS}
            budget = min(per_step.values()) * steps  # the fastest mixer's whole run
            out["corpora"][tokenizer] = {
                "params": {m: sum(p.numel() for p in models[m].parameters()) for m in MIXERS},
                "d_ff": {m: models[m].config.d_ff for m in MIXERS}, "val_loss": losses, "curves": curves,
                "s_per_step": per_step, "budget_s": budget,
                "at_budget": {m: at_step(curves[m], budget / per_step[m]) for m in MIXERS},
            }
    return out


def part_seeds(args) -> dict:
    """The lm part's runs again with other seeds (init and batches): val loss only, for the seeds' spread."""
    steps = args.steps or (10 if args.quick else 400)
    out: dict = {"seeds": [1338], "val_loss": {}}
    with tempfile.TemporaryDirectory(prefix="mixers-seeds-") as tmp:
        for tokenizer in ("char", "bpe"):
            out["val_loss"][tokenizer] = {}
            for mixer in MIXERS:
                print(f"[seeds] {tokenizer}: training {mixer} (seed 1338) ...", flush=True)
                result = pretrain(lm_job(mixer, tokenizer, Path(tmp), steps, args.quick, seed=1338))
                folder = Path(tmp) / f"{tokenizer}-{mixer}" / "data"
                out["val_loss"][tokenizer][mixer] = [val_loss(result, folder, args.quick)]
    return out


# --- recall: associative recall vs length ----------------------------------------------------------------------
N_VALUES, N_KEYS, SHORT = 16, 512, 64


def recall_batch(B: int, L: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """L/2 (key, value) pairs; each sequence its own table of L/8 keys (drawn from N_KEYS) -> values, so a key's
    previous occurrence is ~L/4 back on average. Labels: the value after every key seen before, -100 elsewhere."""
    n_keys, n_pairs = L // 8, L // 2
    chosen = torch.rand(B, N_KEYS, generator=g).argsort(-1)[:, :n_keys]  # (B, n_keys) this sequence's keys
    table = torch.randint(0, N_VALUES, (B, n_keys), generator=g)
    slot = torch.randint(0, n_keys, (B, n_pairs), generator=g)
    values = table.gather(1, slot)
    ids = torch.stack([N_VALUES + chosen.gather(1, slot), values], dim=-1).view(B, L)  # values 0..15, then keys
    first = torch.full((B, n_keys), n_pairs).scatter_reduce(1, slot, torch.arange(n_pairs).expand(B, -1), "amin")
    repeated = torch.arange(n_pairs)[None] > first.gather(1, slot)  # (B, pairs)
    labels = torch.full((B, L), -100)
    labels[:, 0::2] = torch.where(repeated, values, -100)
    return ids, labels


def recall_train(model: DecoderLM, L: int, steps: int, batch: int, lr: float, seed: int) -> float:
    """Train in place on fresh batches at length L (warmup, then linear decay to lr / 10); returns seconds."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr, weight_decay=0.0, betas=(0.9, 0.98))
    model.train()
    t0 = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 50) * (0.1 + 0.9 * (1 - step / steps))
        ids, labels = recall_batch(batch, L, g)
        loss = F.cross_entropy(model(ids).flatten(0, 1), labels.flatten(), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def recall_accuracy(model: DecoderLM, L: int) -> float:
    model.eval()
    ids, labels = recall_batch(max(2, 16384 // L), L, torch.Generator().manual_seed(99))
    with torch.no_grad():
        pred = model(ids).argmax(-1)
    asked = labels != -100
    return float((pred[asked] == labels[asked]).float().mean())


def part_recall(args) -> dict:
    """Stage 1: each mixer (2 layers, width 64, 2 heads) learns the task at length 64, where steps are cheap and the
    recall circuit forms (attention's loss drops after ~2,000 steps of 32 sequences). Stage 2: from that model, a
    short run at each length with the same tokens per length, then accuracy on fresh sequences."""
    lengths = [256, 1024] if args.quick else [256, 512, 1024, 2048, 4096]
    stage1 = 20 if args.quick else args.recall_steps
    tokens = 8192 * (5 if args.quick else 150)
    out = {"lengths": lengths, "accuracy": {}, "at_short": {}, "seconds": {}, "stage1_steps": stage1,
           "stage2_tokens": tokens}
    for mixer in MIXERS:
        torch.manual_seed(0)
        base = DecoderLM(preset("llama-tiny", vocab_size=N_VALUES + N_KEYS, block_size=max(lengths), n_layer=2,
                                n_head=2, n_kv_head=2, d_model=64, d_ff=128, mixer=mixer))
        seconds = recall_train(base, SHORT, stage1, 32, args.recall_lr, seed=1)
        out["at_short"][mixer] = recall_accuracy(base, SHORT)
        print(f"[recall] {mixer} at {SHORT}: accuracy {out['at_short'][mixer]:.3f} ({seconds:.0f} s)", flush=True)
        out["accuracy"][mixer] = []
        for L in lengths:
            model = copy.deepcopy(base)
            batch = max(1, 8192 // L)
            seconds += recall_train(model, L, tokens // (batch * L), batch, args.recall_lr / 3, seed=L)
            out["accuracy"][mixer].append(recall_accuracy(model, L))
            print(f"[recall] {mixer} L={L}: accuracy {out['accuracy'][mixer][-1]:.3f}", flush=True)
        out["seconds"][mixer] = seconds
    return out


# --- scaling and decode: one fresh process per measurement -----------------------------------------------------
def scaling_model(mixer: str, L: int) -> DecoderLM:
    torch.manual_seed(0)
    fields = {k: v for k, v in SHAPE.items() if k != "preset"}
    return DecoderLM(preset("llama-tiny", **{**fields, "block_size": L}, vocab_size=65, d_ff=equal_d_ff(mixer),
                            mixer=mixer, retention_chunk=256))


def measure_step(mixer: str, L: int, quick: bool) -> dict:
    model = scaling_model(mixer, L).train()
    ids = torch.randint(0, 65, (1, L + 1), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids[:, :-1], "labels": ids[:, 1:]}
    base = memory.status_mb("VmRSS")
    memory.reset_peak()

    def step() -> None:
        model.zero_grad(set_to_none=True)
        causal_lm(model, batch)[0].backward()

    wall, _ = common.interleaved({"step": step}, 1, 2 if quick else 3)
    return {"s": common.median(wall["step"]), "peak_mb": memory.peak_rss_mb() - base}


def measure_decode(mixer: str, context: int, quick: bool) -> dict:
    model = scaling_model(mixer, context + 64).eval()
    ids = torch.randint(0, 65, (1, context), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        cache = model.new_cache(1, context + 64)
        model(ids, cache=cache)
        token = ids[:, -1:]
        times = []
        for i in range(8 if quick else 32):
            t0 = time.perf_counter()
            model(token, cache=cache, start=context + i, last_only=True)
            times.append(time.perf_counter() - t0)
    per_token = cache.nbytes() / (context + 64) if mixer != "retention" else cache.nbytes() / context
    return {"ms": 1000 * common.median(times[2:]), "cache_mb": cache.nbytes() / 2**20,
            "bytes_per_token": per_token}


def sweep(args, kind: str, lengths: list[int]) -> dict:
    out = {m: [] for m in MIXERS}
    for mixer in MIXERS:
        for L in lengths:
            cmd = [sys.executable, __file__, "--measure", f"{kind}:{mixer}:{L}", "--threads", str(args.threads)]
            r = common.run_measure(cmd + (["--quick"] if args.quick else []))
            print(f"[{kind}] {mixer} {L}: {r}", flush=True)
            out[mixer].append(r)
    return {"lengths": lengths, "results": out}


def part_scaling(args) -> dict:
    return sweep(args, "scaling", [512, 1024] if args.quick else [512, 1024, 2048, 4096, 8192])


def part_decode(args) -> dict:
    return sweep(args, "decode", [256, 512] if args.quick else [256, 512, 1024, 2048, 4096])


# --- the page ---------------------------------------------------------------------------------------------------
def load_parts() -> dict:
    out = {}
    for part in PARTS:
        path = common.RESULTS / f"mixers_{part}.json"
        if path.exists():
            out[part] = json.loads(path.read_text())
    return out


def lengths_ticks(ax, lengths: list[int]) -> None:
    ax.set_xticks(lengths, [str(n) for n in lengths])
    ax.minorticks_off()


def plot(parts: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(16, 8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3).flatten()
    if "lm" in parts:
        for ax, (tok, res) in zip(axes[:2], parts["lm"]["data"]["corpora"].items(), strict=False):
            for m in MIXERS:
                steps, losses = zip(*res["curves"][m], strict=True)
                ax.plot(np.array(steps) * res["s_per_step"][m], losses, "o-", ms=3, label=m)
            ax.axvline(res["budget_s"], color="k", lw=0.8, ls="--")
            ax.set(xlabel="training seconds (steps x measured s/step)", ylabel="val loss", title=f"{tok}: val loss")
            ax.set_ylim(top=min(max(lo for _, lo in res["curves"]["attention"][1:]) + 0.5, 10))
            ax.legend()
    if "recall" in parts:
        r = parts["recall"]["data"]
        for m in MIXERS:
            axes[2].plot(r["lengths"], r["accuracy"][m], "o-", label=m)
        axes[2].axhline(1 / N_VALUES, color="k", lw=0.8, ls=":", label="chance")
        axes[2].set(xscale="log", xlabel="sequence length", ylabel="accuracy", title="associative recall, 2 layers")
        lengths_ticks(axes[2], r["lengths"])
        axes[2].legend()
    for ax, part, key, label in ((axes[3], "scaling", "s", "training step seconds (B=1)"),
                                 (axes[4], "scaling", "peak_mb", "training step peak MB"),
                                 (axes[5], "decode", "ms", "ms per generated token")):
        if part not in parts:
            continue
        r = parts[part]["data"]
        for m in MIXERS:
            ax.plot(r["lengths"], [x[key] for x in r["results"][m]], "o-", label=m)
        ax.set(xscale="log", yscale="log", xlabel="sequence length" if part == "scaling" else "context length",
               ylabel=label, title=label)
        lengths_ticks(ax, r["lengths"])
        ax.legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def lm_section(p: dict, seeds: dict | None) -> list[str]:
    d = p["data"]
    lines = [f"## Language modelling at equal parameters\n\nCommand: `{p['machine']['command']}` "
             f"({p['machine']['date']})\n\nA char / BPE Llama (4 layers, d={D}, 4 heads, context {CTX}, RoPE, RMSNorm, "
             f"SwiGLU), {d['steps']} steps of batch {BATCH}, lr 2e-3 cosine to 2e-4, fp32, the same batches and the "
             "one training loop for all; retention and Hyena carry more weights per layer than attention (the gate "
             "g_proj; the third stream and the filter network), so their SwiGLU width is narrowed until the totals "
             "match. Val loss: the whole validation split in non-overlapping windows. Equal wall-clock: the fastest "
             "mixer's run time (steps x its median training-step seconds, timed interleaved after training), and "
             "each mixer's val curve read at the step it reaches in that time.\n"]
    for tok, r in d["corpora"].items():
        more = seeds["data"]["val_loss"][tok] if seeds else {m: [] for m in MIXERS}
        rows = []
        for m in MIXERS:
            runs = [r["val_loss"][m]] + more[m]
            rows.append([m, f"{r['params'][m]:,}", r["d_ff"][m], " / ".join(f"{x:.4f}" for x in runs),
                         f"{np.mean(runs):.4f}", f"{r['s_per_step'][m]:.3f}",
                         f"{r['s_per_step'][m] / r['s_per_step']['attention']:.2f}", f"{r['at_budget'][m]:.4f}"])
        lines += [f"**{tok}** (budget {r['budget_s']:.0f} s)\n", common.table(
            ["mixer", "params", "d_ff", f"val loss after {d['steps']} steps (seed 1337 / others)", "mean",
             "s / step", "÷ attention", "val loss at equal wall-clock (seed 1337)"], rows), ""]
    return lines


def recall_section(p: dict) -> list[str]:
    d = p["data"]
    rows = [[m, f"{d['at_short'][m]:.3f}"] + [f"{a:.3f}" for a in d["accuracy"][m]] + [f"{d['seconds'][m]:.0f}"]
            for m in MIXERS]
    return [f"## Associative recall vs sequence length\n\nCommand: `{p['machine']['command']}` "
            f"({p['machine']['date']})\n\nSequences of L/2 (key, value) pairs; each sequence draws its own L/8 keys "
            f"(of {N_KEYS}) and gives each one of {N_VALUES} values; every key seen before in the sequence asks for "
            f"its value (chance {1 / N_VALUES:.3f}), and its previous occurrence is about L/4 back. 2 layers, width "
            f"64, 2 heads. Stage 1: {d['stage1_steps']} steps of 32 sequences of {SHORT} tokens (the recall circuit "
            "takes ~2,000 such steps to form in attention; training from scratch at 4,096 tokens for that long is "
            f"beyond this CPU). Stage 2, per length: the stage-1 model trained on {d['stage2_tokens']:,} tokens at "
            "that length, then accuracy on fresh sequences.\n",
            common.table(["mixer", f"L={SHORT} (stage 1)"] + [f"L={L}" for L in d["lengths"]] + ["train s"], rows),
            ""]


def sweep_section(p: dict, title: str, cols: list[tuple[str, str, str]], intro: str) -> list[str]:
    d = p["data"]
    headers = ["mixer"] + [f"{name} @ {L}" for name, _, _ in cols for L in d["lengths"]]
    rows = [[m] + [format(x[key], spec) for _, key, spec in cols for x in d["results"][m]] for m in MIXERS]
    return [f"## {title}\n\nCommand: `{p['machine']['command']}` ({p['machine']['date']})\n\n{intro}\n",
            common.table(headers, rows), ""]


FINDINGS = "## What this shows"  # the hand-written closing section, kept when the page is rebuilt


def write_doc(parts: dict) -> Path:
    path = DOCS / "mixers.md"
    old = path.read_text() if path.exists() else ""
    findings = FINDINGS + old.split(FINDINGS, 1)[1] if FINDINGS in old else f"{FINDINGS}\n\n(to be written)\n"
    info = common.machine_info()
    lines = ["# Beyond attention: retention and Hyena against attention\n",
             f"Machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}. Every model is the same "
             "decoder (`ModelConfig.mixer` is the only difference); the plot below has every part.\n",
             "![mixers](mixers.png)\n"]
    if "lm" in parts:
        lines += lm_section(parts["lm"], parts.get("seeds"))
    if "recall" in parts:
        lines += recall_section(parts["recall"])
    if "scaling" in parts:
        lines += sweep_section(parts["scaling"], "Training step vs sequence length",
                               [("s", "s", ".3f"), ("peak MB", "peak_mb", ".0f")],
                               "One forward + backward of the 4-layer d=128 model at batch 1, each in a fresh process: "
                               "median seconds and the peak resident memory above the process's start. Retention runs "
                               "chunkwise (chunks of 256) past 256 tokens; attention is PyTorch's fused SDPA.")
    if "decode" in parts:
        lines += sweep_section(parts["decode"], "Decoding vs context length",
                               [("ms/token", "ms", ".2f"), ("cache bytes/token", "bytes_per_token", ".0f")],
                               "One generated token at batch 1 after a prefill of the context (median of the steps "
                               "after it), and the decoding cache's bytes per token of context: attention's KV cache "
                               "and Hyena's convolution history grow with the context, retention's state does not "
                               "(its bytes / context fall as the context grows).")
    path.write_text("\n".join(lines + [findings]))
    return path


def main() -> None:
    p = common.measure_parser(__doc__.splitlines()[0])
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    p.add_argument("--steps", type=int, default=None, help="lm: training steps per model (default 400)")
    p.add_argument("--recall-steps", type=int, default=4000, help="recall: stage-1 steps (32 sequences of 64)")
    p.add_argument("--recall-lr", type=float, default=3e-3)
    args = p.parse_args()
    common.setup(args.threads)
    if args.measure:
        kind, mixer, L = args.measure.split(":")
        fn = measure_step if kind == "scaling" else measure_decode
        common.report_measure(fn(mixer, int(L), args.quick))
        return
    for part in args.parts.split(","):
        if part not in PARTS:
            raise SystemExit(f"--parts: unknown part {part!r}; use some of {', '.join(PARTS)}")
        data = globals()[f"part_{part}"](args)
        common.write_results(f"mixers_{part}", {}, {"data": data, "quick": args.quick})
    parts = load_parts()
    DOCS.mkdir(exist_ok=True)
    plot(parts, DOCS / "mixers.png")
    print(f"wrote {write_doc(parts)}")


if __name__ == "__main__":
    main()
