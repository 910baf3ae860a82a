"""`groundup quickstart` vs nanoGPT's published CPU recipe for Shakespeare-char, on this machine.

nanoGPT's README recipe (4 layers, 4 heads, 128 wide, context 64, batch 12, 2000 iterations, lr 1e-3 -> 1e-4,
warmup 100, beta2 0.99, no dropout, fp32 on CPU) is re-run here with nanoGPT's own training loop written out
(bench/nanogpt_ref.py's model), on the same corpus and the same train/val split as groundup. Then the
quickstart's default recipe runs. Both models are scored the same way: mean loss per character over the
whole validation split, in non-overlapping windows of the model's own context. The claim to check: at no
more wall-clock than nanoGPT's recipe, groundup's default reaches a lower validation loss.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import parser, setup, show, write_results  # noqa: E402
from nanogpt_ref import GPT, GPTConfig  # noqa: E402

from groundup.eval import perplexity  # noqa: E402
from groundup.loading import load_pretrained  # noqa: E402
from groundup.pretrain import pretrain  # noqa: E402
from groundup.quickstart import QuickstartJob, quickstart_job  # noqa: E402

RECIPE = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, max_iters=2000, lr=1e-3, min_lr=1e-4,
              warmup=100, beta2=0.99, weight_decay=0.1, grad_clip=1.0, eval_interval=250, eval_iters=20)


def nanogpt_lr(it: int) -> float:
    """nanoGPT's get_lr: linear warmup, cosine decay to min_lr at lr_decay_iters (= max_iters)."""
    r = RECIPE
    if it < r["warmup"]:
        return r["lr"] * (it + 1) / (r["warmup"] + 1)
    ratio = (it - r["warmup"]) / (r["max_iters"] - r["warmup"])
    return r["min_lr"] + 0.5 * (1.0 + math.cos(math.pi * min(ratio, 1.0))) * (r["lr"] - r["min_lr"])


def nanogpt_train(train: np.ndarray, val: np.ndarray, vocab: int, seed: int) -> tuple[float, GPT]:
    """nanoGPT's train.py loop on CPU (no compile, fp32), including its periodic loss estimates."""
    r = RECIPE
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=r["block_size"], vocab_size=vocab, n_layer=r["n_layer"], n_head=r["n_head"],
                          n_embd=r["n_embd"], dropout=0.0, bias=True))
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": r["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=r["lr"], betas=(0.9, r["beta2"]))
    data = {"train": torch.from_numpy(train.astype(np.int64)), "val": torch.from_numpy(val.astype(np.int64))}

    def get_batch(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        d, T = data[split], r["block_size"]
        ix = torch.randint(len(d) - T, (r["batch_size"],))
        return torch.stack([d[i : i + T] for i in ix]), torch.stack([d[i + 1 : i + 1 + T] for i in ix])

    def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x).flatten(0, 1), y.flatten())

    start = time.perf_counter()
    for it in range(r["max_iters"] + 1):  # nanoGPT runs iterations 0..max_iters
        if it % r["eval_interval"] == 0:
            model.eval()
            with torch.no_grad():
                for split in ("train", "val"):
                    [loss_of(*get_batch(split)) for _ in range(r["eval_iters"])]
            model.train()
        for group in opt.param_groups:
            group["lr"] = nanogpt_lr(it)
        loss = loss_of(*get_batch("train"))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), r["grad_clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - start, model


@torch.inference_mode()
def val_loss(model: torch.nn.Module, val: np.ndarray, block: int) -> float:
    """Mean loss per token over the whole split, non-overlapping windows of the model's context."""
    model.eval()
    ids = torch.from_numpy(val.astype(np.int64))
    total, count = 0.0, 0
    for begin in range(0, len(ids) - 1, block):
        window = ids[begin : begin + block + 1]
        logits = model(window[None, :-1])[0]
        total += F.cross_entropy(logits, window[1:], reduction="sum").item()
        count += len(window) - 1
    return total / count


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    setup(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        job = quickstart_job(QuickstartJob(out_dir=str(Path(tmp) / "qs")))  # the default recipe, as `make demo` runs it
        if args.quick:
            job.train.max_steps = 200
        job.train.progress = False
        result = pretrain(job)
        ours_seconds = time.perf_counter() - start
        model, tok = load_pretrained(result.checkpoint)
        data = Path(tmp) / "qs" / "data"
        train, val = (np.fromfile(data / f"{s}.bin", dtype=np.uint16) for s in ("train", "val"))
        ours_val = perplexity(model, val.astype(np.int64))["nll"]
    if args.quick:
        RECIPE["max_iters"] = 200
    ref_seconds, ref = nanogpt_train(train, val, tok.vocab_size, seed=1337)
    ref_val = val_loss(ref, val, RECIPE["block_size"])
    cfg = model.config
    rows = [
        ["nanoGPT CPU recipe (4L/4H/128d, ctx 64, B 12, 2000 it, fp32)", ref_seconds, ref_val],
        [f"groundup quickstart ({cfg.n_layer}L/{cfg.n_head}H/{cfg.d_model}d, ctx {cfg.block_size}, "
         f"B {job.train.batch_size}, {job.train.max_steps} steps, {job.train.dtype})", ours_seconds, ours_val],
    ]
    title = "Shakespeare-char: wall-clock (training + evals + checkpoints) and val loss (nats/char, whole val split)"
    table = show(title, ["run", "seconds", "val loss"], rows)
    print(f"\nwall-clock ratio (groundup / nanoGPT): {ours_seconds / ref_seconds:.2f}; "
          f"val loss difference (groundup - nanoGPT): {ours_val - ref_val:+.3f}")
    write_results("quickstart_vs_nanogpt", {title: table})


if __name__ == "__main__":
    main()
