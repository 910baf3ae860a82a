"""LoRA training throughput: groundup (peft.inject) vs Hugging Face peft (get_peft_model) on the same model.

  1. LoRA step (r=8, alpha=16 on q,v; forward + backward + AdamW on the adapter only): groundup vs peft on
     transformers, same weights, same adapter values, same batch (8 x 128 tokens), tokens/s and the ratio.
  2. Full fine-tuning step (every weight trains): groundup vs a plain transformers loop, same everything.
  3. Peak memory of each of the four, each in a fresh process (--measure NAME): ru_maxrss of the whole process,
     and the peak of the training steps alone (VmHWM reset after loading).
  4. Decode speed of a merged LoRA model vs its base model: greedy, batch 1, 32-token prompt, 64 new tokens;
     merge_and_unload, then pack_for_inference for both (target: within 5%).

Both sides run the identical step function (same loss code, same torch AdamW, bf16 autocast by default): only
the model and its adapter implementation differ. Model: SmolLM2-135M-Instruct from the packaged GGUF (groundup
load_gguf; transformers from_pretrained(dir, gguf_file=...)); --quick: a tiny random Llama (2 layers, d 64).

    python bench/lora_throughput.py [--quick] [--threads N] [--dtype bf16|fp32]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402
from memory import peak_rss_mb, reset_peak, window_peak_mb  # noqa: E402

from groundup import runtime  # noqa: E402
from groundup.generate import GenerationConfig, generate  # noqa: E402
from groundup.nn.packed_linear import pack_for_inference  # noqa: E402
from groundup.peft import LoraConfig, delete_adapter, inject, merge_and_unload, trainable_parameters  # noqa: E402

BATCH, SEQ = 8, 128
R, ALPHA, TARGETS = 8, 16.0, ("q_proj", "v_proj")
PROMPT, NEW = 32, 64
DTYPES = {"bf16": torch.bfloat16, "fp32": None}
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=True)
MEASURES = ("groundup-lora", "peft-lora", "groundup-full", "transformers-full")


# --- models -----------------------------------------------------------------------------------------------------
def load_model(side: str, quick: bool) -> nn.Module:
    """'groundup' (DecoderLM) or 'hf' (transformers LlamaForCausalLM), fp32, with the same weights."""
    import transformers

    transformers.logging.set_verbosity_error()
    if quick:
        torch.manual_seed(0)
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY))
        if side == "hf":
            return hf
        from groundup.interop.hf import load_hf

        with tempfile.TemporaryDirectory() as tmp:
            hf.save_pretrained(tmp)
            return load_hf(tmp, with_tokenizer=False)[0]
    from groundup.loading import packaged_path

    path = packaged_path("smollm2-135m-instruct")
    if side == "hf":
        return transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    from groundup.interop.gguf import load_gguf

    return load_gguf(path)[0]


def add_lora(model: nn.Module, side: str) -> nn.Module:
    """LoRA r=8, alpha=16, no dropout on q,v: groundup's inject, or peft's get_peft_model on the transformers model."""
    if side == "groundup":
        return inject(model, LoraConfig(r=R, alpha=ALPHA, target_modules=TARGETS))
    import peft

    return peft.get_peft_model(model, peft.LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, bias="none",
                                                      target_modules=list(TARGETS), task_type="CAUSAL_LM"))


def lora_pair(ours: nn.Module, hf: nn.Module) -> tuple[nn.Module, nn.Module]:
    """LoRA on both, with identical (random, non-zero) A and B so both compute the same function."""
    ours, hf = add_lora(ours, "groundup"), add_lora(hf, "hf")
    theirs = dict(hf.named_parameters())
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in trainable_parameters(ours).items():  # blocks.{i}.attn.{q,v}_proj.lora_{A,B}.default.weight
            layer, proj, ab = name.split(".")[1], name.split(".")[3], name.split(".")[4]
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
            theirs[f"base_model.model.model.layers.{layer}.self_attn.{proj}.{ab}.default.weight"].copy_(p)
    return ours, hf


def forward_fn(model: nn.Module, side: str):
    if side == "hf":
        return lambda x: model(input_ids=x, use_cache=False).logits  # (B, T, V)
    return lambda x: model(x)  # (B, T, V)


def check_same(ours: nn.Module, hf: nn.Module, x: torch.Tensor, what: str) -> float:
    with torch.no_grad():
        diff = (forward_fn(ours, "groundup")(x) - forward_fn(hf, "hf")(x)).abs().max().item()
    print(f"{what}: max |logits(groundup) - logits(transformers)| = {diff:.2e} (fp32)", flush=True)
    if diff > 1e-2:
        raise SystemExit(f"FAIL: {what} disagree by {diff:.2e}; the comparison would not be the same work")
    return diff


def batches(vocab: int, n: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (BATCH, SEQ + 1), generator=g)  # (B, T + 1)
        out.append((ids[:, :-1], ids[:, 1:]))
    return out


def make_step(model: nn.Module, side: str, data, dtype: torch.dtype | None):
    """One training step per call: forward, cross-entropy, backward, AdamW over the trainable parameters only."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0, foreach=True)
    fwd, state = forward_fn(model, side), {"i": 0}
    model.train()

    def step() -> float:
        x, y = data[state["i"] % len(data)]
        state["i"] += 1
        ctx = torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with ctx:
            logits = fwd(x)  # (B, T, V)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step, sum(p.numel() for p in params)


def full_ft(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(True)
    return model


# --- 3: memory, one configuration per fresh process -------------------------------------------------------------
def measure(name: str, args) -> None:
    common.setup(args.threads)
    side = "hf" if name.split("-")[0] in ("peft", "transformers") else "groundup"
    model = load_model(side, args.quick)
    model = add_lora(model, side) if name.endswith("lora") else full_ft(model)
    load_mb = peak_rss_mb()
    window = reset_peak()
    step, _ = make_step(model, side, batches(model.config.vocab_size), DTYPES[args.dtype])
    for _ in range(3):
        step()
    print("MEASURE " + json.dumps({"load_mb": load_mb, "peak_mb": max(load_mb, peak_rss_mb()),
                                   "steps_peak_mb": window_peak_mb() if window else None}), flush=True)


def memory_rows(args) -> list[list[Any]]:
    out = {}
    for name in MEASURES:
        cmd = [sys.executable, __file__, "--measure", name, "--threads", str(args.threads), "--dtype", args.dtype]
        cmd += ["--quick"] if args.quick else []
        text = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        out[name] = json.loads(next(line for line in text.splitlines() if line.startswith("MEASURE "))[8:])
        print(f"memory {name}: {out[name]}", flush=True)
    rows = []
    for ours, anchor in (("groundup-lora", "peft-lora"), ("groundup-full", "transformers-full")):
        a, b = out[anchor], out[ours]
        ratio = b["steps_peak_mb"] / a["steps_peak_mb"] if a["steps_peak_mb"] and b["steps_peak_mb"] else "-"
        rows.append([ours.split("-")[1], a["peak_mb"], b["peak_mb"], a["steps_peak_mb"], b["steps_peak_mb"], ratio])
    return rows


# --- 1 + 2: training steps, interleaved ---------------------------------------------------------------------------
def step_rows(ours, hf, data, args, raw: dict) -> list[list[Any]]:
    dtype, rows = DTYPES[args.dtype], []
    warmup, repeat = (1, 3) if args.quick else (1, 6)
    for case in ("LoRA r=8 q,v", "full fine-tuning"):
        if case.startswith("LoRA"):
            ours, hf = lora_pair(ours, hf)
            check_same(ours, hf, data[0][0], "LoRA models")
        else:
            ours, hf = full_ft(delete_adapter(ours, "default")), full_ft(hf.unload())
        step_ours, n_ours = make_step(ours, "groundup", data, dtype)
        step_hf, n_hf = make_step(hf, "hf", data, dtype)
        loss_ours, loss_hf = step_ours(), step_hf()  # the first step: same weights, same batch, same loss
        print(f"{case}: trainable groundup {n_ours:,}, anchor {n_hf:,}; first-step loss groundup {loss_ours:.4f}, "
              f"anchor {loss_hf:.4f}", flush=True)
        wall, cpu = common.interleaved({"anchor": step_hf, "groundup": step_ours}, warmup, repeat)
        raw[case] = {"wall": wall, "cpu": cpu}
        t_a, t_o = common.median(wall["anchor"]), common.median(wall["groundup"])
        rows.append([case, f"{n_hf:,} / {n_ours:,}", BATCH * SEQ / t_a, BATCH * SEQ / t_o, t_a / t_o,
                     common.speedup(cpu["anchor"], cpu["groundup"]), max(common.spread(wall[k]) for k in wall),
                     abs(loss_ours - loss_hf)])
        print(f"{case}: anchor {BATCH * SEQ / t_a:.0f} tok/s, groundup {BATCH * SEQ / t_o:.0f} tok/s", flush=True)
    return rows


# --- 4: decode, merged LoRA vs base --------------------------------------------------------------------------------
def decode_models(base: nn.Module) -> dict[str, nn.Module]:
    """fp32 copies: the base, and the base with a (non-zero) LoRA adapter, unmerged and merged; checked."""
    lora = inject(copy.deepcopy(base), LoraConfig(r=R, alpha=ALPHA, target_modules=TARGETS))
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in trainable_parameters(lora).values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    merged = merge_and_unload(copy.deepcopy(lora))
    x = torch.randint(0, base.config.vocab_size, (1, 16), generator=g)
    with torch.no_grad():
        moved = (lora(x) - base(x)).abs().max().item()
        diff = (merged(x) - lora(x)).abs().max().item()
    print(f"decode models: adapter moves logits by {moved:.2e}; merged vs unmerged {diff:.2e}", flush=True)
    return {"base": copy.deepcopy(base), "merged": merged, "base (unpacked)": copy.deepcopy(base), "unmerged": lora}


def decode_rows(base: nn.Module, args, raw: dict) -> list[list[Any]]:
    rows = []
    g = torch.Generator().manual_seed(5)
    prompt = torch.randint(0, base.config.vocab_size, (PROMPT,), generator=g).tolist()
    cfg = GenerationConfig(max_new_tokens=NEW, temperature=0.0)
    for dname, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        models = decode_models(base)
        for name, m in models.items():
            m.to(dtype).eval()
            if name in ("base", "merged"):
                pack_for_inference(m)  # generate / chat / serve decode with this layout (LoRA layers cannot pack)
        outs = {name: generate(m, prompt, cfg)[0] for name, m in models.items()}
        fns = {name: (lambda m=m: generate(m, prompt, cfg)) for name, m in models.items()}
        wall, cpu = common.interleaved(fns, 1, 3 if args.quick else 5)
        raw[f"decode {dname}"] = {"wall": wall, "cpu": cpu}
        tps = {k: NEW / common.median(v) for k, v in wall.items()}
        ratio = tps["merged"] / tps["base"]
        rows.append([dname, tps["base"], tps["merged"], ratio, "yes" if abs(ratio - 1) <= 0.05 else "NO",
                     common.speedup(cpu["base"], cpu["merged"]), tps["base (unpacked)"], tps["unmerged"],
                     tps["unmerged"] / tps["base (unpacked)"], "yes" if outs["merged"] == outs["unmerged"] else "no"])
        print(f"decode {dname}: base {tps['base']:.1f} tok/s, merged LoRA {tps['merged']:.1f} tok/s", flush=True)
        del models
    return rows


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--dtype", choices=list(DTYPES), default=runtime.best_dtype("cpu", "train"),
                   help="training autocast dtype, both sides (default: what dtype=auto trains SmolLM2 in here)")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--measure", choices=MEASURES, help=argparse.SUPPRESS)  # the memory child process
    args = p.parse_args()
    if args.measure:
        return measure(args.measure, args)
    common.setup(args.threads)
    model_name = "tiny Llama (2 layers, d 64, vocab 512) [SMOKE RUN: not results]" if args.quick else \
        "SmolLM2-135M-Instruct"
    ours, hf = load_model("groundup", args.quick), load_model("hf", args.quick)
    data = batches(ours.config.vocab_size)
    check_same(ours, hf, data[0][0], "base models")
    tables, raw = {}, {}
    decode = decode_rows(ours, args, raw)
    steps = step_rows(ours, hf, data, args, raw)
    del ours, hf
    title = (f"Training step, {model_name}, batch {BATCH} x {SEQ} tokens, {args.dtype} autocast, AdamW on the "
             "trainable parameters (tokens/s = tokens / median step; ratio > 1: groundup faster). Anchor: peft "
             "get_peft_model (LoRA) / a plain transformers loop (full)")
    tables[title] = common.show(title, ["case", "trainable (anchor / groundup)", "anchor tok/s", "groundup tok/s",
                                        "ratio (groundup / anchor speed)", "ratio by CPU time", "max spread",
                                        "first-step |loss diff|"], steps)
    if not args.skip_memory:
        title = (f"Peak memory (MB) of 3 training steps, {model_name}, each in a fresh process: process = ru_maxrss "
                 "(load included); steps = VmHWM reset after loading (the training alone)")
        tables[title] = common.show(title, ["case", "anchor process", "groundup process", "anchor steps",
                                            "groundup steps", "ratio steps (groundup / anchor)"], memory_rows(args))
    title = (f"Greedy decode, {model_name}, batch 1, {PROMPT}-token prompt, {NEW} new tokens (tok/s, prefill included):"
             " LoRA r=8 q,v merged (merge_and_unload + pack_for_inference) vs its base (pack_for_inference); "
             "target ratio within 5%. Unpacked pair: the unmerged adapter vs the unpacked base")
    tables[title] = common.show(title, ["dtype", "base tok/s", "merged LoRA tok/s", "ratio (merged / base)",
                                        "within 5%", "ratio by CPU time", "base unpacked tok/s",
                                        "unmerged LoRA tok/s", "ratio (unmerged / base unpacked)",
                                        "merged greedy == unmerged"], decode)
    path = common.write_results(common.result_name("lora_throughput", args.tag), tables,
                                {"quick": args.quick, "model": model_name, "seconds": raw})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
