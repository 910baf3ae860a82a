"""A PPO iteration (one rollout + its update epochs): groundup (`align ppo`'s PPORollouts and objective in the one
loop) vs trl's PPOTrainer, and the share of each spent generating.

trl's PPO trainer left trl's main package (trl 1.16 has none); trl 0.26.0 still carries it in trl.experimental.ppo
and runs here against the same transformers: it is installed apart (`pip install --no-deps --target
.venv/anchors/trl-0.26 trl==0.26.0`, done by this script when missing) and read only by this script's anchor process.

Same work on both sides: SmolLM2-135M-Instruct (trl reads groundup's Hugging Face export of the same weights), LoRA
r=8 alpha 16 on q,v (the reference: adapters disabled), a rollout of 64 responses of up to 16 tokens sampled for the
4-word openings of `groundup data preferences`, scored by a reward model of the same size (groundup: a RewardModel
of the base; trl: AutoModelForSequenceClassification of the same weights), 4 epochs of minibatches of 16, fp32.
One difference is each library's design and stays: groundup's value head shares the policy's trunk (ActorCritic);
trl's PPO trains a separate value model (a second trunk). Each side runs in a fresh process, 3 iterations; the first
is warm-up, the median of the other two counts.

    python bench/ppo_vs_trl.py [--quick] [--threads N]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402
from memory import reset_peak, window_peak_mb  # noqa: E402

MODEL, ROLLOUT, MINIBATCH, EPOCHS, NEW = "smollm2-135m-instruct", 64, 16, 4, 16
ANCHOR = Path(__file__).resolve().parents[1] / ".venv" / "anchors" / "trl-0.26"


def prompts(n: int) -> list[str]:
    from groundup.data.ratings import human_ratings

    return [" ".join(t.split()[:4]) for _, t in human_ratings("movie") if len(t.split()) > 4][:n]


class Timer:
    def __init__(self) -> None:
        self.marks: list[float] = []  # each iteration's start
        self.generating: list[float] = []  # seconds in generation, per iteration

    def wrap(self, fn):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            self.generating.append(time.perf_counter() - t0)
            return out
        return timed


def run_groundup(iterations: int, timer: Timer) -> bool:
    import torch

    import groundup.align.ppo as ppo
    from groundup.align import ActorCritic, PPOConfig, PPORollouts, RewardModel, ppo_objective
    from groundup.align.reward import RewardScorer
    from groundup.loading import load_pretrained
    from groundup.peft import LoraConfig, inject
    from groundup.train import TrainConfig, train

    policy, tok = load_pretrained(MODEL)
    scorer_trunk, _ = load_pretrained(MODEL)
    torch.manual_seed(0)
    model = ActorCritic(inject(policy, LoraConfig(r=8, alpha=16, target_modules=("q_proj", "v_proj"))))
    scorer = RewardScorer(RewardModel(scorer_trunk), tok, prompted=False)
    cfg = PPOConfig(rollout_size=ROLLOUT, epochs=EPOCHS, max_new_tokens=NEW)
    ppo.generate = timer.wrap(ppo.generate)
    data = PPORollouts(model, tok, prompts(512), scorer, cfg)
    rollout = data._rollout

    def marked(generator):
        timer.marks.append(time.perf_counter())
        return rollout(generator)

    data._rollout = marked
    window = reset_peak()
    steps = iterations * EPOCHS * ROLLOUT // MINIBATCH
    with tempfile.TemporaryDirectory() as out:
        train(model, ppo_objective(), data, TrainConfig(out_dir=out, max_steps=steps, batch_size=MINIBATCH, lr=1e-4,
                                                        warmup_steps=0, eval_every=0, ckpt_every=0, log_every=steps,
                                                        progress=False, dtype="fp32"))
    timer.marks.append(time.perf_counter())
    return window


def run_trl(iterations: int, timer: Timer) -> bool:
    sys.path.insert(0, str(ANCHOR))
    import peft
    import torch
    import transformers
    import trl.experimental.ppo.ppo_trainer as trainer_module
    from datasets import Dataset
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    from groundup.interop import save_hf
    from groundup.loading import load_pretrained

    assert trainer_module.__file__.startswith(str(ANCHOR)), trainer_module.__file__
    transformers.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as out:
        model, tok = load_pretrained(MODEL)
        hf_dir = save_hf(model, tok, Path(out) / "hf")
        del model
        load = lambda cls, **kw: cls.from_pretrained(hf_dir, dtype=torch.float32, **kw)  # noqa: E731
        policy = load(transformers.AutoModelForCausalLM)
        reward = load(transformers.AutoModelForSequenceClassification, num_labels=1)
        value = load(transformers.AutoModelForSequenceClassification, num_labels=1)
        htok = transformers.AutoTokenizer.from_pretrained(hf_dir, padding_side="left")
        for m in (policy, reward, value):
            m.config.pad_token_id = htok.pad_token_id
        data = Dataset.from_list([{"input_ids": htok(p)["input_ids"]} for p in prompts(512)])

        class Mark(transformers.TrainerCallback):
            def on_step_end(self, *args, **kwargs):
                timer.marks.append(time.perf_counter())

        args = PPOConfig(output_dir=str(Path(out) / "trl"), per_device_train_batch_size=ROLLOUT,
                         num_mini_batches=ROLLOUT // MINIBATCH, num_ppo_epochs=EPOCHS, response_length=NEW,
                         total_episodes=ROLLOUT * iterations, learning_rate=1e-4, report_to=[], use_cpu=True,
                         bf16=False, save_strategy="no", num_sample_generations=0, stop_token="eos",
                         missing_eos_penalty=1.0, local_rollout_forward_batch_size=ROLLOUT)
        trainer_module.batch_generation = timer.wrap(trainer_module.batch_generation)
        trainer = PPOTrainer(args=args, processing_class=htok, model=policy, ref_model=None, reward_model=reward,
                             value_model=value, train_dataset=data, peft_config=peft.LoraConfig(
                                 r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                                 task_type="CAUSAL_LM"), callbacks=[Mark()])
        window = reset_peak()
        timer.marks.append(time.perf_counter())
        trainer.train()
    return window


def measure(side: str, args) -> None:
    common.setup(args.threads)
    timer = Timer()
    iterations = 2 if args.quick else 3
    window = (run_groundup if side == "groundup" else run_trl)(iterations, timer)
    spans = [b - a for a, b in zip(timer.marks, timer.marks[1:], strict=False)][:iterations]
    common.report_measure({"iteration_s": spans, "generate_s": timer.generating[:iterations],
                           "steps_peak_mb": window_peak_mb() if window else None})


def main() -> None:
    args = common.measure_parser(__doc__.splitlines()[0]).parse_args()
    if args.measure:
        return measure(args.measure, args)
    if not ANCHOR.is_dir():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(ANCHOR),
                        "trl==0.26.0"], check=True)
    runs = {}
    for side in ("groundup", "trl 0.26 PPOTrainer"):
        cmd = [sys.executable, __file__, "--measure", side.split()[0], "--threads", str(args.threads)]
        runs[side] = common.run_measure(cmd + (["--quick"] if args.quick else []))
        print(side, runs[side], flush=True)
    rows = []
    ours = None
    for side, r in runs.items():
        it = statistics.median(r["iteration_s"][1:] or r["iteration_s"])
        gen = statistics.median(r["generate_s"][1:] or r["generate_s"])
        ours = ours or it
        rows.append([side, it, gen, gen / it, r["steps_peak_mb"], it / ours])
    table = common.show(f"PPO iteration: rollout of {ROLLOUT} x {NEW} tokens + {EPOCHS} epochs of minibatches of "
                        f"{MINIBATCH}, SmolLM2-135M + LoRA r=8 q,v",
                        ["side", "s/iteration", "s generating", "generating share", "peak MB", "groundup speed-up"],
                        rows)
    common.write_results(common.result_name("ppo_vs_trl", args.tag), {"ppo_iteration": table}, {"runs": runs})


if __name__ == "__main__":
    main()
