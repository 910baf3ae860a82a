"""Flamingo vs LLaVA on SmolLM2-135M-Instruct: two ways to let a frozen LM see through a frozen DINOv2-S.

Data: `groundup data vlm` (emoji and Fashion-MNIST questions, LLaVA JSON; train and test on disjoint images). A
validation split of train images (their records out of training) picks each method's learning rate.

    search   each rate of its grid (three, a factor 3 apart) trains once (seed 1) and is scored on the
             validation questions; the same budget (steps, batch) for both methods
    final    the best rate's search run is seed 1, seed 2 trains at that rate; both scored on the test split:
             answer exact match (greedy, per question type), the answers' perplexity against the text-only LM
             (the frozen base, shown the question without the image), and 0-shot vs 2-shot with interleaved images

Both connectors have about the same number of trainable parameters: LLaVA's projector width is chosen to match
Flamingo's resampler + gated cross-attention blocks.

    python bench/vlm.py [--quick] [--steps N] [--image-size PX] [--n-test N]
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import vlm_report  # noqa: E402

from groundup.config import VisionLMConfig  # noqa: E402
from groundup.data.arithmetic import exact_match  # noqa: E402
from groundup.data.vlm import VLMData, VLMExample, load_llava_json  # noqa: E402
from groundup.data.vlm_tasks import COLOUR, write_vlm_task  # noqa: E402
from groundup.generate import GenerationConfig  # noqa: E402
from groundup.models.flamingo import IMAGE_TOKEN, VisionLM  # noqa: E402
from groundup.peft import count_parameters  # noqa: E402
from groundup.train import TrainConfig, train  # noqa: E402
from groundup.train.objectives import causal_lm  # noqa: E402
from groundup.vlm import answer, build_vision_lm, questions  # noqa: E402

MODEL, VISION = "smollm2-135m-instruct", "dinov2-vits14"
FLAMINGO = VisionLMConfig(kind="flamingo", cross_every=10, n_latents=16, resampler_depth=1, ff_mult=2)
RATES = {"flamingo": (1e-4, 3e-4, 1e-3), "llava": (3e-4, 1e-3, 3e-3)}
SEEDS = (1, 2)
FEATURES: dict[str, torch.Tensor] = {}  # DINOv2's features by image path: every run shares the frozen encoder


def kind_of(ex: VLMExample) -> str:
    question = ex.messages[0]["content"]
    if COLOUR in question:
        return "emoji colour"
    return "fashion" if "fashion" in str(ex.images[0]) else "emoji object"


def split_val(examples: list[VLMExample], n_images: int, seed: int = 0) -> tuple[list[VLMExample], list[VLMExample]]:
    """(train, val): val holds every record of n_images training images, so no validation image is trained on."""
    images = sorted({ex.images[0] for ex in examples})
    held = set(np.random.default_rng(seed).permutation(images)[:n_images].tolist())
    return [ex for ex in examples if ex.images[0] not in held], [ex for ex in examples if ex.images[0] in held]


def shots(ex: VLMExample, pool: list[VLMExample], k: int, rng: np.random.Generator) -> VLMExample:
    """ex with k solved examples of the same question type before it, each with its image (interleaved)."""
    same = [p for p in pool if kind_of(p) == kind_of(ex)]
    picked = [same[i] for i in rng.choice(len(same), k, replace=False)] if k else []
    messages = [m for p in picked for m in p.messages] + list(ex.messages)
    return dataclasses.replace(ex, images=tuple(i for p in picked for i in p.images) + ex.images,
                               messages=tuple(messages))


def exact(model: VisionLM, tok, asked: list[tuple[VLMExample, str]], kinds: list[str]) -> dict[str, float]:
    """Exact match overall and per question type (kinds: each question's)."""
    replies = answer(model.eval(), tok, [q for q, _ in asked],
                     GenerationConfig(max_new_tokens=12, temperature=0.0, stop=("<|im_end|>",)), known=FEATURES)
    right = [exact_match(r.split("<|im_end|>")[0], a) for r, (_, a) in zip(replies, asked, strict=True)]
    out = {"all": statistics.fmean(right)}
    for kind in sorted(set(kinds)):
        out[kind] = statistics.fmean(r for r, k in zip(right, kinds, strict=True) if k == kind)
    return out


@torch.no_grad()
def answer_nll(model: VisionLM, data: VLMData, batch: int = 16) -> float:
    """Mean negative log-likelihood per answer token (teacher forcing; perplexity = exp of it)."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(data.rows), batch):
        b = data.batch(list(range(i, min(i + batch, len(data.rows)))))
        n = int((b["labels"] != -100).sum())
        total += float(causal_lm(model, b)[0]) * n
        count += n
    return total / count


def text_only(examples: list[VLMExample]) -> list[VLMExample]:
    return [dataclasses.replace(ex, images=(), messages=tuple(
        {**m, "content": m["content"].replace(IMAGE_TOKEN + "\n", "")} for m in ex.messages)) for ex in examples]


def train_run(kind: str, lr: float, seed: int, args, data: dict[str, list[VLMExample]], cfg: VisionLMConfig
              ) -> tuple[dict[str, Any], VisionLM, Any]:
    """Train one connector; (record with its validation exact match, the model, its tokenizer)."""
    torch.manual_seed(seed)
    model, tok = build_vision_lm(MODEL, VISION, dataclasses.replace(cfg, kind=kind))
    t0 = time.perf_counter()
    train_data = VLMData(data["train"], tok, model, model.config.block_size, 0.0, seed, known=FEATURES)
    features_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as out:
        tc = TrainConfig(out_dir=out, max_steps=args.steps, batch_size=8, lr=lr, min_lr=lr / 10,
                         warmup_steps=max(1, args.steps // 10), eval_every=0, ckpt_every=0, log_every=25,
                         progress=False, seed=seed, dtype="fp32")
        t0 = time.perf_counter()
        result = train(model, "causal_lm", train_data, tc, tokenizer=tok)
        train_s = time.perf_counter() - t0
    tail = result.losses[-max(1, len(result.losses) // 10):]
    rec = {"kind": kind, "lr": lr, "seed": seed, "trainable": count_parameters(model)[0], "train_s": train_s,
           "s_per_step": train_s / args.steps, "features_s": features_s, "loss_last": statistics.fmean(tail),
           "val": exact(model, tok, questions(data["val"]), [kind_of(ex) for ex in data["val"]])["all"]}
    print(f"{kind} lr={lr:g} seed={seed}: " + json.dumps(rec), flush=True)
    return rec, model, tok


def test_scores(rec: dict[str, Any], model: VisionLM, tok, data: dict[str, list[VLMExample]]) -> dict[str, Any]:
    """rec with the test split's exact match (per type), 2-shot exact match and answer perplexity."""
    asked, kinds = questions(data["test"]), [kind_of(ex) for ex in data["test"]]
    rng = np.random.default_rng(rec["seed"])
    rec = {**rec, "test": exact(model, tok, asked, kinds),
           "two_shot": exact(model, tok, [(shots(q, data["train"], 2, rng), a) for q, a in asked], kinds)["all"],
           "nll": answer_nll(model, VLMData(data["test"], tok, model, model.config.block_size, known=FEATURES))}
    print(f"{rec['kind']} test seed={rec['seed']}: " + json.dumps({k: rec[k] for k in ("test", "two_shot", "nll")}),
          flush=True)
    return rec


def matched(args) -> dict[str, VisionLMConfig]:
    """Flamingo's connector, and a LLaVA projector of about as many trainable parameters."""
    flamingo = dataclasses.replace(FLAMINGO, image_size=args.image_size)
    model, _ = build_vision_lm(MODEL, VISION, flamingo)
    n = count_parameters(model)[0]
    vision, width = model.vlm_config.vision_dim, model.config.d_model
    hidden = max(1, round((n - width) / (vision + 1 + width)))  # Linear(v, h) + GELU + Linear(h, d)
    return {"flamingo": flamingo, "llava": VisionLMConfig(kind="llava", image_size=args.image_size,
                                                          projector_hidden=hidden, pool=2)}


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 100)")
    p.add_argument("--image-size", type=int, default=112, help="pixels per side DINOv2 reads (default 112)")
    p.add_argument("--n-test", type=int, default=None, help="test questions (default: all)")
    args = p.parse_args()
    args.steps = args.steps or (3 if args.quick else 100)
    common.setup(args.threads)
    command = common.machine_info()["command"]
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as root:
        write_vlm_task(root, fashion_train_per_class=10 if args.quick else 100,
                       fashion_test_per_class=2 if args.quick else 20)
        train_all = load_llava_json(Path(root) / "train.json")
        test = load_llava_json(Path(root) / "test.json")
        n_test = 12 if args.quick else args.n_test
        train_ex, val = split_val(train_all[:200] if args.quick else train_all, 8 if args.quick else 120)
        data = {"train": train_ex, "val": val, "test": test[:n_test] if n_test else test}
        configs = matched(args)
        search, final = {}, {}
        for k, cfg in configs.items():
            runs = [train_run(k, lr, SEEDS[0], args, data, cfg) for lr in RATES[k]]
            search[k] = [r for r, _, _ in runs]
            best, model, tok = max(runs, key=lambda run: (run[0]["val"], -run[0]["loss_last"]))
            del runs
            final[k] = [test_scores(best, model, tok, data)]  # the chosen rate's search run is seed 1
            for seed in SEEDS[1:]:
                final[k].append(test_scores(*train_run(k, best["lr"], seed, args, data, cfg), data))
        base, tok = build_vision_lm(MODEL, VISION, configs["flamingo"])  # closed gates, no image: the frozen LM
        blind = text_only(data["test"])
        floor = {**exact(base, tok, questions(blind), [kind_of(ex) for ex in data["test"]]),
                 "nll": answer_nll(base, VLMData(blind, tok, base, 2048))}
        floor["exact"] = floor.pop("all")
    vlm_report.write(args, command, data, configs, search, final, floor, time.perf_counter() - t_start, se)


def se(values: list[float], n: int) -> float:
    """Standard error of a mean exact match over seeds and n questions (seeds' spread and test sampling)."""
    m = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return math.sqrt(sd * sd / len(values) + m * (1 - m) / max(n, 1))


if __name__ == "__main__":
    main()
