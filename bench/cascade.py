"""LLM cascade (FrugalGPT) on 2-digit arithmetic: a tiny from-scratch model first, LoRA-tuned SmolLM2-135M when unsure.

Two genuinely different models learn the same task (held-out 2-digit + / - questions, groundup.data.arithmetic):
a ~0.4M-parameter char-level Llama trained from scratch by groundup, and SmolLM2-135M-Instruct fine-tuned with
LoRA (r=8, every linear layer). Cost = parameters x (prompt + generated tokens) (CostModel.per_parameter, ~FLOPs).
The held-out questions are split three ways: a scorer set (fits the LogisticScorer), a validation set (fits the
thresholds to each budget) and a test set (every number reported). Greedy answers are deterministic, so every
model answers every question once and the budget sweep replays them (Cascade.replay); one real Cascade.run on
the test set checks the replay and gives the wall-time ratio against always-large, measured in the same run.

    train tiny ─┐                      ┌─ scorer set ──> LogisticScorer.fit
    LoRA SmolLM2┴─> answer_all(...) ───┼─ validation ──> fit_answers(budget) for each budget in the sweep
                                       └─ test ────────> replay -> accuracy, cost  (+ one real run, timed)

    python bench/cascade.py [--quick] [--threads N] [--small-steps N] [--large-steps N]
"""

from __future__ import annotations

import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402

LARGE = "smollm2-135m-instruct"
DATA = dict(seed=0, ops=("+", "-"), max_digits=2, styles=("question", "equation"))
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MAX_NEW = 8  # answers are at most 4 characters ("-98", "198") plus the end of text
BUDGETS = (0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.2)  # x always-large's mean cost
DOCS = Path(__file__).resolve().parents[1] / "docs"
# always-large's LoRA rate: the best of bench/finetune_methods.py's search on a validation split of this task
# (LoRA r=8 on every linear layer, 5e-4 / 1.5e-3 / 5e-3), so the baseline gets the tuning the method got
LARGE_LR = 1.5e-3


def splits(args) -> dict[str, list[dict[str, str]]]:
    from groundup.data.arithmetic import make_arithmetic_splits

    train, held = make_arithmetic_splits(args.n_train, args.n_scorer + args.n_val + args.n_test, **DATA)
    a, b = args.n_scorer, args.n_scorer + args.n_val
    return {"train": train, "scorer": held[:a], "val": held[a:b], "test": held[b:]}


def train_small(records: dict[str, list[dict[str, str]]], args, out_dir: str):
    """A tiny char-level Llama trained from scratch on the train split (same prompt format as the large model)."""
    import torch

    from groundup.config import preset
    from groundup.data.instruct import DEFAULT_SEPARATOR, InstructData, parse_instructions
    from groundup.models import build_model
    from groundup.tokenizer import char_tokenizer
    from groundup.train import TrainConfig, train

    text = DEFAULT_SEPARATOR + "".join(r["prompt"] + r["completion"] for recs in records.values() for r in recs)
    tok = char_tokenizer(text, special_tokens=["<|endoftext|>"])
    torch.manual_seed(0)
    model = build_model(preset("llama-tiny", vocab_size=tok.vocab_size, n_layer=args.small_layers,
                               d_model=args.small_d, n_head=4, n_kv_head=2, d_ff=3 * args.small_d, block_size=48))
    data = InstructData(parse_instructions(records["train"])[0], tok, block_size=48, val_fraction=0.0)
    cfg = TrainConfig(out_dir=out_dir, max_steps=args.small_steps, batch_size=64, lr=3e-3, min_lr=3e-4,
                      warmup_steps=max(1, min(100, args.small_steps // 10)), eval_every=0, ckpt_every=0,
                      progress=False, dtype="fp32", log_every=max(1, args.small_steps // 5))
    t0 = time.perf_counter()
    result = train(model, "causal_lm", data, cfg, tokenizer=tok)
    return model.eval(), tok, {"train_s": time.perf_counter() - t0, "loss_last": result.losses[-1]}


def train_large(records: dict[str, list[dict[str, str]]], args, out_dir: str):
    """SmolLM2-135M-Instruct + LoRA r=8 on every linear layer (groundup.finetune's recipe), merged for inference."""
    import torch

    from groundup.data.instruct import InstructData, parse_instructions
    from groundup.finetune import PeftOptions, merge_for_inference, prepare_model
    from groundup.loading import load_pretrained
    from groundup.train import TrainConfig, train

    model, tok = load_pretrained(LARGE)
    torch.manual_seed(0)
    model = prepare_model(model, "lora", PeftOptions(r=8, target_modules=ALL_LINEAR), tok)
    data = InstructData(parse_instructions(records["train"])[0], tok, block_size=64, val_fraction=0.0)
    lr = LARGE_LR
    cfg = TrainConfig(out_dir=out_dir, max_steps=args.large_steps, batch_size=8, lr=lr, min_lr=lr / 10,
                      warmup_steps=max(1, args.large_steps // 10), eval_every=0, ckpt_every=0, progress=False,
                      log_every=max(1, args.large_steps // 5))
    t0 = time.perf_counter()
    result = train(model, "causal_lm", data, cfg, tokenizer=tok)
    return merge_for_inference(model).eval(), tok, {"train_s": time.perf_counter() - t0,
                                                    "loss_last": result.losses[-1]}


def labels(table, records) -> list[list[bool]]:
    from groundup.data.arithmetic import exact_match

    return [[exact_match(a.text, r["completion"]) for a, r in zip(row, records, strict=True)] for row in table]


def mean(xs) -> float:
    return sum(xs) / len(xs)


def sweep(cascade, val, test, large_cost: float) -> list[dict[str, Any]]:
    """Fit the thresholds on validation for each budget, then replay the test answers with them."""
    points = []
    for frac in BUDGETS:
        try:
            fit = cascade.fit_answers(val["answers"], val["correct"], frac * large_cost)
        except ValueError:  # below the tiny model's own cost: no threshold can meet it
            continue
        results = cascade.replay(test["answers"])
        right = [test["correct"][r.stage][i] for i, r in enumerate(results)]  # labels of the answer given
        points.append({"budget": frac, "thresholds": fit.thresholds, "val_acc": fit.accuracy,
                       "val_cost": fit.mean_cost / large_cost, "test_acc": mean(right),
                       "test_cost": mean([r.cost for r in results]) / large_cost,
                       "escalated": mean([r.stage == 1 for r in results])})
    return points


def answer_split(cascade, recs, batch: int) -> dict[str, Any]:
    answers = cascade.answer_all([r["prompt"] for r in recs], batch)
    return {"answers": answers, "correct": labels(answers, recs)}


def baselines(test, large_cost: float) -> dict[str, dict[str, float]]:
    small_c, large_c = test["correct"]
    small_cost = [a.cost for a in test["answers"][0]]
    big_cost = [a.cost for a in test["answers"][1]]
    oracle_cost = [s + (b if not ok else 0.0) for s, b, ok in zip(small_cost, big_cost, small_c, strict=True)]
    return {
        "always small": {"test_acc": mean(small_c), "test_cost": mean(small_cost) / large_cost, "escalated": 0.0},
        "always large": {"test_acc": mean(large_c), "test_cost": mean(big_cost) / large_cost, "escalated": 1.0},
        "oracle router": {"test_acc": mean([a or b for a, b in zip(small_c, large_c, strict=True)]),
                          "test_cost": mean(oracle_cost) / large_cost, "escalated": 1 - mean(small_c)},
    }


def real_run(cascade, target: dict[str, Any], test, recs, batch: int) -> dict[str, Any]:
    """Run the cascade for real at the target's thresholds and always-large, timed; check run == replay."""
    cascade.thresholds = target["thresholds"]
    queries = [r["prompt"] for r in recs]
    t0 = time.perf_counter()
    ran = cascade.run(queries, batch)
    cascade_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    cascade.members[1].answer(queries, batch)
    large_s = time.perf_counter() - t0
    replayed = cascade.replay(test["answers"])
    same = [(a.text, a.member, round(a.cost)) for a in ran] == [(a.text, a.member, round(a.cost)) for a in replayed]
    return {"cascade_s": cascade_s, "large_s": large_s, "run_equals_replay": same}


HEADERS = ["policy", "scorer", "budget (x large)", "val exact match", "test exact match", "test cost (x large)",
           "escalated to large", "threshold"]


def rows_of(curves: dict[str, list[dict[str, Any]]], base: dict[str, dict[str, float]]) -> list[list[Any]]:
    pct = lambda x: f"{100 * x:.1f}%"
    rows = [[name, "-", "-", "-", pct(b["test_acc"]), f"{b['test_cost']:.3f}", pct(b["escalated"]), "-"]
            for name, b in base.items()]
    for scorer, points in curves.items():
        rows += [["cascade", scorer, f"{p['budget']:g}", pct(p["val_acc"]), pct(p["test_acc"]), f"{p['test_cost']:.3f}",
                  pct(p["escalated"]), f"{p['thresholds'][0]:.3g}"] for p in points]
    return rows


def pick_target(points: list[dict[str, Any]], large_val_acc: float) -> dict[str, Any]:
    """The cheapest budget whose validation accuracy reaches always-large's (else the most accurate one)."""
    good = [p for p in points if p["val_acc"] >= large_val_acc]
    return min(good, key=lambda p: p["budget"]) if good else max(points, key=lambda p: p["val_acc"])


def plot(curves, base, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for scorer, points in curves.items():
        pts = sorted((p["test_cost"], 100 * p["test_acc"]) for p in points)
        ax.plot(*zip(*pts, strict=True), marker="o", label=f"cascade, {scorer} (budget sweep)")
    for (name, b), marker in zip(base.items(), ("s", "D", "*"), strict=True):
        ax.scatter(b["test_cost"], 100 * b["test_acc"], marker=marker, s=80, zorder=3, label=name)
    ax.set_xlabel("mean cost per test query (x always-large; parameters x tokens)")
    ax.set_ylabel("test exact match (%)")
    ax.set_title("\n".join(textwrap.wrap(title, 100)), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def verdict(target: dict[str, Any], base: dict[str, dict[str, float]], n: int) -> str:
    large, tgt = base["always large"], target
    a, b = tgt["test_acc"], large["test_acc"]
    gap, margin = a - b, 1.96 * ((a * (1 - a) + b * (1 - b)) / n) ** 0.5  # unpaired 95% margin: conservative
    pct = lambda x: f"{100 * x:.1f}%"
    return (f"At the cheapest budget whose validation accuracy reaches always-large's ({tgt['budget']:g} x its "
            f"cost), the cascade scores {pct(a)} on the {n} test questions vs {pct(b)} for always-large "
            f"({100 * gap:+.1f} points, {'within' if abs(gap) <= margin else 'outside'} the 95% margin of "
            f"{100 * margin:.1f}) at {100 * tgt['test_cost'] / large['test_cost']:.0f}% of its cost, sending "
            f"{100 * tgt['escalated']:.0f}% of the questions to SmolLM2. Always-small: "
            f"{pct(base['always small']['test_acc'])} at {100 * base['always small']['test_cost']:.2f}% of the cost.")


def write_docs(args, info, tables_md: str, text: str, png: Path, extra: dict[str, Any]) -> Path:
    DOCS.mkdir(exist_ok=True)
    lines = ["# LLM cascade on 2-digit arithmetic: tiny model first, SmolLM2 when unsure", ""]
    if args.quick:
        lines += ["> **SMOKE RUN ONLY: these numbers are not results.** `--quick` trains a few steps on a few "
                  "questions only to check that everything runs; replace this page with the full run's output.", ""]
    lines += [f"Command: `{info['command']}`  ", f"Machine: {info['cpu']}, {info['cores']} cores, torch "
              f"{info['torch']}, {info['date']} (load average {info['load_avg_1min']})", "",
              "Cheap stage: a char-level Llama (" + f"{extra['small_params']:,} parameters) trained from scratch for "
              f"{args.small_steps} steps; expensive stage: SmolLM2-135M-Instruct ({extra['large_params']:,} "
              f"parameters) + LoRA r=8 on every linear layer, {args.large_steps} steps x batch 8 at lr "
              f"{LARGE_LR:g} (the best of bench/finetune_methods.py's rate search on this task's validation split), "
              "merged. Both see "
              "the same 2-digit + / - training questions and prompt format. Cost = parameters x (prompt + generated "
              "tokens). Thresholds are fitted on the validation set for each budget (best validation accuracy with "
              "mean cost <= budget, exhaustive over the observed scores); the scorer set fits the logistic scorer "
              "(mean / min log-prob and answer length); every reported accuracy is on the test set. Held-out "
              f"questions: scorer {args.n_scorer}, validation {args.n_val}, test {args.n_test}.", "",
              text, "", f"Real `Cascade.run` on the test set at that budget: {extra['real']['cascade_s']:.1f} s vs "
              f"{extra['real']['large_s']:.1f} s for always-large (ratio {extra['real']['ratio']:.2f}, measured in "
              f"the same run; both include the scoring forward); run == replay: {extra['real']['run_equals_replay']}.",
              "", tables_md, "", f"![cost vs accuracy]({png.name})", ""]
    path = DOCS / "cascade.md"
    path.write_text("\n".join(lines))
    return path


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--small-steps", type=int, default=None, help="training steps of the tiny model (default 4000)")
    p.add_argument("--small-layers", type=int, default=2)
    p.add_argument("--small-d", type=int, default=128)
    p.add_argument("--large-steps", type=int, default=None, help="LoRA steps of SmolLM2 (default 200)")
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--n-scorer", type=int, default=None)
    p.add_argument("--n-val", type=int, default=None)
    p.add_argument("--n-test", type=int, default=None)
    args = p.parse_args()
    q = args.quick
    args.small_steps = args.small_steps or (20 if q else 4000)
    args.large_steps = args.large_steps or (2 if q else 200)
    args.n_train = args.n_train or (200 if q else 4000)
    args.n_scorer, args.n_val, args.n_test = (args.n_scorer or (12 if q else 150), args.n_val or (12 if q else 200),
                                              args.n_test or (16 if q else 300))
    common.setup(args.threads)
    from groundup.generate import GenerationConfig
    from groundup.serve import Cascade, CascadeMember, CostModel, LogisticScorer, mean_logprob

    t_start = time.perf_counter()
    records = splits(args)
    with tempfile.TemporaryDirectory(prefix="cascade_") as tmp:
        small, stok, small_info = train_small(records, args, f"{tmp}/small")
        large, ltok, large_info = train_large(records, args, f"{tmp}/large")
    from groundup.data.instruct import DEFAULT_SEPARATOR

    gen = GenerationConfig(max_new_tokens=MAX_NEW, temperature=0)
    members = [CascadeMember(name, m, t, CostModel.per_parameter(m), gen, template="{query}" + DEFAULT_SEPARATOR)
               for name, m, t in (("tiny", small, stok), ("smollm2-lora", large, ltok))]
    cascade = Cascade(members, mean_logprob)
    t0 = time.perf_counter()
    sets = {name: answer_split(cascade, records[name], 16) for name in ("scorer", "val", "test")}
    answer_s = time.perf_counter() - t0
    large_cost = mean([a.cost for a in sets["val"]["answers"][1]])
    logistic = LogisticScorer.fit([a for row in sets["scorer"]["answers"] for a in row],
                                  [c for row in sets["scorer"]["correct"] for c in row])
    curves = {name: sweep(Cascade(members, scorer), sets["val"], sets["test"], large_cost)
              for name, scorer in (("mean log-prob", mean_logprob), ("logistic", logistic))}
    test_large_cost = mean([a.cost for a in sets["test"]["answers"][1]])
    for points in curves.values():  # report test costs relative to always-large on the test set itself
        for pt in points:
            pt["test_cost"] *= large_cost / test_large_cost
    base = baselines(sets["test"], test_large_cost)
    large_val_acc = mean(sets["val"]["correct"][1])
    best_scorer = max(curves, key=lambda s: pick_target(curves[s], large_val_acc)["val_acc"]
                      - pick_target(curves[s], large_val_acc)["val_cost"] * 1e-3)
    target = pick_target(curves[best_scorer], large_val_acc)
    scorer = logistic if best_scorer == "logistic" else mean_logprob
    real = real_run(Cascade(members, scorer), target, sets["test"], records["test"], 16)
    real["ratio"] = real["cascade_s"] / real["large_s"]
    title = (f"Cascade tiny -> SmolLM2-LoRA on 2-digit + / - ({args.n_test} test questions), thresholds fitted on "
             f"{args.n_val} validation questions" + (" [SMOKE RUN: not results]" if q else ""))
    table = common.show(title, HEADERS, rows_of(curves, base))
    text = f"Target ({best_scorer} scorer): " + verdict(target, base, args.n_test)
    print(text)
    print(f"real run: {real}")
    extra = {"small_params": sum(x.numel() for x in small.parameters()),
             "large_params": sum(x.numel() for x in large.parameters()), "real": real}
    info = common.machine_info()
    DOCS.mkdir(exist_ok=True)
    png = plot(curves, base, DOCS / "cascade.png", title)
    md = write_docs(args, info, common.table(table["headers"], table["rows"]), text, png, extra)
    path = common.write_results(common.result_name("cascade", args.tag), {title: table}, {
        "quick": q, "curves": curves, "baselines": base, "target": {"scorer": best_scorer, **target}, "real_run": real,
        "small": small_info, "large": large_info, "answer_all_s": answer_s, **extra,
        "wall_s": time.perf_counter() - t_start, "data": {**DATA, "n_train": args.n_train, "n_scorer": args.n_scorer,
                                                           "n_val": args.n_val, "n_test": args.n_test}})
    print(f"wrote {path}, {md}, {png} in {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
