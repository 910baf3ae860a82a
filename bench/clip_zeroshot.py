"""CLIP zero-shot on Fashion-MNIST classes held out from training: CLIP from scratch vs LiT (a locked pretrained
text tower), against chance and against a linear probe.

Training pairs (28x28 grayscale for every model):

    Noto Color Emoji, rendered with Pillow on black (Fashion-MNIST's background), converted to gray, captioned with
    their lower-cased Unicode names ("womans sandal")                               ~1.36k pairs, own groups
    Fashion-MNIST TRAIN images of the 7 SEEN classes, a seeded 500 per class, each captioned by one of
    CAPTION_TEMPLATES ("a photo of a sneaker.")                                      3.5k pairs, group = class

Held out: dress, coat, sandal. No Fashion-MNIST image of them is trained on; their words reach training only
through emoji captions (dress, coat, lab coat, womans sandal, thong sandal: cartoon glyphs, not photos). The
"strict" rows also drop those 5 emoji, so the held-out words never occur in any training caption: only a tower
that learned them elsewhere (LiT's pretrained language model) can place them.

Models, both with clip-tiny's image tower (ViT, 7x7 patches, 2 layers, d=64) trained from scratch:

    scratch   clip-tiny: a causal CLIP-BPE text tower (2 layers, d=64), trained from scratch
    lit-text  LiT (Zhai et al. 2022) with the roles swapped: the text tower is all-MiniLM-L6-v2 (real pretrained
              sentence encoder, WordPiece, mean pooled), LOCKED; its pooled features are computed once per
              distinct caption (cache_locked_tower) and only its projection and the image side train

Same loop (groundup.train.train), batch, steps, schedule and seeds for both. Contrastive groups: two Fashion
images of one class are positives of each other (whatever template captions them), emoji their own.
Learning rate: each model searches {LRS} on seed 0 by the loop's final VALIDATION contrastive loss (10% of the
training pairs, never the test split), then the best rate runs again with seed 1; the strict rows train with
that rate, seeds 0 and 1. Reported: both seeds.

Evaluation on Fashion-MNIST's TEST split (prompt ensemble of CAPTION_TEMPLATES, as CLIP does):
    unseen/3   zero-shot accuracy of the held-out classes' 3,000 images among the 3 held-out names (chance 1/3)
    unseen/10  the same images among all 10 names (chance 1/10)
    seen/7     the 7,000 seen-class images among the 7 seen names (reference: classes trained on)
    probe/3    logistic regression on the model's image embeddings, fit on 1,000 held-out-class TRAIN images
               per class (C from {0.1, 1, 10} on a 20% split of those), scored on the 3,000 test images: do the
               features separate the unseen classes at all (the bar zero-shot could reach with labels)

Also a pixel probe (the same regression on raw pixels): how separable the three classes are without any model.
95% Wilson intervals per run; verdicts between models use the seeds' spread (common.seed_gap).

    python bench/clip_zeroshot.py [--quick] [--threads N] [--steps S]
"""

from __future__ import annotations

import itertools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402

from groundup.data.image_text import (  # noqa: E402
    CAPTION_TEMPLATES,
    FASHION_CLASSES,
    ImageTextData,
    caption_pairs,
    fashion_mnist,
)
from groundup.loading import load_pretrained  # noqa: E402
from groundup.models.clip import CLIP, cache_locked_tower, clip_preset, zero_shot_classifier  # noqa: E402
from groundup.tokenizer_clip import ClipTokenizer  # noqa: E402
from groundup.train import TrainConfig, train  # noqa: E402
from groundup.vision.preprocess import SPECS  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs"
HELD_OUT = (3, 4, 5)  # dress, coat, sandal
SEEN = tuple(c for c in range(10) if c not in HELD_OUT)
PER_CLASS, BATCH, CTX = 500, 128, 32  # captions are <= 20 tokens in either vocabulary: 32 positions suffice
LRS = (3e-4, 1e-3, 3e-3)
SPEC = SPECS["gray28"]


class WordPieceIds:
    """MiniLM's WordPiece tokenizer in the shape ImageTextData and zero_shot_classifier take: (N, CTX) ids
    [CLS] .. [SEP] zero-padded ([PAD] is 0), `eot_id` = [SEP] so the mask covers exactly BERT's real tokens."""

    def __init__(self, tok) -> None:
        self.tok, self.eot_id = tok, tok.encode_batch(["x"], add_special_tokens=True)[0][-1]

    def __call__(self, texts: list[str]) -> torch.Tensor:
        ids = torch.zeros(len(texts), CTX, dtype=torch.long)
        for i, row in enumerate(self.tok.encode_batch(list(texts), add_special_tokens=True)):
            row = row[:CTX - 1] + row[-1:] if len(row) > CTX else row
            ids[i, :len(row)] = torch.tensor(row)
        return ids


def pairs(strict: bool, seed: int = 0) -> tuple[list, list[int], int]:
    """(pairs, groups, n_emoji): emoji + PER_CLASS seeded seen-class Fashion train images (data.caption_pairs)."""
    prs, groups = caption_pairs(held_out=HELD_OUT, per_class=PER_CLASS, strict=strict, seed=seed)
    return prs, groups, sum(g >= len(FASHION_CLASSES) for g in groups)


def build(kind: str, minilm) -> tuple[CLIP, object]:
    """(model, tokenizer) for 'scratch' or 'lit-text' (MiniLM's weights copied into the locked text tower)."""
    if kind == "scratch":
        return CLIP(clip_preset("clip-tiny", text={"block_size": CTX})), ClipTokenizer(context_length=CTX)
    encoder, tok = minilm
    model = CLIP(clip_preset("clip-tiny", text=encoder.config.to_dict(), text_pool="mean", lock="text",
                             eot_id=None))
    body = {k: v for k, v in encoder.state_dict().items() if not k.startswith("pooler.")}  # CLS pooler unused
    model.text.load_state_dict(body)
    return model, WordPieceIds(tok)


def fit(kind: str, minilm, data: ImageTextData, lr: float, seed: int, steps: int, out: Path) -> tuple[CLIP, float]:
    """Train one model; (model, final val contrastive loss). `out`: a fresh folder for this run's files."""
    torch.manual_seed(seed)  # the init; the loop's seed draws the batches
    model, _ = build(kind, minilm)
    data.features.clear()
    if model.config.lock:
        cache_locked_tower(model, data)
    cfg = TrainConfig(out_dir=str(out), max_steps=steps, batch_size=BATCH, lr=lr,
                      min_lr=lr / 10, warmup_steps=max(1, steps // 10), weight_decay=0.2, beta2=0.98,
                      eval_every=steps, eval_batches=8, ckpt_every=0, dtype="fp32", device="cpu", seed=seed,
                      log_every=max(1, steps // 10), progress=False)
    result = train(model, "clip", data, cfg)
    return model.eval(), float(result.val_loss)


def test_pixels() -> tuple[torch.Tensor, np.ndarray]:
    images, labels = fashion_mnist(split="test")
    x = torch.from_numpy(images).float().div(255).sub(SPEC.mean[0]).div(SPEC.std[0])[:, None]  # (N, 1, 28, 28)
    return x, labels


@torch.no_grad()
def embed(model: CLIP, x: torch.Tensor) -> np.ndarray:
    return torch.cat([model.encode_image(x[i:i + 1000]) for i in range(0, len(x), 1000)]).numpy()


def probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> float:
    """Logistic-regression accuracy, C chosen on a seeded 20% split of the training rows (never the test rows)."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    perm = rng.permutation(len(train_x))
    val, fit_rows = perm[: len(perm) // 5], perm[len(perm) // 5:]
    best = max((0.1, 1.0, 10.0), key=lambda C: LogisticRegression(C=C, max_iter=2000).fit(
        train_x[fit_rows], train_y[fit_rows]).score(train_x[val], train_y[val]))
    return float(LogisticRegression(C=best, max_iter=2000).fit(train_x, train_y).score(test_x, test_y))


def probe_set(n: int) -> tuple[torch.Tensor, np.ndarray]:
    """n seeded held-out-class TRAIN images per class (the probe's labelled data), normalised like training."""
    images, labels = fashion_mnist(split="train")
    rng = np.random.default_rng(1)
    rows = np.concatenate([rng.choice(np.flatnonzero(labels == c), n, replace=False) for c in HELD_OUT])
    x = torch.from_numpy(images[rows]).float().div(255).sub(SPEC.mean[0]).div(SPEC.std[0])[:, None]
    return x, labels[rows]


def evaluate(model: CLIP, tok, test: tuple, probe_data: tuple) -> dict[str, float]:
    (x, y), (px, py) = test, probe_data
    emb = embed(model, x)
    cls = zero_shot_classifier(model, tok, list(FASHION_CLASSES), CAPTION_TEMPLATES).numpy()  # (10, e)
    sims = emb @ cls.T  # (N, 10)
    unseen, seen = np.isin(y, HELD_OUT), np.isin(y, SEEN)

    def acc(rows: np.ndarray, among: tuple[int, ...]) -> float:
        cols = np.array(among)
        return float((cols[sims[rows][:, cols].argmax(1)] == y[rows]).mean())

    return {"unseen/3": acc(unseen, HELD_OUT), "unseen/10": acc(unseen, tuple(range(10))),
            "seen/7": acc(seen, SEEN), "probe/3": probe(embed(model, px), py, emb[unseen], y[unseen]),
            "n_unseen": int(unseen.sum()), "n_seen": int(seen.sum())}


METRICS = ("unseen/3", "unseen/10", "seen/7", "probe/3")
CHANCE = {"unseen/3": 1 / 3, "unseen/10": 0.1, "seen/7": 1 / 7, "probe/3": 1 / 3}


def plot(runs: dict[str, list[dict]], search: dict[str, dict[float, float]], pixel_probe: float, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.2))
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2.3, 1]})
    width = 0.8 / len(runs)
    for j, (name, evals) in enumerate(runs.items()):
        means = [np.mean([e[m] for e in evals]) for m in METRICS]
        lo = [means[i] - min(e[m] for e in evals) for i, m in enumerate(METRICS)]
        hi = [max(e[m] for e in evals) - means[i] for i, m in enumerate(METRICS)]
        xs = np.arange(len(METRICS)) + (j - (len(runs) - 1) / 2) * width
        left.bar(xs, means, width, yerr=[lo, hi], capsize=3, label=f"{name} ({len(evals)} seed(s))")
    for i, m in enumerate(METRICS):
        left.hlines(CHANCE[m], i - 0.45, i + 0.45, colors="k", linestyles="--", lw=1,
                    label="chance" if i == 0 else None)
    left.hlines(pixel_probe, 3 - 0.45, 3 + 0.45, colors="r", linestyles=":", lw=1.5, label="probe on raw pixels")
    left.set_xticks(range(len(METRICS)), METRICS)
    left.set(ylabel="Fashion-MNIST test accuracy", ylim=(0, 1),
             title="held out: dress, coat, sandal (bars: seed range)")
    left.legend(fontsize=7, loc="upper left")
    for name, points in search.items():
        right.plot(list(points), list(points.values()), "o-", label=name)
    right.set(xscale="log", xlabel="learning rate (seed 0)", ylabel="val contrastive loss", title="LR search")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def verdicts(runs: dict[str, list[dict]], pixel_probe: float) -> list[str]:
    """Each model against chance (Wilson interval of every seed) and the probe; LiT against scratch (seed spread)."""
    out = []
    for name, evals in runs.items():
        for m, among in (("unseen/3", "the 3 held-out names"), ("unseen/10", "all 10 names")):
            lows = [common.wilson(e[m], e["n_unseen"])[0] for e in evals]
            highs = [common.wilson(e[m], e["n_unseen"])[1] for e in evals]
            accs = " / ".join(f"{e[m]:.1%}" for e in evals)
            if min(lows) > CHANCE[m]:
                word = "above chance in every seed"
            elif max(highs) < CHANCE[m]:
                word = "below chance in every seed"
            elif max(lows) > CHANCE[m] and min(highs) < CHANCE[m]:  # one seed clearly above, another clearly below
                word = ("the seeds fall on opposite sides of chance: which name lands on which unseen cluster is "
                        "a draw of the seed, not transfer; not distinguishable from chance")
            else:
                word = "not distinguishable from chance"
            out.append(f"{name}: unseen images among {among}: {accs} (chance {CHANCE[m]:.1%}): {word} (95% Wilson).")
        gap = np.mean([e["probe/3"] - e["unseen/3"] for e in evals])
        out.append(f"{name}: the linear probe on its embeddings reaches {np.mean([e['probe/3'] for e in evals]):.1%} "
                   f"on the same 3-way task ({gap:+.1%} over zero-shot; raw-pixel probe {pixel_probe:.1%}).")
    for (a, b), m in itertools.product((("lit-text", "scratch"), ("lit-text strict", "scratch strict")),
                                       ("unseen/3", "unseen/10")):
        if a in runs and b in runs:
            gap, margin = common.seed_gap([e[m] for e in runs[a]], [e[m] for e in runs[b]])
            if margin is None:
                word = "one seed: not evidence either way"
            else:
                word = "within noise" if abs(gap) <= margin else (f"{a} better" if gap > 0 else f"{b} better")
            out.append(f"{a} vs {b}, {m}: {gap:+.1%}" + (f" (95% margin ±{margin:.1%} over "
                       f"{len(runs[a])} seeds)" if margin is not None else "") + f": {word}.")
    return out


NOTE = ("Reading them: Wilson intervals are per run (3,000 test images); they do not cover seed-to-seed "
        "variation, which with two seeds is the larger noise. Below chance among all 10 names means the unseen "
        "images are named as seen classes, which the training pairs bind to images. The strict rows test transfer "
        "from the words alone.\n\n")


def write_doc(args, headers: list[str], rows: list, search_rows: list, verdict: list[str], png: Path,
              steps: int, n_pairs: dict[str, int], seconds: float) -> Path:
    info = common.machine_info()
    smoke = ("> **SMOKE RUN ONLY: these numbers are not results.** `--quick` trains a few steps with one rate and "
             "one seed to check that everything runs; replace this page with the full run's output.\n\n"
             ) if args.quick else ""
    doc = __doc__.split("\n\n", 1)[1].rsplit("\n\n", 1)[0].replace("{LRS}", "{" + ", ".join(map(str, LRS)) + "}")
    text = (
        f"# CLIP zero-shot on held-out Fashion-MNIST classes: from scratch vs LiT\n\n{smoke}"
        f"Command: `{info['command']}`  \nMachine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, "
        f"{torch.get_num_threads()} thread(s), {info['date']} (load average {info['load_avg_1min']}); whole run "
        f"{seconds / 60:.1f} min\n\n"
        f"Every model: {steps} steps, batch {BATCH}, AdamW (weight decay 0.2, beta2 0.98), cosine from the rate to "
        f"rate/10 after {max(1, steps // 10)} warmup steps, fp32, the one training loop. Training pairs: "
        f"{n_pairs['all']} ({n_pairs['emoji']} emoji + {PER_CLASS * len(SEEN)} Fashion), strict "
        f"{n_pairs['strict']}; 10% of them are the validation split.\n\n"
        f"{doc}\n\n## Results (Fashion-MNIST test split)\n\n{common.table(headers, rows)}\n\n"
        f"Learning-rate search (seed 0, final validation contrastive loss; the strict rows reuse each model's rate):"
        f"\n\n{common.table(['model', *map(str, LRS), 'chosen'], search_rows)}\n\n![accuracies]({png.name})\n\n"
        "## Verdicts\n\n" + NOTE + ("Not checked: a smoke run cannot test the claim.\n" if args.quick else
                             "\n".join(f"- {v}" for v in verdict) + "\n")
    )
    path = DOCS / "clip_zeroshot.md"
    path.write_text(text)
    return path


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="training steps per model (default 600, quick 20)")
    args = p.parse_args()
    common.setup(args.threads)
    t_start = time.perf_counter()
    steps = args.steps or (20 if args.quick else 600)
    lrs, seeds = ((3e-3,), (0,)) if args.quick else (LRS, (0, 1))
    minilm = load_pretrained("all-minilm-l6-v2")
    test, probe_data = test_pixels(), probe_set(200 if args.quick else 1000)
    (x, y), (px, py) = test, probe_data
    unseen = np.isin(y, HELD_OUT)
    pixel_probe = probe(px.flatten(1).numpy(), py, x[unseen].flatten(1).numpy(), y[unseen])
    print(f"raw-pixel probe on the held-out classes: {pixel_probe:.1%}", flush=True)
    datasets, n_pairs = {}, {}
    for strict in (False, True):
        prs, groups, n_emoji = pairs(strict)
        n_pairs["strict" if strict else "all"] = len(prs)
        n_pairs.setdefault("emoji", n_emoji)
        for kind in ("scratch", "lit-text"):
            tok = build(kind, minilm)[1]
            datasets[kind, strict] = (ImageTextData(prs, tok, SPEC, val_fraction=0.1, seed=0, groups=groups), tok)
    runs: dict[str, list[dict]] = {}
    search: dict[str, dict[float, float]] = {}
    search_rows, rows = [], []
    with tempfile.TemporaryDirectory(prefix="clip_zeroshot-") as tmp:
        out = Path(tmp)
        for kind in ("scratch", "lit-text"):
            data, tok = datasets[kind, False]
            fitted = {}
            for lr in lrs:
                t0 = time.perf_counter()
                fitted[lr] = fit(kind, minilm, data, lr, seeds[0], steps, out / f"{kind}-{lr}")
                print(f"{kind} lr {lr}: val loss {fitted[lr][1]:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
            search[kind] = {lr: v for lr, (_, v) in fitted.items()}
            best = min(search[kind], key=search[kind].get)
            search_rows.append([kind, *[f"{search[kind].get(lr, float('nan')):.4f}" for lr in LRS], best])
            for strict in (False, True):
                name = kind + (" strict" if strict else "")
                data, tok = datasets[kind, strict]
                runs[name] = []
                for seed in seeds:
                    reuse = not strict and seed == seeds[0]
                    run_dir = out / f"{name}-{seed}"
                    model = fitted[best][0] if reuse else fit(kind, minilm, data, best, seed, steps, run_dir)[0]
                    ev = evaluate(model, tok, test, probe_data)
                    runs[name].append(ev)
                    print(f"{name} seed {seed}: " + ", ".join(f"{m} {ev[m]:.1%}" for m in METRICS), flush=True)
                evals = runs[name]
                cells = []
                for m in METRICS:
                    n = evals[0]["n_seen"] if m == "seen/7" else evals[0]["n_unseen"]
                    lo, hi = common.wilson(evals[0][m], n)
                    cells.append(f"{np.mean([e[m] for e in evals]):.1%} (" + " / ".join(f"{e[m]:.1%}" for e in evals)
                                 + f"; seed 0 CI {lo:.1%}-{hi:.1%})")
                rows.append([name, best, *cells])
    rows.append(["chance", "-", *[f"{CHANCE[m]:.1%}" for m in METRICS]])
    rows.append(["probe on raw pixels", "-", "-", "-", "-", f"{pixel_probe:.1%}"])
    headers = ["model", "lr", *[f"{m} (mean; per seed; 95% Wilson)" for m in METRICS]]
    title = f"CLIP zero-shot on held-out dress/coat/sandal, {steps} steps, batch {BATCH}, seeds {list(seeds)}"
    table = common.show(title, headers, rows)
    verdict = verdicts(runs, pixel_probe)
    print("\n".join(verdict))
    DOCS.mkdir(exist_ok=True)
    png = DOCS / "clip_zeroshot.png"
    plot(runs, search, pixel_probe, png)
    seconds = time.perf_counter() - t_start
    doc = write_doc(args, headers, rows, search_rows, verdict, png, steps, n_pairs, seconds)
    path = common.write_results(common.result_name("clip_zeroshot", args.tag), {title: table},
                                {"runs": runs, "lr_search": {k: {str(lr): v for lr, v in s.items()}
                                                             for k, s in search.items()},
                                 "pixel_probe": pixel_probe, "verdicts": verdict, "steps": steps,
                                 "seeds": list(seeds), "quick": args.quick, "seconds": seconds, "pairs": n_pairs})
    print(f"wrote {path}, {doc}, {png} in {seconds / 60:.1f} min")


if __name__ == "__main__":
    main()
