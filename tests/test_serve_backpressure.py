"""Backpressure and lifecycle on a real server: a client that disconnects mid-stream frees its slot, a full queue
answers 429 with Retry-After, a request past its timeout gets an error, and shutdown finishes the requests in
flight. The model is slowed down (a sleep per forward) so requests stay in flight; nothing asserts a duration."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import httpx
import pytest
from serve_helpers import SlowDecoder, chat_tokenizer, running_server, tiny_decoder

from groundup.generate import GenerationConfig, generate_text
from groundup.serve.app import AppConfig, create_app
from groundup.serve.engine import Engine, EngineConfig
from groundup.serve.registry import ServedModels


@pytest.fixture(scope="module")
def tok():
    return chat_tokenizer()


@contextlib.contextmanager
def slow_server(tok, delay: float, **engine):
    model = tiny_decoder(tok.vocab_size, SlowDecoder)
    model.delay = delay
    app = create_app(Engine(model, tok, EngineConfig(**engine)), ServedModels("tiny"), AppConfig(shutdown_grace_s=30))
    with running_server(app) as (server, url):
        yield server, url, model


def body(max_tokens: int, stream: bool = True, prompt: str = "ROMEO: ") -> dict:
    return {"model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": stream}


def sse_payloads(lines: list[str]) -> list[dict | str]:
    return [line[6:] if line == "data: [DONE]" else json.loads(line[6:]) for line in lines if line.startswith("data: ")]


def health(url: str) -> dict:
    return httpx.get(f"{url}/health").json()


def wait_for(predicate, what: str, limit: float = 20.0) -> None:
    end = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < end, f"never saw: {what}"
        time.sleep(0.01)


def generated_tokens(url: str) -> int:
    lines = httpx.get(f"{url}/metrics").text.splitlines()
    return int(float(next(x for x in lines if x.startswith("groundup_generation_tokens_total ")).split()[1]))


def test_a_client_that_disconnects_mid_stream_frees_its_slot(tok) -> None:
    with slow_server(tok, 0.02, max_batch=1) as (_, url, _model):
        with httpx.Client(timeout=30) as client, client.stream("POST", f"{url}/v1/completions", json=body(80)) as r:
            lines = r.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            assert json.loads(first[6:])["choices"][0]["finish_reason"] is None
        # the connection is closed: the engine drops the request long before its 80 tokens
        wait_for(lambda: health(url)["running"] == 0, "the slot freed")
        assert generated_tokens(url) < 40
        ok = httpx.post(f"{url}/v1/completions", json=body(3, stream=False), timeout=30).json()
        assert ok["usage"]["completion_tokens"] == 3  # the one slot serves the next request


def test_a_full_queue_answers_429_with_retry_after(tok) -> None:
    async def scenario(url: str) -> tuple[httpx.Response, dict, list]:
        async with httpx.AsyncClient(timeout=30) as client:
            async with client.stream("POST", f"{url}/v1/completions", json=body(30)) as running:
                lines = running.aiter_lines()
                async for line in lines:  # the first request holds the only slot
                    if line.startswith("data: "):
                        break
                queued = asyncio.create_task(client.post(f"{url}/v1/completions", json=body(4, stream=False)))
                while (await client.get(f"{url}/health")).json()["queued"] < 1:  # the second waits in the queue
                    await asyncio.sleep(0.01)
                refused = await client.post(f"{url}/v1/completions", json=body(4, stream=False))
                rest = [line async for line in lines if line.startswith("data: ")]
            return refused, (await queued).json(), rest

    with slow_server(tok, 0.02, max_batch=1, max_queue=1) as (_, url, _model):
        refused, queued, rest = asyncio.run(scenario(url))
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["type"] == "rate_limit_error" and refused.json()["error"]["code"] == "queue_full"
    assert queued["usage"]["completion_tokens"] == 4 and rest[-1] == "data: [DONE]"


def test_requests_past_their_timeout_get_an_error(tok) -> None:
    with slow_server(tok, 0.02, request_timeout=0.3) as (_, url, _model):
        plain = httpx.post(f"{url}/v1/completions", json=body(80, stream=False), timeout=30)
        assert plain.status_code == 504 and "timed out after" in plain.json()["error"]["message"]
        streamed = httpx.post(f"{url}/v1/completions", json=body(80), timeout=30)
        events = sse_payloads(streamed.text.splitlines())
        assert events[-2]["error"]["type"] == "timeout" and events[-1] == "[DONE]"
        assert health(url)["running"] == 0


def test_shutdown_finishes_the_requests_in_flight(tok) -> None:
    prompts = ["ROMEO: ", "JULIET: "]

    async def scenario(url: str, server) -> list[list[str]]:
        async with httpx.AsyncClient(timeout=30) as client:
            async def one(prompt: str, started: asyncio.Event) -> list[str]:
                out = []
                async with client.stream("POST", f"{url}/v1/completions", json=body(25, prompt=prompt)) as r:
                    async for line in r.aiter_lines():
                        if line.startswith("data: "):
                            out.append(line)
                            started.set()
                return out

            flags = [asyncio.Event() for _ in prompts]
            tasks = [asyncio.create_task(one(p, f)) for p, f in zip(prompts, flags, strict=True)]
            for f in flags:
                await f.wait()
            server.should_exit = True  # what SIGTERM / Ctrl-C does
            return await asyncio.gather(*tasks)

    with slow_server(tok, 0.02, max_batch=2) as (server, url, model):
        streams = asyncio.run(scenario(url, server))
        with pytest.raises(httpx.ConnectError):  # it listens no more
            httpx.get(f"{url}/health", timeout=5)
    model.delay = 0.0
    for prompt, lines in zip(prompts, streams, strict=True):
        events = sse_payloads(lines)
        assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] == "length"
        text = "".join(e["choices"][0]["text"] for e in events[:-1])
        assert text == generate_text(model, tok, prompt, GenerationConfig(max_new_tokens=25, temperature=0))
