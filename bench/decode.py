"""Greedy decoding and prefill of a GPT-2-124M-shaped model: groundup vs transformers, same weights.

Decode: 32-token prompts, 128 new tokens, batch 1 and 8, fp32 and bf16 (weights cast). Beside each
speed stands the physical limit of this machine: decoding one token reads every weight once, so
tokens/s <= memory bandwidth / weight bytes (x batch, since a batch shares one read). Bandwidth is
measured in the same run. Prefill: one forward over a 512-token prompt, batch 1.

    python bench/decode.py [--quick]
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402
from _gpt2_weights import load_gpt2_into  # noqa: E402

from groundup.config import preset  # noqa: E402
from groundup.generate import GenerationConfig, generate  # noqa: E402
from groundup.models import DecoderLM  # noqa: E402
from groundup.nn.packed_linear import pack_for_inference  # noqa: E402

PROMPT, NEW, PREFILL = 32, 128, 512
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def build_pair() -> tuple[nn.Module, nn.Module]:
    """(transformers GPT2LMHeadModel, groundup DecoderLM) with the same random weights, checked."""
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config()).eval()
    ours = DecoderLM(preset("gpt2")).eval()
    load_gpt2_into(ours, hf.state_dict(), conv1d=True)
    ids = torch.randint(0, hf.config.vocab_size, (2, 64))
    with torch.inference_mode():
        diff = (hf(ids).logits - ours(ids)).abs().max().item()
    print(f"same weights: max |logits(groundup) - logits(transformers)| = {diff:.2e} (fp32)")
    if diff > 1e-3:
        raise SystemExit(f"FAIL: models disagree by {diff:.2e} > 1e-3; the comparison would not be the same work")
    return hf, ours


def build_tiny_pair() -> tuple[nn.Module, nn.Module]:
    """A 2-layer, d=64, vocab-256 GPT-2 pair: compute is negligible, so decode time is per-op overhead."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(
        n_layer=2, n_head=2, n_embd=64, vocab_size=256, n_positions=256, bos_token_id=255, eos_token_id=255
    )).eval()
    ours = DecoderLM(preset("gpt2", n_layer=2, n_head=2, d_model=64, vocab_size=256, block_size=256)).eval()
    load_gpt2_into(ours, hf.state_dict(), conv1d=True)
    return hf, ours


def overhead_rows(repeat: int, raw: dict) -> list[list]:
    """Milliseconds per generated token of the tiny model (batch 1, fp32): the framework's own cost per step."""
    hf, ours = build_tiny_pair()
    ids = torch.randint(0, 256, (1, PROMPT), generator=torch.Generator().manual_seed(2))
    fns = {"hf": lambda: hf_generate(hf, ids, NEW), "ours": lambda: ours_generate(ours, ids, NEW)}
    times, cpu = common.interleaved(fns, warmup=1, repeat=repeat)
    raw["overhead tiny"] = {"wall": times, "cpu": cpu}
    t_hf, t_ours = (common.median(times[k]) / NEW * 1e3 for k in ("hf", "ours"))
    print(f"overhead (tiny model): transformers {t_hf:.2f} ms/token, groundup {t_ours:.2f} ms/token", flush=True)
    return [["fp32", 1, t_hf, t_ours, t_hf / t_ours, common.speedup(cpu["hf"], cpu["ours"])]]


def bandwidth(gb: float = 1.0, repeat: int = 5) -> dict[str, float]:
    """Memory bandwidth in GB/s over `gb` GB (far beyond the caches), best of `repeat`: read (a sum), copy
    (read + write), and gemv (x @ W.T with one row x: decoding's own kernel). The limit uses the best read."""
    n = int(gb * 2**30) // 4
    x = torch.ones(n)
    y = torch.empty_like(x)
    w = x.view(-1, 4096)  # (n / 4096, 4096)
    v = torch.ones(1, 4096)
    probes = {"read": (lambda: x.sum(), 1), "copy": (lambda: y.copy_(x), 2), "gemv": (lambda: F.linear(v, w), 1)}
    out = {}
    for name, (fn, passes) in probes.items():
        fn()
        best = min(_seconds(fn) for _ in range(repeat))
        out[f"{name}_GBps"] = passes * x.numel() * x.element_size() / best / 1e9
    out["limit_GBps"] = max(out["read_GBps"], out["gemv_GBps"])
    return out


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def weight_bytes(model: nn.Module) -> int:
    """Bytes of weights read per decoded token: every parameter once (the tied embedding once, for the
    lm_head), except the position-embedding table, of which one row is looked up."""
    skip = {id(model.embed.pos_emb.weight)}
    return sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in skip)


def hf_generate(hf: nn.Module, ids: torch.Tensor, new: int) -> torch.Tensor:
    out = hf.generate(
        ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new, min_new_tokens=new,
        pad_token_id=0,
    )
    return out[:, ids.shape[1]:]  # (B, new)


def ours_generate(model: nn.Module, ids: torch.Tensor, new: int) -> torch.Tensor:
    return torch.tensor(generate(model, ids.tolist(), GenerationConfig(max_new_tokens=new, temperature=0.0)))


def agreement(a: torch.Tensor, b: torch.Tensor) -> str:
    """'yes' when two (B, new) greedy outputs are identical, else where the first row diverges."""
    if torch.equal(a, b):
        return "yes"
    first = min(int((ra != rb).nonzero()[0]) for ra, rb in zip(a, b, strict=True) if not torch.equal(ra, rb))
    return f"NO (from new token {first})"


def decode_rows(hf, ours, dname: str, prompts: torch.Tensor, repeat: int, bw: list[dict], raw: dict,
                nbytes: int) -> list[dict]:
    rows = []
    for batch in (1, 8):
        ids = prompts[:batch]
        hf_generate(hf, ids, 8), ours_generate(ours, ids, 8)  # warmup
        bw.append(bandwidth())  # re-measured beside every case: other work on the machine moves it
        out: dict[str, torch.Tensor] = {}  # the last timed outputs, compared token for token
        times, cpu = common.interleaved({
            "hf": lambda ids=ids: out.__setitem__("hf", hf_generate(hf, ids, NEW)),
            "ours": lambda ids=ids: out.__setitem__("ours", ours_generate(ours, ids, NEW)),
        }, warmup=0, repeat=repeat)
        raw[f"decode {dname} batch {batch}"] = {"wall": times, "cpu": cpu}
        row = dict(dtype=dname, batch=batch, match=agreement(out["hf"], out["ours"]),
                   hf=batch * NEW / common.median(times["hf"]), ours=batch * NEW / common.median(times["ours"]),
                   cpu_ratio=common.speedup(cpu["hf"], cpu["ours"]), bytes=nbytes)
        rows.append(row)
        print(f"decode {dname} batch {batch}: transformers {row['hf']:.1f} tok/s, groundup {row['ours']:.1f} tok/s, "
              f"greedy match {row['match']}; bandwidth now {bw[-1]['limit_GBps']:.1f} GB/s", flush=True)
    return rows


def decode_table(rows: list[dict], gbps: float) -> list[list]:
    """Rows with the bandwidth limit: batch x bandwidth / weight bytes per token."""
    out = []
    for r in rows:
        limit = r["batch"] * gbps * 1e9 / r["bytes"]
        out.append([r["dtype"], r["batch"], r["hf"], r["ours"], r["ours"] / r["hf"], r["cpu_ratio"], limit,
                    f"{r['hf'] / limit:.0%}", f"{r['ours'] / limit:.0%}", r["match"]])
    return out


def prefill_rows(hf, ours, dname: str, ids: torch.Tensor, warmup: int, repeat: int, raw: dict) -> list[list]:
    """Prefill as generation does it (fill the KV cache, logits of the last position only), and a plain
    full-logits forward."""
    cases = {
        "prefill (cache, last logits)": {
            "hf": lambda: hf(ids, use_cache=True, logits_to_keep=1).logits,
            "ours": lambda: ours(ids, cache=ours.new_cache(1, PREFILL), last_only=True),
        },
        "forward (all logits)": {"hf": lambda: hf(ids, use_cache=False).logits, "ours": lambda: ours(ids)},
    }
    rows = []
    for case, fns in cases.items():
        with torch.inference_mode():
            times, cpu = common.interleaved(fns, warmup, repeat)
        raw[f"{case} {dname}"] = {"wall": times, "cpu": cpu}
        t_hf, t_ours = common.median(times["hf"]), common.median(times["ours"])
        rows.append([dname, case, t_hf * 1e3, t_ours * 1e3, t_hf / t_ours, common.speedup(cpu["hf"], cpu["ours"]),
                     PREFILL / t_ours])
        print(f"{case} {dname}: transformers {t_hf * 1e3:.0f} ms, groundup {t_ours * 1e3:.0f} ms", flush=True)
    return rows


def main() -> None:
    args = common.parser(__doc__.splitlines()[0])
    args.add_argument("--dtype", choices=list(DTYPES), nargs="+", default=list(DTYPES))
    args.add_argument("--skip-decode", action="store_true")
    args.add_argument("--skip-prefill", action="store_true")
    args.add_argument("--profile", action="store_true", help="profile a 32-token decode (batch 1) and exit")
    args = args.parse_args()
    common.setup(args.threads)
    repeat = 1 if args.quick else 3
    hf, ours = build_pair()
    bw = [bandwidth()]
    print(f"memory bandwidth ({args.threads} threads): " + ", ".join(f"{k} {v:.1f}" for k, v in bw[0].items()),
          flush=True)
    g = torch.Generator().manual_seed(1)
    prompts = torch.randint(0, hf.config.vocab_size, (8, PROMPT), generator=g)
    long_prompt = torch.randint(0, hf.config.vocab_size, (1, PREFILL), generator=g)

    if args.profile:
        for dname in args.dtype:
            hf.to(DTYPES[dname])
            ours.to(DTYPES[dname])
            common.profile_ops({f"transformers {dname}": lambda: hf_generate(hf, prompts[:1], 32),
                                f"groundup {dname}": lambda: ours_generate(ours, prompts[:1], 32)})
        return
    decode, prefill, bytes_per_token, raw = [], [], {}, {}
    for dname in args.dtype:
        hf.to(DTYPES[dname])
        ours.to(DTYPES[dname])
        bytes_per_token[dname] = weight_bytes(ours)
        fast = copy.deepcopy(ours)
        pack_for_inference(fast)  # groundup's inference layout of the same weights (generate / chat / serve use it)
        if not args.skip_decode:
            decode += decode_rows(hf, fast, dname, prompts, repeat, bw, raw, bytes_per_token[dname])
        if not args.skip_prefill:
            prefill += prefill_rows(hf, fast, dname, long_prompt, 1, 2 if args.quick else 3, raw)
    overhead = overhead_rows(repeat + 2, raw)

    tables = {}
    gbps = max(b["limit_GBps"] for b in bw)  # the best the machine showed during the run
    mb = ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in bytes_per_token.items())
    if decode:
        title = (f"Greedy decode, GPT-2 124M, {PROMPT}-token prompts, {NEW} new tokens (tok/s = batch x {NEW} / "
                 f"median wall time of generate, prefill included; {repeat} interleaved repeats). Limit = "
                 f"bandwidth {gbps:.1f} GB/s (best of {len(bw)} probes in this run) / weight bytes per token ({mb}) "
                 "x batch")
        headers = ["dtype", "batch", "transformers tok/s", "groundup tok/s", "ratio (groundup/transformers)",
                   "ratio by CPU time", "limit tok/s", "transformers % of limit", "groundup % of limit",
                   "greedy tokens match (fp32 must)"]
        tables[title] = common.show(title, headers, decode_table(decode, gbps))
    if prefill:
        title = f"Prefill, GPT-2 124M, {PREFILL}-token prompt, batch 1 (median ms; ratio = speedup of groundup)"
        tables[title] = common.show(title, ["dtype", "case", "transformers ms", "groundup ms",
                                            "ratio (transformers ms / groundup ms)", "ratio by CPU time",
                                            "groundup tok/s"], prefill)
    title = ("Per-token overhead: greedy decode of a tiny GPT-2 (2 layers, d 64, vocab 256), 32-token prompt, "
             f"{NEW} new tokens, where compute is negligible (median ms per token)")
    tables[title] = common.show(title, ["dtype", "batch", "transformers ms/token", "groundup ms/token",
                                        "ratio (transformers / groundup)", "ratio by CPU time"], overhead)
    extra = {"bandwidth": bw, "weight_bytes_per_token": bytes_per_token, "seconds": raw}
    path = common.write_results(common.result_name("decode", args.tag), tables, extra)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
