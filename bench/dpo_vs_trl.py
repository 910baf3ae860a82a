"""A DPO training step: groundup (`align dpo`'s objective in the one loop) vs trl's DPOTrainer, same model, pairs
and batch.

SmolLM2-135M-Instruct (trl reads groundup's Hugging Face export of the same weights), LoRA r=8 alpha 16 on q,v,
beta 0.1, AdamW at 5e-4, 8 pairs a step from the human-rating pairs of `groundup data preferences`; the reference
is the model with its adapters disabled on both sides (trl's default for a PEFT model; no precomputing). trl runs
twice: as configured for groundup's precision (fp32, no activation checkpointing) and with its own defaults (bf16
autocast, activation checkpointing). Each configuration is a fresh process (`--measure NAME`): its step times are
the gaps between consecutive batch draws after 2 warm-up steps, its peak memory the process's VmHWM over the
steps (reset after loading). Two rounds, configurations alternating; the median step counts.

    python bench/dpo_vs_trl.py [--quick] [--threads N]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402
from memory import peak_rss_mb, reset_peak, window_peak_mb  # noqa: E402

MODEL, BATCH, LR, BETA = "smollm2-135m-instruct", 8, 5e-4, 0.1
CONFIGS = {"groundup": {}, "trl (fp32, no checkpointing)": {"bf16": False, "gradient_checkpointing": False},
           "trl (its defaults: bf16, checkpointing)": {}}
WARM = 2


def pairs(n: int) -> list[dict]:
    from groundup.data.ratings import human_ratings, rating_pairs

    return [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}
            for p in rating_pairs(human_ratings("movie"), n, 1.0, seed=0)]


class Clock:
    """Timestamps of each training step's start (our batch draws, trl's on_step_begin)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def tick(self) -> None:
        self.times.append(time.perf_counter())

    def steps(self) -> list[float]:
        return [b - a for a, b in zip(self.times[WARM:], self.times[WARM + 1:], strict=False)]


def run_groundup(records: list[dict], steps: int, out: str, clock: Clock) -> bool:
    import torch

    from groundup.align import DPOObjective
    from groundup.data.preference import Preference, PreferenceData
    from groundup.loading import load_pretrained
    from groundup.peft import LoraConfig, inject
    from groundup.train import TrainConfig, train

    model, tok = load_pretrained(MODEL)
    torch.manual_seed(0)
    model = inject(model, LoraConfig(r=8, alpha=16, target_modules=("q_proj", "v_proj")))
    data = PreferenceData([Preference(**r, line=i + 1) for i, r in enumerate(records)], tok, 2048)

    class Timed:
        def get_batch(self, *args):
            clock.tick()
            return data.get_batch(*args)

    window = reset_peak()
    train(model, DPOObjective(beta=BETA), Timed(), TrainConfig(
        out_dir=out, max_steps=steps, batch_size=BATCH, lr=LR, min_lr=LR, warmup_steps=0, weight_decay=0.0,
        eval_every=0, ckpt_every=0, log_every=steps, progress=False, dtype="fp32"))
    return window


def run_trl(records: list[dict], steps: int, out: str, clock: Clock, overrides: dict) -> bool:
    import peft
    import torch
    import transformers
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from groundup.interop import save_hf
    from groundup.loading import load_pretrained

    transformers.logging.set_verbosity_error()
    model, tok = load_pretrained(MODEL)
    hf_dir = save_hf(model, tok, Path(out) / "hf")
    del model
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    lora = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                           task_type="CAUSAL_LM")

    class Tick(transformers.TrainerCallback):
        def on_step_begin(self, *args, **kwargs):
            clock.tick()

    args = DPOConfig(output_dir=str(Path(out) / "trl"), per_device_train_batch_size=BATCH, learning_rate=LR,
                     lr_scheduler_type="constant", beta=BETA, max_steps=steps, max_length=None, report_to=[],
                     use_cpu=True, save_strategy="no", logging_steps=steps, weight_decay=0.0, **overrides)
    trainer = DPOTrainer(model=hf, args=args, train_dataset=Dataset.from_list(records),
                         processing_class=transformers.AutoTokenizer.from_pretrained(hf_dir), peft_config=lora,
                         callbacks=[Tick()])
    ok = reset_peak()
    trainer.train()
    return ok


def measure(name: str, args) -> None:
    common.setup(args.threads)
    records = pairs(256)
    steps = WARM + (3 if args.quick else 8) + 1
    clock = Clock()
    with tempfile.TemporaryDirectory() as out:
        load_mb = peak_rss_mb()
        if name == "groundup":
            window = run_groundup(records, steps, out, clock)
        else:
            window = run_trl(records, steps, out, clock, CONFIGS[name])
    common.report_measure({"steps_s": clock.steps(), "load_mb": load_mb,
                           "steps_peak_mb": window_peak_mb() if window else None})


def main() -> None:
    args = common.measure_parser(__doc__.splitlines()[0]).parse_args()
    if args.measure:
        return measure(args.measure, args)
    common.setup(args.threads)
    from groundup.data.preference import Preference, PreferenceData
    from groundup.loading import load_tokenizer_of

    tok = load_tokenizer_of(MODEL)
    records = pairs(256)
    data = PreferenceData([Preference(**r, line=i + 1) for i, r in enumerate(records)], tok, 2048)
    tokens_per_pair = statistics.fmean(len(s[0]) - 1 for sides, _ in data.rows for s in sides) * 2
    runs: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    for _ in range(1 if args.quick else 2):
        for name in CONFIGS:
            cmd = [sys.executable, __file__, "--measure", name, "--threads", str(args.threads)]
            runs[name].append(common.run_measure(cmd + (["--quick"] if args.quick else [])))
            print(name, runs[name][-1], flush=True)
    rows, ours = [], None
    for name, got in runs.items():
        step = statistics.median(s for r in got for s in r["steps_s"])
        peak = max(r["steps_peak_mb"] or 0 for r in got)
        ours = ours or (step, peak)
        rows.append([name, step, BATCH / step, BATCH * tokens_per_pair / step, peak, step / ours[0], peak / ours[1]])
    table = common.show(f"DPO step, SmolLM2-135M + LoRA r=8 q,v, {BATCH} pairs ({tokens_per_pair:.0f} real tokens a "
                        "pair, chosen + rejected)",
                        ["configuration", "s/step", "pairs/s", "tokens/s", "peak MB (steps)",
                         "groundup speed-up", "groundup memory ratio (theirs / ours)"], rows)
    common.write_results(common.result_name("dpo_vs_trl", args.tag), {"dpo_step": table}, {"runs": runs})


if __name__ == "__main__":
    main()
