"""Serving under load: the groundup server (continuous batching) on SmolLM2-135M-Instruct, driven on localhost by
a bounded asyncio + httpx load generator that streams every completion.

  1. Throughput (generated tokens/s) with 16 concurrent clients vs the same requests one at a time
     (the anchor: no batching), p50 / p99 time to first token and inter-token latency (target >= 4x).
  2. A batch whose requests use 4 different LoRA adapters vs the same load on one adapter (target >= 0.8x).
  3. `transformers serve` (continuous batching) on the same model and load, when it runs here: the ratio, or why not.

Every request has its own seed (temperature 0.8), so the two runs of a comparison generate the same tokens.

    python bench/serve_load.py [--quick] [--threads N] [--no-transformers]
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import common  # noqa: E402
from serve_helpers import running_server  # noqa: E402

from groundup.loading import load_pretrained  # noqa: E402
from groundup.peft import LoraConfig, inject, set_adapter, trainable_parameters  # noqa: E402
from groundup.serve.app import create_app  # noqa: E402
from groundup.serve.engine import Engine, EngineConfig  # noqa: E402
from groundup.serve.registry import ServedModels  # noqa: E402
from groundup.serve.server import ServeJob, for_serving, served_dtype  # noqa: E402

MODEL = "smollm2-135m-instruct"
ADAPTERS = ("math", "poetry", "law", "code")
CLIENTS = 16


def workload(n: int, max_tokens: int) -> list[dict]:
    text = (Path(__file__).resolve().parents[1] / "groundup" / "assets" / "shakespeare.txt").read_text()
    lines = [line for line in text.splitlines() if len(line.split()) >= 4][:400]
    return [{"prompt": " ".join(lines[3 * i : 3 * i + 1 + i % 3]), "max_tokens": max_tokens, "temperature": 0.8,
             "seed": i, "stream": True, "stream_options": {"include_usage": True}} for i in range(n)]


async def one_request(client: httpx.AsyncClient, url: str, body: dict) -> dict:
    t0 = time.perf_counter()
    stamps, usage = [], None
    async with client.stream("POST", f"{url}/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                usage = event["usage"]
            elif event["choices"] and event["choices"][0]["text"]:
                stamps.append(time.perf_counter())
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return {"ttft": stamps[0] - t0 if stamps else float("nan"), "gaps": gaps,
            "tokens": usage["completion_tokens"] if usage else len(stamps)}


async def drive(url: str, bodies: list[dict], concurrency: int) -> dict:
    """Run every body with at most `concurrency` in flight (a bounded pool of clients)."""
    queue: asyncio.Queue[dict] = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    results: list[dict] = []

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            results.append(await one_request(client, url, queue.get_nowait()))

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*[worker(client) for _ in range(concurrency)])
        wall = time.perf_counter() - t0
    tokens = sum(r["tokens"] for r in results)
    ttft = sorted(r["ttft"] for r in results)
    gaps = sorted(g for r in results for g in r["gaps"]) or [float("nan")]
    pct = lambda xs, q: xs[min(len(xs) - 1, int(q * len(xs)))]
    return {"tok_s": tokens / wall, "tokens": tokens, "wall_s": wall, "ttft_p50": statistics.median(ttft),
            "ttft_p99": pct(ttft, 0.99), "itl_p50": statistics.median(gaps), "itl_p99": pct(gaps, 0.99)}


def with_adapters(model: torch.nn.Module) -> torch.nn.Module:
    """Four LoRA adapters (r=8 on q, v) with non-zero B, so every row really computes its adapter."""
    g = torch.Generator().manual_seed(0)
    for name in ADAPTERS:
        model = inject(model, LoraConfig(r=8, alpha=16, target_modules=["q_proj", "v_proj"]), name)
        set_adapter(model, name)
        with torch.no_grad():
            for p in trainable_parameters(model).values():
                p.add_(0.01 * torch.randn(p.shape, generator=g))
    return model


def groundup_runs(model, tok, bodies: list[dict], quick: bool) -> dict[str, dict]:
    engine = Engine(model, tok, EngineConfig(max_batch=CLIENTS, max_seq_len=256, max_queue=4 * CLIENTS))
    app = create_app(engine, ServedModels("smollm2", dict.fromkeys(ADAPTERS, "lora")))
    one = [{**b, "model": ADAPTERS[0]} for b in bodies]
    mixed = [{**b, "model": ADAPTERS[i % len(ADAPTERS)]} for i, b in enumerate(bodies)]
    plain = [{**b, "model": "smollm2"} for b in bodies]
    out = {}
    with running_server(app) as (_, url):
        asyncio.run(drive(url, plain[:2], 2))  # warm up
        out["base, one at a time"] = asyncio.run(drive(url, plain, 1))
        out[f"base, {CLIENTS} concurrent"] = asyncio.run(drive(url, plain, CLIENTS))
        out[f"1 LoRA adapter, {CLIENTS} concurrent"] = asyncio.run(drive(url, one, CLIENTS))
        out[f"4 LoRA adapters mixed, {CLIENTS} concurrent"] = asyncio.run(drive(url, mixed, CLIENTS))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def transformers_run(model, tok, bodies: list[dict], threads: int) -> tuple[dict | None, str]:
    """`transformers serve` on the same weights (converted to a Hugging Face folder) and the same load."""
    from groundup.interop.hf import save_hf

    with tempfile.TemporaryDirectory() as tmp:
        folder = save_hf(model, tok, Path(tmp) / "smollm2-hf")
        port = free_port()
        cmd = [str(Path(sys.executable).with_name("transformers")), "serve", str(folder), "--port", str(port),
               "--device", "cpu", "--continuous-batching"]
        log = Path(tmp) / "serve.log"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(600):
                if proc.poll() is not None:
                    return None, f"`{' '.join(cmd[1:3])} ...` exited: {log.read_text()[-400:]}"
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                        break
                time.sleep(0.5)
            else:
                return None, "transformers serve did not answer /health within 5 minutes"
            named = [{k: v for k, v in b.items() if k != "seed"} | {"model": str(folder)} for b in bodies]
            try:
                asyncio.run(drive(url, named[:1], 1))  # warm up (loads the model)
                return asyncio.run(drive(url, named, CLIENTS)), ""
            except (httpx.HTTPError, KeyError, ValueError) as e:
                return None, f"transformers serve failed under the load: {type(e).__name__}: {e}"[:400]
        finally:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)


def row(name: str, r: dict, anchor: float) -> list:
    ms = lambda s: 1000 * s
    return [name, r["tokens"], r["tok_s"], r["tok_s"] / anchor, ms(r["ttft_p50"]), ms(r["ttft_p99"]),
            ms(r["itl_p50"]), ms(r["itl_p99"])]


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--no-transformers", action="store_true", help="skip the `transformers serve` comparison")
    args = p.parse_args()
    common.setup(args.threads)
    n, new = (CLIENTS, 24) if args.quick else (4 * CLIENTS, 128)
    model, tok = load_pretrained(MODEL, served_dtype(ServeJob()))  # as `groundup serve` runs by default (auto)
    bodies = workload(n, new)
    runs = groundup_runs(for_serving(with_adapters(copy.deepcopy(model))), tok, bodies, args.quick)
    headers = ["run", "tokens", "tokens/s", "x anchor", "TTFT p50 ms", "TTFT p99 ms", "ITL p50 ms", "ITL p99 ms"]
    seq = runs["base, one at a time"]["tok_s"]
    tables = {"batching": common.show(f"continuous batching vs one at a time ({n} requests x {new} tokens)", headers,
                                      [row(k, v, seq) for k, v in runs.items() if k.startswith("base")])}
    one = runs[f"1 LoRA adapter, {CLIENTS} concurrent"]["tok_s"]
    tables["adapters"] = common.show("4 LoRA adapters in one batch vs one adapter", headers,
                                     [row(k, v, one) for k, v in runs.items() if "LoRA" in k])
    why = "skipped (--no-transformers)"
    if not args.no_transformers:
        hf, why = transformers_run(model, tok, bodies, args.threads)
        if hf is not None:
            ours = runs[f"base, {CLIENTS} concurrent"]
            tables["transformers"] = common.show("groundup serve vs transformers serve (the anchor)", headers, [
                row("transformers serve --continuous-batching", hf, hf["tok_s"]),
                row("groundup serve", ours, hf["tok_s"])])
    if why:
        print(f"transformers serve: {why}")
    name = common.result_name("serve_load", args.tag)
    path = common.write_results(name, tables, {"transformers_serve": why or "ran"})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
