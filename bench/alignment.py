"""Alignment on SmolLM2-135M-Instruct: a reward model from human ratings, PPO and DPO toward it, GRPO on arithmetic.

    data    `groundup data preferences`: VADER's movie-review snippets rated by people (-4..+4); pairs with a
            rating gap >= 1 (the higher-rated preferred), train and test pairs from disjoint snippets; PPO prompts
            are the first 4 words of training snippets, held-out prompts those of test snippets
    reward  `align reward` (LoRA r=8 q,v + a scalar head): accuracy on the held-out pairs (chance: 50%)
    ppo     `align ppo` ("continue this review" toward the reward model, LoRA, KL to the adapters-off model):
            the reward model's mean score and the KL of responses sampled for held-out prompts, before (the
            instruct model, i.e. the SFT model) and after
    dpo     `align dpo` on the same pairs: implicit-reward accuracy on the held-out pairs, and the reward model's
            score (and KL) of its responses to the held-out prompts
    grpo    `align grpo` on the arithmetic task of docs/finetune_methods.md (same generator, same 200 test
            questions): from the instruct model, and after LoRA SFT (the page's LoRA r=8 q,v recipe, rerun here)

Every stage is the library call its CLI command makes (groundup.apps.align), so the numbers are the commands'.

    python bench/alignment.py [--quick] [--threads N] [--from-results]   # the last: rewrite the page only
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402

from groundup.align.evaluate import sampled_scores  # noqa: E402
from groundup.apps.align import align_dpo, align_grpo, align_ppo, align_reward  # noqa: E402
from groundup.apps.data import preferences_cli  # noqa: E402
from groundup.data.arithmetic import make_arithmetic_splits  # noqa: E402
from groundup.data.instruct_jsonl import write_jsonl  # noqa: E402
from groundup.data.preference import load_prompts  # noqa: E402
from groundup.finetune import FinetuneJob, MergeJob, PeftOptions, finetune, merge_adapter  # noqa: E402
from groundup.jobs.align import DPOJob, GRPOJob, PPOJob, PreferencesJob, RewardJob, RLOptions  # noqa: E402
from groundup.loading import load_pretrained  # noqa: E402
from groundup.train import TrainConfig  # noqa: E402
from groundup.train.metrics import read_metrics  # noqa: E402

MODEL = "smollm2-135m-instruct"
DOCS = Path(__file__).resolve().parents[1] / "docs"
ARITHMETIC = dict(seed=0, ops=("+", "-"), max_digits=2, styles=("question", "equation"))  # finetune_methods.py's
NEW_TOKENS = 16  # a PPO / DPO response: up to 16 tokens after the 4-word opening


def cfg(steps: int, batch: int, lr: float, **kw) -> TrainConfig:
    return TrainConfig(max_steps=steps, batch_size=batch, lr=lr, min_lr=kw.pop("min_lr", lr / 10),
                       warmup_steps=kw.pop("warmup_steps", max(1, steps // 10)), eval_every=0, ckpt_every=0,
                       progress=False, log_every=kw.pop("log_every", 5), **kw)


def timed(fn, job):
    t0 = time.perf_counter()
    out = fn(job)
    return out, time.perf_counter() - t0


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--from-results", action="store_true", help="rewrite the table and page from the last results")
    args = p.parse_args()
    if args.from_results:
        path = common.RESULTS / f"{common.result_name('alignment', args.tag)}.json"
        payload = json.loads(path.read_text())
        payload["tables"] = {"alignment": summary_table(payload["alignment"])}
        path.write_text(json.dumps(payload, indent=2) + "\n")
        return write_page(payload["alignment"], payload["curves"], payload["machine"])
    common.setup(args.threads)
    q = args.quick
    root = Path(tempfile.mkdtemp(prefix="align-bench-"))
    prefs = root / "prefs"
    preferences_cli(PreferencesJob(out_dir=str(prefs), n_train=200 if q else 4000, n_test=20 if q else 500))
    held_prompts = [p for _, p in load_prompts(prefs / "prompts_test.jsonl")][: 8 if q else 128]
    res: dict = {"command": common.machine_info()["command"]}

    rm, s = timed(align_reward, RewardJob(model=MODEL, data=str(prefs / "train.jsonl"),
                                          eval_data=str(prefs / "test.jsonl"), out_dir=str(root / "rm"),
                                          train=cfg(4 if q else 200, 8, 5e-4)))
    res["reward"] = {"accuracy": rm["accuracy"], "n_test": 20 if q else 500, "seconds": s, "steps": rm["result"].step}
    reward_dir = str(rm["reward_model"])
    del rm

    ppo_train = cfg(8 if q else 160, 16, 2e-4, min_lr=2e-4, warmup_steps=1, log_every=4)
    ppo, s = timed(align_ppo, PPOJob(model=MODEL, prompts=str(prefs / "prompts.jsonl"), reward_model=reward_dir,
                                     out_dir=str(root / "ppo"), rollout_size=32 if q else 64, epochs=4,
                                     rl=RLOptions(max_new_tokens=NEW_TOKENS), train=ppo_train))
    scorer, tok = ppo["scorer"], ppo["tokenizer"]
    sft, _ = load_pretrained(MODEL)
    before = sampled_scores(sft, tok, held_prompts, scorer, NEW_TOKENS, reference=sft)
    after = sampled_scores(ppo["model"], tok, held_prompts, scorer, NEW_TOKENS)
    res["ppo"] = {"sft": before, "ppo": after, "rollouts": ppo["rollouts"], "seconds": s, "steps": ppo["result"].step,
                  "examples": examples(ppo["model"], tok, held_prompts[:4])}
    del ppo

    dpo, s = timed(align_dpo, DPOJob(model=MODEL, data=str(prefs / "train.jsonl"), eval_data=str(prefs / "test.jsonl"),
                                     out_dir=str(root / "dpo"), beta=0.1, train=cfg(4 if q else 200, 8, 5e-4)))
    res["dpo"] = {"reward_accuracy": dpo["reward_accuracy"], "reward_margin": dpo["reward_margin"], "seconds": s,
                  "generations": sampled_scores(dpo["model"], tok, held_prompts, scorer, NEW_TOKENS),
                  "examples": examples(dpo["model"], tok, held_prompts[:4])}
    del dpo

    arith = root / "arith"
    train_q, test_q = make_arithmetic_splits(200 if q else 4000, 16 if q else 200, **ARITHMETIC)
    write_jsonl(arith / "train.jsonl", train_q)
    write_jsonl(arith / "test.jsonl", test_q)
    grpo_steps = 4 if q else 100

    def grpo(model: str, out: str) -> dict:
        job = GRPOJob(model=model, data=str(arith / "train.jsonl"), eval_data=str(arith / "test.jsonl"),
                      out_dir=str(root / out), group_size=8, train=cfg(grpo_steps, 32, 5e-4))
        out, s = timed(align_grpo, job)
        rows = read_metrics(root / job.out_dir / "metrics.csv")
        return {"exact_match": out["exact_match"], "seconds": s, "reward_first": rows[0]["reward"],
                "reward_last": rows[-1]["reward"]}

    res["grpo_base"] = grpo(MODEL, "grpo-base")
    sft_job = FinetuneJob(model=MODEL, method="lora", peft=PeftOptions(r=8, target_modules=["q_proj", "v_proj"]),
                          out_dir=str(root / "sft"), eval_data=str(arith / "test.jsonl"), eval_max_new_tokens=8,
                          train=cfg(4 if q else 100, 8, 5e-3))
    sft_job.data.path = str(arith / "train.jsonl")
    sft_out, s = timed(finetune, sft_job)
    res["sft"] = {"exact_match": sft_out.exact_match, "seconds": s}
    merge_adapter(MergeJob(model=MODEL, adapter=str(sft_out.adapter), out=str(root / "sft-merged")))
    res["grpo_sft"] = grpo(str(root / "sft-merged"), "grpo-sft")
    res["n_arith_test"] = len(test_q)

    curves = {k: read_metrics(root / k / "metrics.csv") for k in ("rm", "ppo", "dpo", "grpo-base", "grpo-sft")}
    name = common.result_name("alignment", args.tag)
    common.write_results(name, {"alignment": summary_table(res)}, {"alignment": res, "curves": curves, "quick": q})
    if not q:
        write_page(res, curves, common.machine_info())
    print(json.dumps(res, indent=2, default=str))
    shutil.rmtree(root, ignore_errors=True)


def summary_table(res: dict) -> dict:
    p, d = res["ppo"], res["dpo"]
    rows = [["reward model: held-out pair accuracy", f"{res['reward']['accuracy']:.1%}", "chance 50%"],
            ["PPO: reward-model score of sampled responses", f"{p['ppo']['score']:.3f}",
             f"instruct model {p['sft']['score']:.3f}; KL {p['ppo']['kl']:.2f} nats"],
            ["DPO: implicit-reward accuracy, held-out pairs", f"{d['reward_accuracy']:.1%}", "chance 50%"],
            ["DPO: reward-model score of sampled responses", f"{d['generations']['score']:.3f}",
             f"KL {d['generations']['kl']:.2f} nats"],
            ["GRPO from the instruct model: exact match", f"{res['grpo_base']['exact_match']:.1%}", "zero-shot 0.5%"],
            ["LoRA SFT (rerun here): exact match", f"{res['sft']['exact_match']:.1%}", "finetune_methods.md 20.2%"],
            ["GRPO after that SFT: exact match", f"{res['grpo_sft']['exact_match']:.1%}", ""]]
    return common.show("Alignment on SmolLM2-135M-Instruct (docs/alignment.md)", ["measure", "value", "against"], rows)


def verdicts(res: dict) -> list[str]:
    """Plain sentences from the numbers (a 95% margin on a proportion of n: 1.96 sqrt(p (1 - p) / n))."""
    n = res["n_arith_test"]
    margin = lambda p: 1.96 * (p * (1 - p) / n) ** 0.5  # noqa: E731
    p, d, base, sft, after = res["ppo"], res["dpo"], res["grpo_base"], res["sft"], res["grpo_sft"]
    out = [f"- PPO {'raised' if p['ppo']['score'] > p['sft']['score'] else 'did not raise'} the reward model's score "
           f"of held-out responses ({p['sft']['score']:.3f} -> {p['ppo']['score']:.3f}) at a KL of "
           f"{p['ppo']['kl']:.2f} nats to the instruct model (the controller's target: 6)."]
    better = "higher" if d["generations"]["score"] > p["ppo"]["score"] else "lower"
    out.append(f"- DPO, which never sees the reward model, scores {better} than PPO by it "
               f"({d['generations']['score']:.3f} vs {p['ppo']['score']:.3f}) at a KL of {d['generations']['kl']:.2f}; "
               f"its implicit reward orders {d['reward_accuracy']:.1%} of the held-out pairs, the reward model "
               f"{res['reward']['accuracy']:.1%}.")
    if base["reward_last"] < 0.02:
        out.append(f"- GRPO from the instruct model fails here: it answers {base['reward_first']:.1%} of its samples "
                   "right, so almost every group of 8 scores all zero, its group-relative advantages are zero and "
                   f"there is nothing to learn from (exact match {base['exact_match']:.1%}). Group-relative RL needs "
                   "a policy that is sometimes right: supervised fine-tuning first.")
    gap = after["exact_match"] - sft["exact_match"]
    within = abs(gap) <= max(margin(after["exact_match"]), margin(sft["exact_match"]))
    out.append(f"- GRPO after SFT: {sft['exact_match']:.1%} -> {after['exact_match']:.1%} exact match "
               f"({'within' if within else 'beyond'} the test sampling margin of about "
               f"±{100 * margin(sft['exact_match']):.0f} points on {n} questions).")
    return out


def examples(policy, tok, prompts: list[str]) -> list[str]:
    from groundup.generate import GenerationConfig, generate_text

    outs = generate_text(policy.eval(), tok, prompts, GenerationConfig(max_new_tokens=NEW_TOKENS, temperature=0.0))
    return [p + o for p, o in zip(prompts, outs, strict=True)]


def write_page(res: dict, curves: dict, machine: dict) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 7))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    panels = ((axes[0, 0], "rm", "accuracy", "reward model: train-batch accuracy"),
              (axes[0, 1], "dpo", "reward_accuracy", "DPO: implicit-reward accuracy (train batches)"),
              (axes[1, 0], "ppo", "score", "PPO: reward-model score of rollouts"),
              (axes[1, 1], "grpo-sft", "reward", "GRPO after SFT: exact-match reward of samples"))
    for ax, run, key, title in panels:
        rows = [r for r in curves[run] if r.get(key) is not None]
        ax.plot([r["step"] for r in rows], [r[key] for r in rows], label=key)
        second = {"ppo": "kl", "grpo-sft": "kl"}.get(run)
        if second:
            twin = ax.twinx()
            twin.plot([r["step"] for r in rows], [r[second] for r in rows], "r--", label=second)
            twin.set_ylabel(second, color="r")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(DOCS / "alignment.png", dpi=100)
    r, p, d = res["reward"], res["ppo"], res["dpo"]
    n = res["n_arith_test"]
    lines = [
        "# Alignment on SmolLM2-135M-Instruct",
        "",
        f"`{res['command']}` on {machine['date']}, {machine['cpu']} ({machine['cores']} cores, no GPU); every "
        "stage is the library call of its `groundup align` command (the minutes below are wall time on those 2 "
        "cores, which other work shared for part of the run). Preference data: `groundup data preferences` "
        "(VADER's movie-review snippets rated by people, pairs with a rating gap of at least 1, train and test "
        "pairs from disjoint snippets). LoRA r=8 on q,v everywhere; the reference is the model with its adapters "
        "disabled.",
        "",
        "![curves](alignment.png)",
        "",
        "## Reward model",
        "",
        f"Held-out pair accuracy **{r['accuracy']:.1%}** on {r['n_test']} test pairs (chance 50%), after "
        f"{r['steps']} steps of 8 pairs ({r['seconds'] / 60:.1f} min).",
        "",
        "## PPO and DPO, scored by the reward model",
        "",
        "Responses of up to 16 tokens sampled (temperature 1) for 128 held-out prompts (the first 4 words of test "
        "snippets); score = the reward model's mean, KL = k1 to the instruct model, summed over the response.",
        "",
        "| model | reward-model score | KL to the instruct model (nats) |",
        "|---|---:|---:|",
        f"| instruct (the SFT model) | {p['sft']['score']:.3f} | 0 |",
        f"| PPO ({p['steps']} steps, {len(p['rollouts'])} rollouts) | {p['ppo']['score']:.3f} | {p['ppo']['kl']:.3f} |",
        f"| DPO (200 steps, beta 0.1) | {d['generations']['score']:.3f} | {d['generations']['kl']:.3f} |",
        "",
        f"PPO's rollouts: score {p['rollouts'][0]['score']:.3f} -> {p['rollouts'][-1]['score']:.3f}, KL "
        f"{p['rollouts'][0]['kl']:.3f} -> {p['rollouts'][-1]['kl']:.3f} (target 6, coefficient "
        f"{p['rollouts'][0]['kl_coef']:.3g} -> {p['rollouts'][-1]['kl_coef']:.3g}); {p['seconds'] / 60:.1f} min.",
        f"DPO's implicit-reward accuracy on the {r['n_test']} held-out pairs: **{d['reward_accuracy']:.1%}** "
        f"(margin {d['reward_margin']:.3f}); {d['seconds'] / 60:.1f} min.",
        "",
        "Greedy continuations of held-out openings:",
        "",
        *[f"- PPO: {json.dumps(x)}" for x in p["examples"]],
        *[f"- DPO: {json.dumps(x)}" for x in d["examples"]],
        "",
        "## GRPO on arithmetic (exact match)",
        "",
        f"The task of [finetune_methods.md](finetune_methods.md): same generator, same {n} test questions; GRPO: "
        "8 samples per question, 4 questions a step, 100 steps, reward = exact match, KL coefficient 0.04.",
        "",
        "| model | exact match |",
        "|---|---:|",
        f"| GRPO from the instruct model | {res['grpo_base']['exact_match']:.1%} |",
        f"| LoRA SFT (r=8 q,v, 5e-3, 100 x 8; rerun here) | {res['sft']['exact_match']:.1%} |",
        f"| GRPO after that SFT | {res['grpo_sft']['exact_match']:.1%} |",
        "| LoRA SFT on finetune_methods.md (mean of 3 seeds) | 20.2% |",
        "",
        f"Sample reward during GRPO: from the instruct model {res['grpo_base']['reward_first']:.3f} -> "
        f"{res['grpo_base']['reward_last']:.3f}; after SFT {res['grpo_sft']['reward_first']:.3f} -> "
        f"{res['grpo_sft']['reward_last']:.3f}.",
        "",
        "## What this shows, and where a method fails at this scale",
        "",
        *verdicts(res),
        "",
    ]
    (DOCS / "alignment.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
