"""Fine-tuning methods side by side: SmolLM2-135M-Instruct learns 2-digit addition and subtraction.

Zero-shot, 4-shot prompting, prompt tuning, prefix tuning, LoRA (r = 1, 4, 8, 64 on q,v; r = 8 on every
linear layer of the blocks), IA3, BitFit and full fine-tuning, each trained with the same step budget and
batch on the same train split, then scored by greedy exact match on the same held-out questions (no operand
pair of a test question occurs in training). Each method runs in a fresh process of this script
(`--method NAME`), so its peak resident memory (ru_maxrss) is its own. The anchor for time and memory is
full fine-tuning, measured in the same run.

    parent ──> for each method: python bench/finetune_methods.py --method NAME --out-json tmp.json
                 child: load_pretrained ─> prompting (k shots) | prepare_model ─> train() ─> greedy exact match
           ──> table, bench/results/finetune_methods.json, docs/finetune_methods.md + .png

    python bench/finetune_methods.py [--quick] [--threads N] [--steps N] [--n-test N] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402

MODEL = "smollm2-135m-instruct"
DATA = dict(seed=0, ops=("+", "-"), max_digits=2, styles=("question", "equation"))
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROMPT_INIT = "Compute the result and answer with the number only."
# name -> what it is: k shots (prompting) or a groundup.finetune method with its PeftOptions
METHODS: dict[str, dict[str, Any]] = {
    "zero-shot": {"k": 0},
    "few-shot (k=4)": {"k": 4},
    "prompt tuning": {"method": "prompt", "opts": {"n_virtual_tokens": 20, "prompt_init_text": PROMPT_INIT}},
    "prefix tuning": {"method": "prefix", "opts": {"n_virtual_tokens": 20}},
    "LoRA r=1 q,v": {"method": "lora", "opts": {"r": 1, "target_modules": ["q_proj", "v_proj"]}},
    "LoRA r=4 q,v": {"method": "lora", "opts": {"r": 4, "target_modules": ["q_proj", "v_proj"]}},
    "LoRA r=8 q,v": {"method": "lora", "opts": {"r": 8, "target_modules": ["q_proj", "v_proj"]}},
    "LoRA r=64 q,v": {"method": "lora", "opts": {"r": 64, "target_modules": ["q_proj", "v_proj"]}},
    "LoRA r=8 all linear": {"method": "lora", "opts": {"r": 8, "target_modules": ALL_LINEAR}},
    "IA3": {"method": "ia3", "opts": {}},
    "BitFit": {"method": "bitfit", "opts": {}},
    "full fine-tuning": {"method": "full", "opts": {}},
}
ANCHOR = "full fine-tuning"
MAX_NEW = 8  # answers are at most 4 characters (e.g. "-98", "198") plus the end of text
DOCS = Path(__file__).resolve().parents[1] / "docs"


def peak_rss_mb() -> float:
    """This process's peak resident memory so far: VmHWM on Linux (ru_maxrss survives exec, so a child started
    by a big parent would report the parent's peak), else ru_maxrss."""
    return window_peak_mb() or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> bool:
    """Start a new peak-RSS window (Linux: writing 5 to clear_refs resets VmHWM, and with it what ru_maxrss reports
    from then on: read peak_rss_mb() before); False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def window_peak_mb() -> float | None:
    """Peak resident memory since reset_peak() (VmHWM), None off Linux."""
    return status_mb("VmHWM")


def status_mb(field: str) -> float | None:
    """A memory field of /proc/self/status (VmRSS, VmHWM, ...) in MB, None off Linux."""
    try:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    except (OSError, StopIteration):
        return None
    return int(line.split()[1]) / 1024


def splits(n_train: int, n_test: int) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    from groundup.data.arithmetic import make_arithmetic_splits

    return make_arithmetic_splits(n_train, n_test, **DATA)


# --- one method, in its own process -----------------------------------------------------------------------------
def run_prompting(model, tok, train_recs, test_recs, k: int) -> dict[str, Any]:
    from groundup.fewshot import fewshot_exact_match

    shots = [(r["prompt"], r["completion"]) for r in train_recs]
    tests = [(r["prompt"], r["completion"]) for r in test_recs]
    t0 = time.perf_counter()
    res = fewshot_exact_match(model, tok, shots, tests, k, max_new_tokens=MAX_NEW)
    return {"accuracy": res.accuracy, "eval_s": time.perf_counter() - t0, "trainable": 0,
            "predictions": res.predictions, "prompt_example": res.prompts[0]}


def run_training(model, tok, train_recs, test_recs, spec: dict, args, out_dir: str) -> dict[str, Any]:
    """What groundup.finetune.finetune does (same calls, same defaults), with the model kept for evaluation."""
    import torch

    from groundup.data.arithmetic import exact_match
    from groundup.data.instruct import InstructData, parse_instructions
    from groundup.finetune import FinetuneJob, PeftOptions, greedy_completions, prepare_model, train_config
    from groundup.peft import PeftError, count_parameters
    from groundup.train import TrainConfig, train

    budget = TrainConfig(max_steps=args.steps, batch_size=args.batch, warmup_steps=max(1, args.steps // 10),
                         eval_every=0, ckpt_every=0, progress=False, log_every=10)
    job = FinetuneJob(model=MODEL, method=spec["method"], peft=PeftOptions(**spec["opts"]), out_dir=out_dir,
                      train=budget)
    cfg = train_config(job)  # the method's default learning rate (METHOD_LR), min_lr = lr / 10
    torch.manual_seed(cfg.seed)
    try:
        model = prepare_model(model, job.method, job.peft, tok)
    except PeftError as e:
        return {"status": "n/a", "note": "n/a — model has no biases" if job.method == "bitfit" else "n/a",
                "error": str(e)}
    examples, _ = parse_instructions(train_recs)
    data = InstructData(examples, tok, block_size=64, val_fraction=0.0, seed=cfg.seed)
    trainable, total = count_parameters(model)
    t0 = time.perf_counter()
    result = train(model, "causal_lm", data, cfg, tokenizer=tok)  # ends with one checkpoint write, as finetune's
    train_s = time.perf_counter() - t0
    pairs = [(e.prompt, e.completion) for e in parse_instructions(test_recs)[0]]
    t0 = time.perf_counter()
    preds = greedy_completions(model.eval(), tok, [p for p, _ in pairs], MAX_NEW, batch_size=16)
    eval_s = time.perf_counter() - t0
    accuracy = sum(exact_match(p, c) for p, (_, c) in zip(preds, pairs, strict=True)) / len(pairs)
    losses = result.losses
    tail = losses[-max(1, len(losses) // 10):]
    return {"accuracy": accuracy, "trainable": trainable, "total": total, "lr": cfg.lr, "train_s": train_s,
            "s_per_step": train_s / cfg.max_steps, "eval_s": eval_s, "loss_first": losses[0],
            "loss_last": sum(tail) / len(tail), "predictions": preds}


def child(args) -> None:
    """--method NAME: load, prompt or train, evaluate, and write one JSON record to --out-json."""
    common.setup(args.threads)
    from groundup.loading import load_pretrained

    name, spec = args.method, METHODS[args.method]
    t0 = time.perf_counter()
    model, tok = load_pretrained(MODEL)
    rec: dict[str, Any] = {"method": name, "status": "ok", "load_s": time.perf_counter() - t0,
                           "load_rss_mb": peak_rss_mb(), "total": sum(p.numel() for p in model.parameters())}
    window = reset_peak()  # the peak of training + evaluation alone, without the loader's transient
    train_recs, test_recs = splits(args.n_train, args.n_test)
    with tempfile.TemporaryDirectory(prefix="finetune_methods_") as out_dir:
        if "k" in spec:
            rec.update(run_prompting(model, tok, train_recs, test_recs, spec["k"]))
        else:
            rec.update(run_training(model, tok, train_recs, test_recs, spec, args, out_dir))
    preds = rec.pop("predictions", None)
    if preds is not None:
        from groundup.data.arithmetic import exact_match

        wrong = [(r["prompt"], r["completion"], p) for r, p in zip(test_recs, preds, strict=True)
                 if not exact_match(p, r["completion"])]
        rec.update(n_test=len(test_recs), wrong_examples=wrong[:5])
    rec["peak_rss_mb"] = max(rec["load_rss_mb"], peak_rss_mb())  # clear_refs also restarts ru_maxrss
    rec["work_peak_mb"] = window_peak_mb() if window else None
    rec["wall_s"] = time.perf_counter() - t0
    Path(args.out_json).write_text(json.dumps(rec, indent=2))


# --- the parent: every method, then the report -------------------------------------------------------------------
def run_all(args) -> dict[str, dict[str, Any]]:
    names = args.only or list(METHODS)
    results = {}
    for name in names:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "result.json"
            cmd = [sys.executable, __file__, "--method", name, "--out-json", str(out), "--threads", str(args.threads),
                   "--steps", str(args.steps), "--batch", str(args.batch), "--n-train", str(args.n_train),
                   "--n-test", str(args.n_test)]
            print(f"\n=== {name} ===", flush=True)
            t0 = time.perf_counter()
            rc = subprocess.run(cmd).returncode
            rec = json.loads(out.read_text()) if out.is_file() else {"method": name, "status": "error",
                                                                       "error": f"exit code {rc}"}
            rec["process_s"] = time.perf_counter() - t0
        results[name] = rec
        shown = {k: rec.get(k) for k in ("status", "accuracy", "trainable", "peak_rss_mb", "wall_s", "note")}
        print(f"{name}: {shown}", flush=True)
    return results


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion p measured on n questions."""
    if n == 0:
        return 0.0, 1.0
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def margin(a: float, b: float, n: int) -> float:
    """95% margin of a difference of two accuracies on n questions each (unpaired: conservative)."""
    return 1.96 * math.sqrt((a * (1 - a) + b * (1 - b)) / n) if n else 1.0


def table_rows(results: dict[str, dict[str, Any]]) -> list[list[Any]]:
    anchor = results.get(ANCHOR, {})
    rows = []
    for name, r in results.items():
        if r["status"] != "ok":
            rows.append([name, r.get("note") or r["status"]] + ["-"] * (len(HEADERS) - 2))
            continue
        lo, hi = wilson(r["accuracy"], r["n_test"])
        ok = anchor.get("status") == "ok"
        work = r.get("work_peak_mb") or r["peak_rss_mb"]
        t_ratio = r["wall_s"] / anchor["wall_s"] if ok else "-"
        m_ratio = work / (anchor.get("work_peak_mb") or anchor["peak_rss_mb"]) if ok else "-"
        rows.append([name, f"{r['trainable']:,}", f"{100 * r['trainable'] / r['total']:.3g}%",
                     f"{100 * r['accuracy']:.1f}%", f"{100 * lo:.0f}-{100 * hi:.0f}%",
                     r.get("loss_last", "-"), r.get("s_per_step", "-"), r["wall_s"], r["peak_rss_mb"], work,
                     t_ratio, m_ratio, r.get("lr", "-")])
    return rows


HEADERS = ["method", "trainable params", "% of model", "exact match", "95% interval", "final train loss",
           "s / step", "wall s (load+train+eval)", "process peak RSS MB", "train+eval peak MB", f"wall / {ANCHOR}",
           f"train+eval peak / {ANCHOR}", "peak lr"]


def claims(results: dict[str, dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(statements, disagreements) about the course's three claims, read off the numbers."""
    acc = {n: r["accuracy"] for n, r in results.items() if r["status"] == "ok"}
    n = next((r["n_test"] for r in results.values() if r["status"] == "ok"), 0)
    pct = lambda x: f"{100 * x:.1f}%"
    says, disagree = [], []
    tuned = {k: v for k, v in acc.items() if "k" not in METHODS[k]}
    few = acc.get("few-shot (k=4)")
    if few is not None and tuned:
        beat = [k for k, v in tuned.items() if v - few > margin(v, few, n)]
        worse = [k for k, v in tuned.items() if few - v > margin(v, few, n)]
        best = max(tuned, key=tuned.get)
        says.append(f"**Fine-tuning beats few-shot?** {'Yes' if beat else 'No'}: {len(beat)} of {len(tuned)} trained "
                    f"methods beat 4-shot prompting ({pct(few)}) by more than the 95% margin; the best is {best} at "
                    f"{pct(tuned[best])}." + (f" Worse than 4-shot: {', '.join(worse)}." if worse else ""))
        if not beat or worse:
            verb = " falls" if len(worse) == 1 else " fall"
            disagree.append("fine-tuning does not always beat few-shot here: "
                            + (", ".join(worse) + verb + " below 4-shot" if worse else "no method clears the margin"))
    full, lora = acc.get(ANCHOR), acc.get("LoRA r=8 q,v")
    if full is not None and lora is not None:
        frac = results["LoRA r=8 q,v"]["trainable"] / results[ANCHOR]["trainable"]
        gap, m = full - lora, margin(full, lora, n)
        close = gap <= max(0.05, m)
        says.append(f"**LoRA close to full fine-tuning with far fewer parameters?** {'Yes' if close else 'No'}: LoRA "
                    f"r=8 on q,v reaches {pct(lora)} vs {pct(full)} for full fine-tuning (gap {100 * gap:+.1f} points,"
                    f" 95% margin {100 * m:.1f}) while training {100 * frac:.2g}% of the parameters.")
        if not close:
            disagree.append(f"LoRA r=8 q,v trails full fine-tuning by {100 * gap:.1f} points at this step budget")
    ranks = {r: acc.get(f"LoRA r={r} q,v") for r in (1, 4, 8, 64)}
    if all(v is not None for v in ranks.values()):
        top = max(ranks.values())
        small_ok = [r for r in (1, 4) if top - ranks[r] <= max(0.05, margin(top, ranks[r], n))]
        says.append("**Small ranks suffice?** " + ("Yes" if small_ok else "No") + ": "
                    + ", ".join(f"r={r} {pct(v)}" for r, v in ranks.items())
                    + f" (rank {'/'.join(map(str, small_ok)) or 'none'} within 5 points or the margin of the best).")
        if not small_ok:
            disagree.append("rank 1 and 4 fall clearly below the best rank here")
    return says, disagree


def write_docs(results: dict[str, dict[str, Any]], args, command: str) -> tuple[Path, Path]:
    DOCS.mkdir(exist_ok=True)
    png = plot(results, DOCS / "finetune_methods.png")
    info = common.machine_info()
    n = next((r["n_test"] for r in results.values() if r.get("n_test")), 0)
    head = ["# Fine-tuning methods on SmolLM2-135M-Instruct: 2-digit arithmetic", ""]
    if args.quick:
        head += ["> **SMOKE RUN ONLY: these numbers are not results.** `--quick` trains "
                 f"{args.steps} steps and scores {n} questions, only to check that every method runs end to end. "
                 "The full run (below) is still to be done; replace this page with its output.", ""]
    head += [f"Command: `{command}` (full run: `python bench/finetune_methods.py`)  ",
             f"Machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, {info['date']}  ",
             f"Task: `make_arithmetic_splits({args.n_train}, {args.n_test}, seed=0, ops=('+', '-'), max_digits=2, "
             "styles=('question', 'equation'))`; train and test share no operand pair. Every trained method: "
             f"{args.steps} steps x batch {args.batch}, the method's default peak learning rate "
             "(`groundup.finetune.METHOD_LR`), bf16 autocast, seed 1337; evaluated by greedy exact match. "
             "s / step = train() wall time / steps (its one final checkpoint write included). "
             "Prompting uses `Q: {prompt}\\nA: {completion}` shots; trained methods see the prompt plus "
             "groundup's instruction separator. LoRA alpha = 16 at every rank (scaling alpha / r, as in Hu et al.). "
             "Prefix tuning counts its reparameterisation MLP (it trains; saving folds it away). "
             "Each method runs in its own process: process peak RSS is ru_maxrss (load + train + eval); "
             "train+eval peak is VmHWM reset after loading, so the loader's transient does not hide the method's "
             "own memory.", "",
             common.table(HEADERS, table_rows(results)), "",
             "![accuracy vs trainable parameters](finetune_methods.png)", ""]
    if args.quick:
        head += ["## The course's claims, checked", "", "Not checked: a smoke run cannot test them.", ""]
    else:
        says, disagree = claims(results)
        head += ["## The course's claims, checked", ""] + [f"- {s}" for s in says] + [""]
        head += ["Where our numbers disagree: " + ("; ".join(disagree) + "." if disagree else "nowhere."), ""]
    md = DOCS / "finetune_methods.md"
    md.write_text("\n".join(head))
    return md, png


def plot(results: dict[str, dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    top = 0.0
    for i, (name, r) in enumerate(results.items()):
        if r["status"] != "ok":
            continue
        if r["trainable"] == 0:
            top = max(top, 100 * r["accuracy"])
            ax.axhline(100 * r["accuracy"], ls="--", lw=1, color="grey")
            ax.text(1e2, 100 * r["accuracy"], f" {name}", va="bottom", fontsize=8, color="grey")
            continue
        top = max(top, 100 * r["accuracy"])
        ax.scatter(r["trainable"], 100 * r["accuracy"])
        ax.annotate(name, (r["trainable"], 100 * r["accuracy"]), fontsize=8, xytext=(4, 3 + 9 * (i % 3)),
                    textcoords="offset points")  # staggered: methods with equal scores do not overprint
    ax.set_xscale("log")
    ax.set_xlim(1e2, 1e9)
    ax.set_ylim(-3, min(105, top + 12))
    ax.set_xlabel("trainable parameters (log)")
    ax.set_ylabel("held-out exact match (%)")
    ax.set_title("SmolLM2-135M-Instruct, 2-digit + / -, same step budget")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per trained method (default 150)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--n-test", type=int, default=None)
    p.add_argument("--only", nargs="+", choices=list(METHODS), help="run these methods only")
    p.add_argument("--method", choices=list(METHODS), help=argparse.SUPPRESS)  # the child process
    p.add_argument("--out-json", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.steps = args.steps or (3 if args.quick else 150)
    args.n_train = args.n_train or (200 if args.quick else 4000)
    args.n_test = args.n_test or (8 if args.quick else 200)
    if args.method:
        return child(args)
    common.setup(args.threads)
    command = common.machine_info()["command"]
    results = run_all(args)
    title = (f"SmolLM2-135M-Instruct on 2-digit + / - ({args.n_test} held-out questions), {args.steps} steps x batch "
             f"{args.batch} per trained method; time and memory ratios against {ANCHOR} in the same run"
             + (" [SMOKE RUN: not results]" if args.quick else ""))
    tables = {title: common.show(title, HEADERS, table_rows(results))}
    path = common.write_results(common.result_name("finetune_methods", args.tag), tables,
                                {"quick": args.quick, "methods": results, "data": {**DATA, "n_train": args.n_train,
                                                                                   "n_test": args.n_test}})
    md, png = write_docs(results, args, command)
    print(f"wrote {path}, {md}, {png}")
    if args.quick:  # exercise the claims text (meaningless on smoke numbers, so it stays out of the page)
        print("claims text (smoke numbers, meaningless):", *claims(results), sep="\n  ")


if __name__ == "__main__":
    main()
