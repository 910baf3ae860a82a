"""The OpenAI-compatible server end to end: a real uvicorn server on localhost, loaded from disk the way
`groundup serve` loads it, driven by the official `openai` client and by raw HTTP. Expected outputs come
from groundup.generate / embed_texts run on the same files in this process (serving each request alone)."""

from __future__ import annotations

import asyncio
import copy
import json

import httpx
import numpy as np
import openai
import pytest
import torch
from serve_helpers import running_server, save_assets

from groundup import peft as P
from groundup.chat import apply_chat_template
from groundup.cli import parse_job
from groundup.embed import embed_texts
from groundup.generate import GenerationConfig, generate_text
from groundup.loading import load_pretrained
from groundup.quant import QuantError
from groundup.serve.app import AppConfig, create_app, embeddings_from_base64
from groundup.serve.engine import EngineConfig
from groundup.serve.server import ServeJob, build_engine, quantize_model


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return save_assets(tmp_path_factory.mktemp("serve"))


def job(assets, **kw) -> ServeJob:
    adapters = [f"{n}={assets[n]}" for n in ("lora-a", "lora-b", "soft")]
    return ServeJob(model=str(assets["model"]), name="tiny", adapter=adapters, embedding_model=str(assets["encoder"]),
                    engine=EngineConfig(max_batch=8, max_seq_len=64), **kw)


@pytest.fixture(scope="module")
def server(assets):
    engine, models = build_engine(job(assets))
    with running_server(create_app(engine, models, AppConfig(max_body_bytes=20_000))) as (srv, url):
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def oracle(assets):
    """(model for a served name, tokenizer): the same files loaded here, each adapter alone."""
    base, tok = load_pretrained(assets["model"])

    def model_for(name: str):
        if name == "tiny":
            return base
        return P.load_adapter(load_pretrained(assets["model"])[0], assets[name], name)

    return model_for, tok


def expected(oracle, name: str, prompt: str, **cfg) -> str:
    model_for, tok = oracle
    return generate_text(model_for(name), tok, prompt, GenerationConfig(**cfg))


def metric(url: str, name: str) -> float:
    line = next(x for x in httpx.get(f"{url}/metrics").text.splitlines() if x.startswith(name + " "))
    return float(line.split()[-1])


# --- every endpoint ------------------------------------------------------------------------------------------
def test_models_health_and_metrics(server, client, assets) -> None:
    listed = {m.id: m for m in client.models.list().data}
    assert set(listed) == {"tiny", "lora-a", "lora-b", "soft", str(assets["encoder"])}
    assert listed["lora-a"].model_extra["parent"] == "tiny" and listed["tiny"].model_extra["parent"] is None
    assert httpx.get(f"{server}/health").json()["status"] == "ok"
    text = httpx.get(f"{server}/metrics").text
    for name in ("groundup_requests_total", "groundup_queue_depth", "groundup_running_requests",
                 "groundup_batch_size_bucket", "groundup_time_to_first_token_seconds_count",
                 "groundup_inter_token_latency_seconds_sum", "groundup_generation_tokens_total"):
        assert name in text
    assert 'groundup_requests_total{endpoint="/health",status="200"} 1' in text


@pytest.mark.parametrize("name", ["tiny", "lora-a", "soft"])
def test_completion_equals_generating_alone(client, oracle, name) -> None:
    out = client.completions.create(model=name, prompt="ROMEO: ", max_tokens=12, temperature=0)
    assert out.choices[0].text == expected(oracle, name, "ROMEO: ", max_new_tokens=12, temperature=0)
    assert out.choices[0].finish_reason == "length" and out.model == name
    assert out.usage.prompt_tokens == len(oracle[1].encode("ROMEO: ")) and out.usage.completion_tokens == 12


def test_seeded_sampling_and_stop_strings(client, oracle) -> None:
    out = client.completions.create(model="lora-b", prompt="KING: ", max_tokens=20, temperature=0.8, top_p=0.9,
                                    seed=7)
    assert out.choices[0].text == expected(oracle, "lora-b", "KING: ", max_new_tokens=20, temperature=0.8, top_p=0.9,
                                           seed=7)
    greedy = expected(oracle, "tiny", "KING: ", max_new_tokens=20, temperature=0)
    stop = greedy[4:6]
    cut = client.completions.create(model="tiny", prompt="KING: ", max_tokens=20, temperature=0, stop=[stop])
    assert cut.choices[0].text == greedy[: greedy.index(stop)] and cut.choices[0].finish_reason == "stop"


def test_streamed_completion_is_the_same_text_in_openai_chunks(server, client, oracle) -> None:
    chunks = list(client.completions.create(model="lora-a", prompt="To be", max_tokens=15, temperature=0,
                                            stream=True))
    assert "".join(c.choices[0].text for c in chunks) == expected(oracle, "lora-a", "To be", max_new_tokens=15,
                                                                  temperature=0)
    assert [c.choices[0].finish_reason for c in chunks][-1] == "length" and len(chunks) > 2
    raw = httpx.post(f"{server}/v1/completions", json={"model": "tiny", "prompt": "A", "max_tokens": 3,
                                                       "stream": True})
    events = [line for line in raw.text.split("\n\n") if line]
    assert raw.headers["content-type"].startswith("text/event-stream") and events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)
    assert json.loads(events[0][6:])["object"] == "text_completion"


def test_chat_uses_the_template_and_stops_at_the_end_of_turn(client, oracle) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who art thou?"}]
    _, tok = oracle
    prompt = apply_chat_template(tok.chat_template, messages, True, "<|endoftext|>", "<|endoftext|>")
    want = expected(oracle, "lora-b", prompt, max_new_tokens=20, temperature=0, stop=("<|im_end|>",))
    out = client.chat.completions.create(model="lora-b", messages=messages, max_tokens=20, temperature=0)
    assert out.choices[0].message.content == want and out.choices[0].message.role == "assistant"
    assert out.object == "chat.completion" and out.usage.prompt_tokens == len(tok.encode(prompt))
    stream = client.chat.completions.create(model="lora-b", messages=messages, max_tokens=20, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].usage.completion_tokens > 0
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want


def test_embeddings_match_embed_texts(client, assets) -> None:
    encoder, tok = load_pretrained(assets["encoder"])
    texts = ["A man is eating food.", "Someone eats."]
    want = embed_texts(encoder, tok, texts).numpy()
    name = str(assets["encoder"])
    for fmt in ("float", "base64"):
        out = client.embeddings.create(model=name, input=texts, encoding_format=fmt)
        got = np.array([d.embedding if fmt == "float" else embeddings_from_base64(d.embedding) for d in out.data])
        np.testing.assert_allclose(got, want, atol=1e-5)
    default = client.embeddings.create(model=name, input="Someone eats.")  # asks for base64 and decodes it
    np.testing.assert_allclose(np.array(default.data[0].embedding), want[1], atol=1e-5)
    assert default.usage.prompt_tokens == len(tok.encode("Someone eats.", add_special_tokens=True))


def test_concurrent_requests_for_different_adapters_equal_serving_each_alone(server, oracle) -> None:
    jobs = [(name, prompt, seed) for seed, (name, prompt) in enumerate(
        [("tiny", "ROMEO: "), ("lora-a", "ROMEO: "), ("lora-b", "JULIET: "), ("soft", "Hark"), ("lora-a", "Now is"),
         ("soft", "O "), ("lora-b", "What "), ("tiny", "Good morrow")])]

    async def all_at_once() -> list[str]:
        client = openai.AsyncOpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=60)
        outs = await asyncio.gather(*[client.completions.create(model=n, prompt=p, max_tokens=24, temperature=0.7,
                                                                seed=s) for n, p, s in jobs])
        await client.close()
        return [o.choices[0].text for o in outs]

    before = metric(server, "groundup_batch_size_sum"), metric(server, "groundup_batch_size_count")
    texts = asyncio.run(all_at_once())
    for (name, prompt, seed), text in zip(jobs, texts, strict=True):
        assert text == expected(oracle, name, prompt, max_new_tokens=24, temperature=0.7, seed=seed), name
    steps = metric(server, "groundup_batch_size_count") - before[1]
    rows = metric(server, "groundup_batch_size_sum") - before[0]
    assert rows / steps > 1.5  # the requests really ran together (8 x 23 decode rows in fewer steps)


# --- bad input -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("body, param, code", [
    ({"model": "nope", "prompt": "A"}, "model", "model_not_found"),
    ({"prompt": "A"}, "model", "missing_model"),
    ({"model": "tiny", "prompt": "A", "max_tokens": -3}, "max_tokens", None),
    ({"model": "tiny", "prompt": "A", "max_tokens": 0}, "max_tokens", None),
    ({"model": "tiny", "prompt": "A", "max_tokens": 10**12}, "max_tokens", "context_length_exceeded"),
    ({"model": "tiny", "prompt": "word " * 80}, "prompt", "context_length_exceeded"),
    ({"model": "tiny", "prompt": "A", "temperature": "hot"}, "temperature", None),
    ({"model": "tiny", "prompt": "A", "temperature": 7}, "temperature", None),
    ({"model": "tiny", "prompt": "A", "n": 3}, "n", "unsupported_parameter"),
    ({"model": "tiny", "prompt": ["A", "B"]}, "prompt", None),
    ({"model": "tiny", "prompt": [5, 10**9]}, "prompt", None),
    ({"model": "tiny", "prompt": None}, "prompt", None),
    ({"model": "tiny", "prompt": "A", "stop": ["a", "b", "c", "d", "e"]}, "stop", None),
    ({"model": "tiny", "prompt": "A", "stream": "yes"}, "stream", None),
])
def test_bad_completion_requests_get_400_naming_the_field(server, body, param, code) -> None:
    r = httpx.post(f"{server}/v1/completions", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]
    assert code is None or err["code"] == code


def test_bad_chat_embedding_and_raw_requests(server, client) -> None:
    def post(path: str, **kw) -> httpx.Response:
        return httpx.post(f"{server}{path}", **kw)

    assert post("/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "bot", "content": "x"}]}
                ).json()["error"]["param"] == "messages[0]"
    assert post("/v1/embeddings", json={"model": "tiny", "input": "x"}).json()["error"]["code"] == "model_not_found"
    assert post("/v1/embeddings", json={"model": "tiny", "input": []}).json()["error"]["param"] == "input"
    malformed = post("/v1/completions", content=b'{"model": "tiny", "prompt": ', headers={"content-type": "x"})
    assert malformed.status_code == 400 and malformed.json()["error"]["code"] == "invalid_json"
    assert post("/v1/completions", json=[1, 2]).json()["error"]["code"] == "invalid_json"
    huge = post("/v1/completions", json={"model": "tiny", "prompt": "x" * 30_000})
    assert huge.status_code == 400 and huge.json()["error"]["code"] == "request_too_large"
    missing = httpx.get(f"{server}/v1/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    with pytest.raises(openai.BadRequestError, match="unknown model"):
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    # after all of that the server still answers
    assert client.completions.create(model="tiny", prompt="A", max_tokens=2).usage.completion_tokens == 2


def test_api_keys(assets) -> None:
    engine, models = build_engine(ServeJob(model=str(assets["model"]), name="tiny"))
    with running_server(create_app(engine, models, AppConfig(api_key="s3cret"))) as (_, url):
        bad = openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.completions.create(model="tiny", prompt="A", max_tokens=2)
        assert httpx.get(f"{url}/v1/models").status_code == 401
        assert httpx.get(f"{url}/v1/models").json()["error"]["type"] == "authentication_error"
        assert httpx.get(f"{url}/health").status_code == 200
        good = openai.OpenAI(base_url=f"{url}/v1", api_key="s3cret", max_retries=0)
        assert good.completions.create(model="tiny", prompt="A", max_tokens=2).usage.completion_tokens == 2


# --- the command line --------------------------------------------------------------------------------------------
def test_serve_command_options_and_their_errors(tmp_path, monkeypatch) -> None:
    parsed = parse_job(ServeJob, ["--adapter", "a=x", "--adapter", "b=y", "--api-key", "k", "--engine.max_batch", "4"])
    assert parsed.adapter == ["a=x", "b=y"] and parsed.api_key == "k" and parsed.engine.max_batch == 4
    monkeypatch.chdir(tmp_path)  # no runs/quickstart/ckpt here
    with pytest.raises(FileNotFoundError, match="groundup quickstart"):
        build_engine(ServeJob())
    with pytest.raises(ValueError, match="must be NAME=PATH"):
        build_engine(ServeJob(model="smollm2-135m-instruct", adapter=["no-equals-sign"]))



def test_quantize_swaps_the_base_and_head_and_adapters_wrap_the_quantized_layers(assets) -> None:

    engine, models = build_engine(ServeJob(model=str(assets["model"]), quantize="int8",
                                           adapter=[f"lora-a={assets['lora-a']}"]))
    kinds = {n.rsplit(".", 1)[-1]: type(m).__name__ for n, m in engine.model.named_modules()
             if n.endswith(("q_proj", "q_proj.base_layer", "up_proj", "lm_head"))}
    assert kinds == {"q_proj": "LoraLinear", "base_layer": "QuantLinear", "up_proj": "QuantLinear",
                     "lm_head": "QuantLinear"}
    assert models.generating() == [str(assets["model"]), "lora-a"]
    float_model, _ = load_pretrained(assets["model"])
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad(), P.adapter_rows(engine.model, [None]):
        ref, out = float_model(ids), engine.model(ids)
    assert float((out - ref).norm() / ref.norm()) < 0.02  # int8 weights: well under 1% per weight
    with pytest.raises(QuantError, match="unknown"):
        quantize_model(copy.deepcopy(float_model), "int3")


def test_served_model_is_packed_for_decoding_and_computes_what_the_adapter_does_alone(assets) -> None:
    from groundup.nn.packed_linear import TransposedLinear

    engine, _ = build_engine(ServeJob(model=str(assets["model"]), dtype="fp32",
                                      adapter=[f"lora-a={assets['lora-a']}"]))
    assert isinstance(engine.model.blocks[0].mlp.up_proj, TransposedLinear)  # fp32's decode layout
    plain = P.load_adapter(load_pretrained(assets["model"])[0], assets["lora-a"], "lora-a")
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    with torch.no_grad(), P.adapter_rows(engine.model, ["lora-a", None]):
        served = engine.model(ids)
    with torch.no_grad():
        alone = plain(ids[:1])
        with P.disable(plain):
            base = plain(ids[1:])
    torch.testing.assert_close(served, torch.cat([alone, base]), atol=1e-5, rtol=1e-5)
