"""Fine-tuning methods side by side: SmolLM2-135M-Instruct learns 2-digit addition and subtraction.

Zero-shot, 4-shot prompting, prompt tuning, prefix tuning (started from words, and the MLP from noise), LoRA
(r = 1 and 8 on q,v; r = 8 on every linear layer of the blocks), IA3, BitFit and full fine-tuning: the same step
budget and batch on the same train split, scored by greedy exact match on the same held-out questions (no
operand pair of a test question occurs in training). Every trained method gets the same tuning:

    search   each rate of its grid (three, a factor 3 apart) trains once (seed 1) and is scored on a
             validation split carved from the training data (its operand pairs removed from training), and on
             the test split, which the choice never reads; LoRA r=1 takes r=8 q,v's rate (alpha / r scaling
             keeps the best rate rank-independent); all-linear, other modules, searches its own (borrowing
             r=8 q,v's 5e-3 gave it 4.8% on 2026-12-03)
    final    the best rate's search run is seed 1; seeds 2 and 3 train at that rate and are scored on the test
             split (few-shot: 3 shot seeds)

Each run is a fresh process of this script (`--method NAME --lr X --seed S --split val|test`), so its peak
resident memory is its own; `--jobs 2` runs two at a time (one thread each). The anchor for time and memory is
full fine-tuning, measured in the same run. Tables, claims and the page: finetune_report.py.

    python bench/finetune_methods.py [--quick] [--jobs N] [--steps N] [--n-val N] [--n-test N] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402
import finetune_report  # noqa: E402
from memory import peak_rss_mb, reset_peak, window_peak_mb  # noqa: E402

MODEL = "smollm2-135m-instruct"
DATA = dict(seed=0, ops=("+", "-"), max_digits=2, styles=("question", "equation"))
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROMPT_INIT = "Compute the result and answer with the number only."  # the words prompt and prefix tuning start from
QV = ["q_proj", "v_proj"]
LORA_RATES = (5e-4, 1.5e-3, 5e-3)
# name -> k shots (prompting), or a groundup.finetune method, its PeftOptions and its learning-rate grid
METHODS: dict[str, dict[str, Any]] = {
    "zero-shot": {"k": 0},
    "few-shot (k=4)": {"k": 4},
    "prompt tuning": {"method": "prompt", "opts": {"n_virtual_tokens": 20, "init_text": PROMPT_INIT},
                      "rates": (1e-2, 3e-2, 1e-1)},
    "prefix tuning (words start)": {"method": "prefix", "opts": {"n_virtual_tokens": 20, "init_text": PROMPT_INIT,
                                                                 "prefix_hidden": None}, "rates": (3e-3, 1e-2, 3e-2)},
    "prefix tuning (MLP, noise start)": {"method": "prefix", "opts": {"n_virtual_tokens": 20},
                                         "rates": (1e-3, 3e-3, 1e-2)},
    "LoRA r=1 q,v": {"method": "lora", "opts": {"r": 1, "target_modules": QV}, "rates_of": "LoRA r=8 q,v"},
    "LoRA r=8 q,v": {"method": "lora", "opts": {"r": 8, "target_modules": QV}, "rates": LORA_RATES},
    "LoRA r=8 all linear": {"method": "lora", "opts": {"r": 8, "target_modules": ALL_LINEAR}, "rates": LORA_RATES},
    "IA3": {"method": "ia3", "opts": {}, "rates": (1e-3, 3e-3, 1e-2)},
    "BitFit": {"method": "bitfit", "opts": {}, "rates": (3e-4, 1e-3, 3e-3)},
    "full fine-tuning": {"method": "full", "opts": {}, "rates": (2e-5, 5e-5, 1.5e-4)},
}
ANCHOR = "full fine-tuning"
SEEDS = (1, 2, 3)  # the first is the search's
MAX_NEW = 8  # answers are at most 4 characters (e.g. "-98", "198") plus the end of text
EVAL_BATCH = 32


def operands(prompt: str) -> tuple[int, int]:
    a, b = (int(x) for x in re.findall(r"\d+", prompt)[:2])
    return min(a, b), max(a, b)


def splits(args) -> dict[str, list[dict[str, str]]]:
    """train / val / test: val is the first n_val training records, and training keeps no record sharing an operand
    pair with them (as test shares none with train)."""
    from groundup.data.arithmetic import make_arithmetic_splits

    train, test = make_arithmetic_splits(args.n_train, args.n_test, **DATA)
    val = train[: args.n_val]
    held = {operands(r["prompt"]) for r in val}
    return {"train": [r for r in train[args.n_val:] if operands(r["prompt"]) not in held], "val": val, "test": test}


# --- one run, in its own process --------------------------------------------------------------------------------
def run_prompting(model, tok, data, args, k: int) -> dict[str, Any]:
    from groundup.fewshot import fewshot_exact_match

    shots = [(r["prompt"], r["completion"]) for r in data["train"]]
    scores = {}
    for split in args.split.split("+"):
        tests = [(r["prompt"], r["completion"]) for r in data[split]]
        t0 = time.perf_counter()
        res = fewshot_exact_match(model, tok, shots, tests, k, seed=args.seed, max_new_tokens=MAX_NEW)
        scores[split] = {"accuracy": res.accuracy, "eval_s": time.perf_counter() - t0, "predictions": res.predictions}
    return {"trainable": 0, "scores": scores}


def run_training(model, tok, data, spec: dict, args, out_dir: str) -> dict[str, Any]:
    """What groundup.finetune.finetune does (same calls, same schedule), at --lr and --seed, with the model kept
    for evaluation."""
    import torch

    from groundup.data.arithmetic import exact_match
    from groundup.data.instruct import InstructData, parse_instructions
    from groundup.finetune import FinetuneJob, PeftOptions, greedy_completions, prepare_model, train_config
    from groundup.peft import PeftError, count_parameters
    from groundup.train import TrainConfig, train

    budget = TrainConfig(max_steps=args.steps, batch_size=args.batch, warmup_steps=max(1, args.steps // 10),
                         eval_every=0, ckpt_every=0, progress=False, log_every=10, seed=args.seed)
    job = FinetuneJob(model=MODEL, method=spec["method"], peft=PeftOptions(**spec["opts"]), out_dir=out_dir,
                      train=budget)
    cfg = dataclasses.replace(train_config(job), lr=args.lr, min_lr=args.lr / 10)  # min_lr as finetune sets it
    torch.manual_seed(cfg.seed)
    try:
        model = prepare_model(model, job.method, job.peft, tok)
    except PeftError as e:
        return {"status": "n/a", "note": "n/a — model has no biases" if job.method == "bitfit" else "n/a",
                "error": str(e)}
    examples, _ = parse_instructions(data["train"])
    train_data = InstructData(examples, tok, block_size=64, val_fraction=0.0, seed=cfg.seed)
    trainable, total = count_parameters(model)
    t0 = time.perf_counter()
    result = train(model, "causal_lm", train_data, cfg, tokenizer=tok)  # ends with one checkpoint write
    train_s = time.perf_counter() - t0
    scores = {}
    for split in args.split.split("+"):
        pairs = [(e.prompt, e.completion) for e in parse_instructions(data[split])[0]]
        t0 = time.perf_counter()
        preds = greedy_completions(model.eval(), tok, [p for p, _ in pairs], MAX_NEW, batch_size=EVAL_BATCH)
        right = sum(exact_match(p, c) for p, (_, c) in zip(preds, pairs, strict=True))
        scores[split] = {"accuracy": right / len(pairs), "eval_s": time.perf_counter() - t0, "predictions": preds}
    losses = result.losses
    tail = losses[-max(1, len(losses) // 10):]
    return {"trainable": trainable, "total": total, "lr": cfg.lr, "train_s": train_s,
            "s_per_step": train_s / cfg.max_steps, "loss_first": losses[0], "loss_last": sum(tail) / len(tail),
            "scores": scores}


def child(args) -> None:
    """--method NAME: load, prompt or train, evaluate on --split, and write one JSON record to --out-json."""
    common.setup(args.threads)
    from groundup.loading import load_pretrained

    spec = METHODS[args.method]
    t0 = time.perf_counter()
    model, tok = load_pretrained(MODEL)
    rec: dict[str, Any] = {"method": args.method, "status": "ok", "seed": args.seed, "split": args.split,
                           "load_s": time.perf_counter() - t0, "load_rss_mb": peak_rss_mb(),
                           "total": sum(p.numel() for p in model.parameters())}
    window = reset_peak()  # the peak of training + evaluation alone, without the loader's transient
    data = splits(args)
    with tempfile.TemporaryDirectory(prefix="finetune_methods_") as out_dir:
        if "k" in spec:
            rec.update(run_prompting(model, tok, data, args, spec["k"]))
        else:
            rec.update(run_training(model, tok, data, spec, args, out_dir))
    from groundup.data.arithmetic import exact_match

    for split, score in rec.get("scores", {}).items():
        preds = score.pop("predictions")
        wrong = [(r["prompt"], r["completion"], p) for r, p in zip(data[split], preds, strict=True)
                 if not exact_match(p, r["completion"])]
        score.update(n_eval=len(preds), wrong_examples=wrong[:5])
    if "scores" in rec:  # the record reads as a run scored on its first split; the others ride along
        rec.update(rec["scores"][args.split.split("+")[0]])
    rec["peak_rss_mb"] = max(rec["load_rss_mb"], peak_rss_mb())  # clear_refs also restarts ru_maxrss
    rec["work_peak_mb"] = window_peak_mb() if window else None
    rec["wall_s"] = time.perf_counter() - t0
    Path(args.out_json).write_text(json.dumps(rec, indent=2))


# --- the parent: search, final runs, the report ----------------------------------------------------------------
def launch(args, name: str, lr: float | None, seed: int, split: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, __file__, "--method", name, "--seed", str(seed), "--split", split, "--out-json",
               str(out), "--threads", str(args.threads), "--steps", str(args.steps), "--batch", str(args.batch),
               "--n-train", str(args.n_train), "--n-val", str(args.n_val), "--n-test", str(args.n_test)]
        cmd += ["--lr", str(lr)] if lr is not None else []
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        rec = json.loads(out.read_text()) if out.is_file() else {
            "method": name, "status": "error", "error": f"exit code {done.returncode}: {done.stderr[-600:]}"}
    rec["process_s"] = time.perf_counter() - t0
    shown = {k: rec.get(k) for k in ("status", "accuracy", "lr", "seed", "split", "wall_s", "error")}
    print(f"{name}: {shown}", flush=True)
    return rec


def run_all(args) -> dict[str, Any]:
    names = args.only or list(METHODS)
    pool = ThreadPoolExecutor(args.jobs)
    search = {(n, lr): pool.submit(launch, args, n, lr, SEEDS[0], "val+test")
              for n in names for lr in METHODS[n].get("rates", ())}
    searched = {n: [search[n, lr].result() for lr in METHODS[n]["rates"]] for n in names if "rates" in METHODS[n]}
    chosen = {n: best_rate(runs) for n, runs in searched.items()}
    reused = {n: [as_test_run(next(r for r in runs if r.get("lr") == chosen[n]))] if chosen[n] is not None else []
              for n, runs in searched.items()}
    for n in names:
        if "rates_of" in METHODS[n]:
            chosen[n] = chosen.get(METHODS[n]["rates_of"])
    final = {n: [pool.submit(launch, args, n, chosen.get(n), seed, "test")
                 for seed in (SEEDS[len(reused.get(n, [])):] if METHODS[n].get("k", 1) else SEEDS[:1])]
             for n in names if chosen.get(n) is not None or "k" in METHODS[n]}  # zero-shot is deterministic
    pool.shutdown(wait=True)
    return {"search": searched, "chosen": chosen,
            "final": {n: reused.get(n, []) + [f.result() for f in fs] for n, fs in final.items()}}


def as_test_run(run: dict[str, Any]) -> dict[str, Any]:
    """A search run read as a final run: its test-split score (never read by the choice of rate)."""
    return {**run, "split": "test", **run["scores"]["test"]}


def best_rate(runs: list[dict[str, Any]]) -> float | None:
    """The rate with the best validation accuracy (ties: the lower final training loss); None where none ran."""
    ok = [r for r in runs if r["status"] == "ok"]
    return max(ok, key=lambda r: (r["accuracy"], -r["loss_last"]))["lr"] if ok else None


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.set_defaults(threads=1)
    p.add_argument("--jobs", type=int, default=2, help="runs at a time, one process each (default 2)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per training run (default 100)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--n-val", type=int, default=None)
    p.add_argument("--n-test", type=int, default=None)
    p.add_argument("--only", nargs="+", choices=list(METHODS), help="run these methods only")
    p.add_argument("--method", choices=list(METHODS), help=argparse.SUPPRESS)  # a child process
    p.add_argument("--lr", type=float, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=SEEDS[0], help=argparse.SUPPRESS)
    p.add_argument("--split", choices=("val", "test", "val+test"), default="test", help=argparse.SUPPRESS)
    p.add_argument("--out-json", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.steps = args.steps or (3 if args.quick else 100)
    args.n_train = args.n_train or (200 if args.quick else 4000)
    args.n_val = args.n_val or (8 if args.quick else 60)
    args.n_test = args.n_test or (8 if args.quick else 200)
    if args.method:
        return child(args)
    common.setup(args.threads)
    command = common.machine_info()["command"]
    t0 = time.perf_counter()
    results = run_all(args)
    results["wall_s"] = time.perf_counter() - t0
    finetune_report.report(results, args, command, METHODS, ANCHOR)


if __name__ == "__main__":
    main()
