"""Do Vision Transformers need more data than convolutional networks? (Dosovitskiy et al. 2021, sec. 4.2)

A ViT (configs/vit-fashion.yaml's: vit-tiny with 4x4 patches of 7 pixels, 4 blocks, d=128) and a small CNN of
about the same size (four 3x3 conv layers with batch norm, two max-pools, global average pooling, a linear head)
trained from scratch
on 5%, 20% and 100% of Fashion-MNIST's training images (a seeded, class-balanced subset; Debian
dataset-fashion-mnist) by the one training loop with the same recipe: AdamW, cosine schedule, batch 128, the
same number of steps for every subset (so the small subsets see many epochs, as a data-starved model does),
no augmentation (the config's recipe). Each model gets the same learning-rate search: --rates on a validation split
carved from the 20% subset (never the test split; --search-steps each), the best rate then trains every subset
with one seed, and with a second seed (its own subset, init and batches) wherever the ViT - CNN gap is under
--close. Reported: test accuracy on all 10,000 test images, and whether the gap is outside its 95% margin: the
seeds' spread where there are two, else the test set's sampling error (Wilson intervals of the two accuracies).

    python bench/vit_vs_cnn.py [--quick] [--threads N] [--steps S] [--search-steps S] [--close 0.03]
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402

from groundup.config import vision_preset  # noqa: E402
from groundup.data.images import ImageClassData, LabelledImages, accuracy, fashion_mnist_images  # noqa: E402
from groundup.models.vit import ViT  # noqa: E402
from groundup.train import TrainConfig, train  # noqa: E402
from groundup.vision.preprocess import spec_at  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs"
FRACTIONS = (0.05, 0.2, 1.0)
SEARCH_FRACTION = 0.2
BATCH = 128


@dataclasses.dataclass
class CNNConfig:
    widths: tuple[int, ...] = (48, 96, 192, 320)
    n_class: int = 10

    def to_dict(self) -> dict:
        return {"family": "bench-cnn", **dataclasses.asdict(self)}


class SmallCNN(nn.Module):
    """conv-bn-relu x 4 (max-pool after the first two: 28 -> 14 -> 7), global average pool, linear head."""

    def __init__(self, cfg: CNNConfig) -> None:
        super().__init__()
        self.config = cfg
        layers, c_in = [], 1
        for i, c in enumerate(cfg.widths):
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
            if i < 2:
                layers.append(nn.MaxPool2d(2))
            c_in = c
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(c_in, cfg.n_class)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(pixels))


def build(kind: str) -> nn.Module:
    return ViT(vision_preset("vit-tiny", patch_size=7)) if kind == "vit" else SmallCNN(CNNConfig())


def subset(source: LabelledImages, fraction: float, seed: int) -> LabelledImages:
    """A class-balanced `fraction` of the training images (the test split untouched)."""
    images, labels = source.train
    rng = np.random.default_rng(seed)
    keep = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[: round(fraction * (labels == c).sum())]
                           for c in np.unique(labels)])
    keep.sort()
    return LabelledImages((images[keep], labels[keep]), source.test, source.classes)


def run(kind: str, source: LabelledImages, lr: float, steps: int, seed: int, out: Path, val_fraction: float,
        on: str) -> float:
    """Train one model; its accuracy on `on` ('val' for the search, 'test' for the table)."""
    data = ImageClassData(source, spec_at("gray28", 28), val_fraction, seed)
    torch.manual_seed(seed)
    model = build(kind)
    cfg = TrainConfig(out_dir=str(out), max_steps=steps, batch_size=BATCH, lr=lr, min_lr=lr / 100,
                      warmup_steps=max(1, steps // 20), weight_decay=0.05, beta2=0.99, eval_every=0, ckpt_every=0,
                      progress=False, log_every=max(1, steps // 5), dtype="fp32")
    train(model, "image_classification", data, cfg)
    return accuracy(model, *data.splits[on])


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default 600, quick 20)")
    p.add_argument("--search-steps", type=int, default=None, help="steps per search run (default 300, quick 10)")
    p.add_argument("--close", type=float, default=0.03, help="a second seed where |ViT - CNN| is below this")
    p.add_argument("--rates", default=None, help="learning rates searched (default 1e-3,3e-3; quick 3e-3)")
    args = p.parse_args()
    common.setup(args.threads)
    steps = args.steps or (20 if args.quick else 600)
    search_steps = args.search_steps or (10 if args.quick else 300)
    rates = [float(r) for r in (args.rates or ("3e-3" if args.quick else "1e-3,3e-3")).split(",")]
    full = fashion_mnist_images()
    if args.quick:  # a smoke run: 2,000 training and 1,000 test images
        full = LabelledImages((full.train[0][:2000], full.train[1][:2000]),
                              (full.test[0][:1000], full.test[1][:1000]), full.classes)
    params = {k: sum(p.numel() for p in build(k).parameters()) for k in ("vit", "cnn")}
    search, chosen, acc, seconds = {}, {}, {k: {f: [] for f in FRACTIONS} for k in params}, {}
    with tempfile.TemporaryDirectory(prefix="vit_vs_cnn-") as tmp:
        for kind in params:
            for lr in rates:
                search[(kind, lr)] = run(kind, subset(full, SEARCH_FRACTION, 0), lr, search_steps, 1337,
                                         Path(tmp) / f"search-{kind}-{lr}", 0.2, "val")
                print(f"search {kind} lr {lr:g}: val accuracy {search[(kind, lr)]:.4f}", flush=True)
            chosen[kind] = max(rates, key=lambda r: search[(kind, r)])

        def train_seed(fraction: float, seed: int) -> None:
            for kind in params:
                t0 = time.perf_counter()
                acc[kind][fraction].append(run(kind, subset(full, fraction, seed), chosen[kind], steps, seed,
                                               Path(tmp) / f"{kind}-{fraction}-{seed}", 0.0, "test"))
                seconds[(kind, fraction)] = time.perf_counter() - t0
                print(f"{kind} on {fraction:.0%} (seed {seed}): test accuracy {acc[kind][fraction][-1]:.4f}",
                      flush=True)

        for fraction in FRACTIONS:
            train_seed(fraction, 1337)
            if abs(acc["vit"][fraction][0] - acc["cnn"][fraction][0]) < args.close and not args.quick:
                train_seed(fraction, 1338)
    seeds = sorted({len(v) for d in acc.values() for v in d.values()})
    n_test = len(full.test[1])
    n_train = {f: len(subset(full, f, 1337).train[1]) for f in FRACTIONS}
    headers = ["training images", "ViT test acc", "CNN test acc", "ViT - CNN (95% margin)", "verdict"]
    rows, verdicts, gaps = [], [], {}
    for f in FRACTIONS:
        gap, margin = common.seed_gap(acc["vit"][f], acc["cnn"][f])
        if margin is None:  # one seed: the test set's own sampling error of the two accuracies
            margin = sum((hi - lo) / 2 for lo, hi in (common.wilson(acc[k][f][0], n_test) for k in ("vit", "cnn")))
        word = "within noise" if abs(gap) <= margin else "ViT better" if gap > 0 else "CNN better"
        rows.append([f"{f:.0%} ({n_train[f]:,})", _mean_spread(acc["vit"][f]), _mean_spread(acc["cnn"][f]),
                     f"{gap:+.4f} (±{margin:.4f})", f"{len(acc['vit'][f])} seed(s): {word}"])
        verdicts.append(f"- {f:.0%} of the data ({n_train[f]:,} images): ViT {np.mean(acc['vit'][f]):.2%}, CNN "
                        f"{np.mean(acc['cnn'][f]):.2%}: {word}.")
        gaps[f] = (gap, margin)
    verdicts.append(trend(gaps))
    edges = [k for k in params if chosen[k] in (min(rates), max(rates)) and len(rates) > 1]
    if edges:
        verdicts.append(f"- Caveat: the rate search chose the edge of its grid for {' and '.join(edges)}; a wider "
                        "grid might move those numbers.")
    search_rows = [[k, f"{lr:g}", v] for (k, lr), v in search.items()]
    title = f"ViT vs CNN on Fashion-MNIST subsets, {steps} steps x batch {BATCH}, test accuracy on {n_test:,} images"
    table = common.show(title, headers, rows)
    search_table = common.show("learning-rate search (val split of the 20% subset)", ["model", "lr", "val acc"],
                               search_rows)
    DOCS.mkdir(exist_ok=True)
    png = DOCS / "vit_vs_cnn.png"
    plot(acc, n_train, png)
    doc = write_doc(args, steps, search_steps, params, chosen, table, search_table, verdicts, seconds, png)
    path = common.write_results(common.result_name("vit_vs_cnn", args.tag), {title: table, "search": search_table},
                                {"accuracy": {k: {str(f): v for f, v in d.items()} for k, d in acc.items()},
                                 "chosen_lr": chosen, "params": params, "seeds_per_subset": seeds})
    print(f"wrote {path}, {doc}, {png}")


def trend(gaps: dict[float, tuple[float, float]]) -> str:
    """Does the CNN's lead shrink as the data grows (the claim), beyond the two gaps' margins?"""
    (small, m_small), (large, m_large) = gaps[FRACTIONS[0]], gaps[FRACTIONS[-1]]
    change, margin = large - small, m_small + m_large
    word = ("within noise" if abs(change) <= margin else "the ViT closes in with more data" if change > 0
            else "the gap widens with more data")
    return (f"- ViT - CNN goes from {small:+.2%} at {FRACTIONS[0]:.0%} to {large:+.2%} at {FRACTIONS[-1]:.0%} of the "
            f"data: a change of {change:+.2%} (margin {margin:.2%}): {word}.")


def _mean_spread(xs: list[float]) -> str:
    return f"{np.mean(xs):.2%}" + (f" ± {np.std(xs, ddof=1):.2%}" if len(xs) > 1 else "")


def plot(acc: dict, n_train: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    xs = [n_train[f] for f in FRACTIONS]
    for kind, label in (("vit", "ViT (vit-tiny)"), ("cnn", "small CNN")):
        means = [np.mean(acc[kind][f]) for f in FRACTIONS]
        errs = [np.std(acc[kind][f], ddof=1) if len(acc[kind][f]) > 1 else 0 for f in FRACTIONS]
        ax.errorbar(xs, means, yerr=errs, marker="o", capsize=3, label=label)
    ax.set(xscale="log", xlabel="training images", ylabel="test accuracy", title="Fashion-MNIST: ViT vs CNN")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def write_doc(args, steps, search_steps, params, chosen, table, search_table, verdicts, seconds, png) -> Path:
    info = common.machine_info()
    smoke = ("> **SMOKE RUN ONLY: these numbers are not results.** `--quick` trains a few steps on 2,000 images to "
             "check that everything runs.\n\n") if args.quick else ""
    text = (
        f"# Do ViTs need more data than CNNs? Fashion-MNIST at 5%, 20% and 100%\n\n{smoke}"
        f"Command: `{info['command']}`  \nMachine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, "
        f"{info['date']} (load average {info['load_avg_1min']})\n\n"
        "ViT: groundup `vit-tiny` as configs/vit-fashion.yaml has it (28x28 grayscale, 4x4 patches of 7 pixels, "
        f"4 blocks, d=128; {params['vit']:,} parameters). "
        f"CNN: four 3x3 conv + batch norm + ReLU layers of widths {CNNConfig().widths}, max-pools after the first "
        f"two, global average pooling, a linear head ({params['cnn']:,} parameters). Both trained by the one "
        f"training loop for {steps} steps of batch {BATCH} (AdamW, weight decay 0.05, cosine to lr/100, 5% warmup, "
        "fp32), no augmentation; the subsets are class-balanced and seeded. "
        f"Learning rate: each model's best of {search_steps}-step runs on a validation split of the 20% subset (ViT "
        f"{chosen['vit']:g}, CNN {chosen['cnn']:g}). One seed per subset, a second (its own subset, init and batches) "
        f"where the gap was under {args.close:.0%}; the margin is the seeds' 95% margin with two, else the sum of "
        "the two accuracies' Wilson half-widths on the test set. Test accuracy: all of Fashion-MNIST's test images. "
        f"Seconds per 100%-data run: ViT {seconds.get(('vit', 1.0), 0):.0f}, CNN {seconds.get(('cnn', 1.0), 0):.0f}."
        "\n\n"
        f"{common.table(table['headers'], table['rows'])}\n\n![accuracy vs data](png)\n\n"
        "Learning-rate search:\n\n"
        f"{common.table(search_table['headers'], search_table['rows'])}\n\n"
        "## Verdict\n\n" + "\n".join(verdicts) + "\n"
    ).replace("(png)", f"({png.name})")
    path = DOCS / "vit_vs_cnn.md"
    path.write_text(text)
    return path


if __name__ == "__main__":
    main()
