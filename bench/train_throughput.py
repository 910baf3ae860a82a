"""Training throughput: tokens/s of one training step (forward + backward + AdamW step) of groundup's
decoder vs a plain nanoGPT-style model (bench/nanogpt_ref.py), same size, same weights, same data.

Shape: nanoGPT's Shakespeare-char model (6 layers, 6 heads, d=384, context 256, batch 12, vocab 65),
dropout 0, exact GELU in both. fp32, and bf16 autocast (weights and optimizer stay fp32).

    python bench/train_throughput.py [--quick] [--profile]
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402
from _gpt2_weights import load_gpt2_into  # noqa: E402
from nanogpt_ref import GPT, GPTConfig  # noqa: E402

from groundup.config import preset  # noqa: E402
from groundup.models import DecoderLM  # noqa: E402

BATCH, CONTEXT = 12, 256
DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def build_pair() -> tuple[nn.Module, nn.Module]:
    """(nanoGPT reference, groundup) with identical weights; checks their logits agree."""
    ref = GPT(GPTConfig(block_size=CONTEXT, vocab_size=65, n_layer=6, n_head=6, n_embd=384, dropout=0.0))
    ours = DecoderLM(preset("gpt-shakespeare-char", dropout=0.0, mlp="gelu"))  # nanoGPT uses exact GELU
    load_gpt2_into(ours, ref.state_dict(), conv1d=False)
    ids = torch.randint(0, 65, (2, CONTEXT))
    with torch.no_grad():
        diff = (ref(ids) - ours(ids)).abs().max().item()
    print(f"same weights: max |logits(groundup) - logits(reference)| = {diff:.2e} (fp32)")
    if diff > 1e-3:
        raise SystemExit(f"FAIL: models disagree by {diff:.2e} > 1e-3; the comparison would not be the same work")
    return ref.train(), ours.train()


def make_step(model: nn.Module, data: list[tuple[torch.Tensor, torch.Tensor]], dtype: torch.dtype | None):
    """One training step per call (cycling through data): zero_grad, forward, loss, backward, AdamW."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1, betas=(0.9, 0.99))
    state = {"i": 0}

    def step() -> float:
        x, y = data[state["i"] % len(data)]
        state["i"] += 1
        opt.zero_grad(set_to_none=True)
        ctx = torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with ctx:
            logits = model(x)  # (B, T, V)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        loss.backward()
        opt.step()
        return loss.item()

    return step


def main() -> None:
    args = common.parser(__doc__.splitlines()[0])
    args.add_argument("--warmup", type=int, default=None)
    args.add_argument("--steps", type=int, default=None, help="timed steps per model")
    args.add_argument("--dtype", choices=list(DTYPES), nargs="+", default=list(DTYPES))
    args.add_argument("--profile", action="store_true", help="also print torch.profiler op tables")
    args = args.parse_args()
    common.setup(args.threads)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    n_steps = args.steps if args.steps is not None else (3 if args.quick else 10)
    g = torch.Generator().manual_seed(1)
    data = [(torch.randint(0, 65, (BATCH, CONTEXT), generator=g), torch.randint(0, 65, (BATCH, CONTEXT), generator=g))
            for _ in range(4)]
    tokens = BATCH * CONTEXT

    rows, raw = [], {}
    for dname in args.dtype:
        ref, ours = build_pair()
        steps = {"nanoGPT": make_step(ref, data, DTYPES[dname]), "groundup": make_step(ours, data, DTYPES[dname])}
        times, cpu = common.interleaved(steps, warmup, n_steps)
        t_ref, t_ours = common.median(times["nanoGPT"]), common.median(times["groundup"])
        rows.append([dname, tokens / t_ref, tokens / t_ours, t_ref / t_ours,
                     common.speedup(cpu["nanoGPT"], cpu["groundup"]),
                     f"{common.spread(times['nanoGPT']):.0%} / {common.spread(times['groundup']):.0%}"])
        raw[dname] = {"wall": times, "cpu": cpu}
        print(f"{dname}: nanoGPT {tokens / t_ref:,.0f} tok/s, groundup {tokens / t_ours:,.0f} tok/s", flush=True)
        if args.profile:
            common.profile_ops({f"{k} {dname}, 3 steps": lambda f=f: [f() for _ in range(3)] for k, f in steps.items()})

    title = (f"Training step (fwd+bwd+AdamW), 6L/6H/384d, ctx {CONTEXT}, batch {BATCH}, vocab 65: "
             f"median of {n_steps} steps after {warmup} warmup, interleaved")
    result = common.show(title, ["dtype", "nanoGPT tok/s", "groundup tok/s", "ratio (groundup/nanoGPT)",
                                 "ratio by CPU time", "spread (ref / ours)"], rows)
    path = common.write_results(common.result_name("train_throughput", args.tag), {title: result},
                                {"seconds_per_step": raw, "tokens_per_step": tokens})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
