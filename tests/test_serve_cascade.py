"""Cascades behind the OpenAI-compatible server: a real uvicorn server whose `model` names a two-member cascade
(the served base model, then the base with a LoRA adapter merged), driven by the `openai` client and raw HTTP.
Expected answers come from groundup.Cascade called directly on the same files; bad spec files fail at startup
with errors that name the field."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import httpx
import openai
import pytest
from serve_helpers import running_server, save_assets

from groundup.chat import apply_chat_template
from groundup.cli import parse_job
from groundup.finetune import attach_adapter, merge_for_inference
from groundup.generate import GenerationConfig
from groundup.loading import load_pretrained
from groundup.serve import Cascade, CascadeMember, CostModel, LogisticScorer, mean_logprob
from groundup.serve.app import create_app
from groundup.serve.engine import EngineConfig
from groundup.serve.server import ServeJob, build_engine

INF = math.inf
MAX_NEW = 8


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(asset paths, the members built here from the same files, the spec both served cascades share)."""
    root = tmp_path_factory.mktemp("cascade")
    assets = save_assets(root)
    base, tok = load_pretrained(assets["model"])
    large = merge_for_inference(attach_adapter(load_pretrained(assets["model"])[0], assets["lora-a"]))
    gen = GenerationConfig(max_new_tokens=MAX_NEW, temperature=0)
    members = [CascadeMember("small", base, tok, CostModel.per_parameter(base), gen, template="Q: {query}\nA:"),
               CascadeMember("large", large, tok, CostModel(input_price=1.0, output_price=2.0), gen)]
    spec = Cascade(members, thresholds=[-INF]).spec({"small": "base", "large": str(assets["model"])},
                                                    adapters={"large": str(assets["lora-a"])})
    (root / "first.json").write_text(json.dumps(spec))  # thresholds -Infinity: the first member always answers
    (root / "second.json").write_text(json.dumps(spec | {"thresholds": ["inf"]}))  # always escalate
    return assets, members, spec, root


def direct(members, thresholds, query: str, max_new_tokens: int = MAX_NEW, stop: tuple[str, ...] = ()):
    gen = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0, stop=stop)
    return Cascade([replace(m, generation=gen) for m in members], mean_logprob, thresholds)(query)


def job(setup, **kw) -> ServeJob:
    assets, _, _, root = setup
    return ServeJob(model=str(assets["model"]), name="tiny", engine=EngineConfig(max_batch=4, max_seq_len=64),
                    dtype="fp32",  # the cascade called directly runs the fp32 checkpoint
                    **({"cascade": [f"first={root / 'first.json'}", f"second={root / 'second.json'}"]} | kw))


@pytest.fixture(scope="module")
def server(setup):
    engine, models = build_engine(job(setup))
    with running_server(create_app(engine, models)) as (_, url):
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=60)


def test_models_lists_the_cascades_and_the_members_disagree(client, setup) -> None:
    listed = {m.id: m for m in client.models.list().data}
    assert set(listed) == {"tiny", "first", "second"}
    assert listed["first"].model_extra["members"] == ["small", "large"]
    members = setup[1]
    # the test below is only meaningful if the two members answer differently
    assert direct(members, [-INF], "ROMEO: ").text != direct(members, [INF], "ROMEO: ").text


@pytest.mark.parametrize("name, thresholds, member", [("first", [-INF], "small"), ("second", [INF], "large")])
def test_completion_equals_the_cascade_called_directly(client, setup, name, thresholds, member) -> None:
    want = direct(setup[1], thresholds, "ROMEO: ", max_new_tokens=6)
    out = client.completions.create(model=name, prompt="ROMEO: ", max_tokens=6)
    info = out.model_extra["groundup"]
    assert out.choices[0].text == want.text and out.model == name and out.object == "text_completion"
    assert info["member"] == member == want.member and info["stage"] == want.stage
    assert info["score"] == pytest.approx(want.score, abs=1e-5) and info["cost"] == pytest.approx(want.cost)
    assert [t["member"] for t in info["tried"]] == [a.member for a in want.tried] and info["ignored"] == []
    assert out.usage.prompt_tokens == want.tried[-1].n_input_tokens
    assert out.usage.completion_tokens == want.tried[-1].n_output_tokens <= 6
    if name == "second":  # both members were asked and both are paid for
        assert len(want.tried) == 2 and info["cost"] == pytest.approx(sum(a.cost for a in want.tried))


def test_chat_renders_the_first_members_template_and_streams_one_chunk(client, setup) -> None:
    members = setup[1]
    tok = members[0].tokenizer
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who art thou?"}]
    prompt = apply_chat_template(tok.chat_template, messages, True, "<|endoftext|>", "<|endoftext|>")
    want = direct(members, [INF], prompt, stop=("<|im_end|>",))
    out = client.chat.completions.create(model="second", messages=messages)
    assert out.choices[0].message.content == want.text and out.object == "chat.completion"
    assert out.model_extra["groundup"]["member"] == "large"
    chunks = list(client.chat.completions.create(model="second", messages=messages, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].usage.completion_tokens > 0
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert content == [want.text]  # the whole answer in one chunk


def test_raw_stream_sampling_fields_and_stop(server, client, setup) -> None:
    raw = httpx.post(f"{server}/v1/completions", json={"model": "first", "prompt": "KING: ", "stream": True},
                     timeout=60)
    events = [e for e in raw.text.split("\n\n") if e]
    assert raw.headers["content-type"].startswith("text/event-stream") and events[-1] == "data: [DONE]"
    assert len(events) == 2
    chunk = json.loads(events[0][6:])
    greedy = direct(setup[1], [-INF], "KING: ")
    assert chunk["choices"][0]["text"] == greedy.text and chunk["groundup"]["member"] == "small"
    # a cascade decodes greedily: sampling fields are reported as ignored, and the answer does not change
    hot = client.completions.create(model="first", prompt="KING: ", temperature=0.9, top_p=0.5, seed=3)
    assert hot.choices[0].text == greedy.text and hot.model_extra["groundup"]["ignored"] == ["temperature", "top_p"]
    # max_tokens above the spec's max_new_tokens is capped by it; a stop string cuts the answer
    long = client.completions.create(model="first", prompt="KING: ", max_tokens=50)
    assert long.usage.completion_tokens <= MAX_NEW and long.choices[0].text == greedy.text
    stop = greedy.text.strip()[2:4]
    cut = client.completions.create(model="first", prompt="KING: ", stop=[stop])
    assert cut.choices[0].text == greedy.text[: greedy.text.index(stop)] and cut.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("body, param, code", [
    ({"model": "first", "prompt": [5, 6]}, "prompt", None),
    ({"model": "first", "prompt": "word " * 120}, "prompt", "context_length_exceeded"),
    ({"model": "first", "prompt": "A", "n": 2}, "n", "unsupported_parameter"),
])
def test_bad_cascade_requests_get_400_naming_the_field(server, body, param, code) -> None:
    r = httpx.post(f"{server}/v1/completions", json=body, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"] and (code is None or err["code"] == code)


def test_bad_specs_fail_at_startup_naming_the_field(setup, tmp_path) -> None:
    _, members, spec, root = setup
    one = spec["members"][0]
    cases = [
        ("{not json", "not valid JSON"),
        (spec | {"members": [one]}, "at least two models"),
        (spec | {"thresholds": [0.0, 1.0]}, "'thresholds'=.* must be 1 number"),
        (spec | {"thresholds": ["nan"]}, "'thresholds'"),
        (spec | {"scorer": "logistic"}, "'scorer'='logistic' cannot be served; use \"mean_logprob\""),
        (spec | {"members": [one, one]}, r"members\[1\].name='small' repeats"),
        (spec | {"members": [one | {"cost": {"input_price": 1}}, one]}, r"members\[0\].cost=.*per_parameter"),
        (spec | {"members": [one | {"cost": {"input_price": -1, "output_price": 1}}, one]}, "input_price=-1"),
        (spec | {"members": [one | {"temperature": 1}, spec["members"][1]]}, r"members\[0\] must have 'name'"),
        (spec | {"members": [one | {"max_new_tokens": 0}, spec["members"][1]]}, r"members\[0\].max_new_tokens=0"),
    ]
    for i, (content, match) in enumerate(cases):
        path = tmp_path / f"bad{i}.json"
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        with pytest.raises(ValueError, match=match):
            build_engine(job(setup, cascade=[f"c={path}"]))
    with pytest.raises(FileNotFoundError, match="no such file"):
        build_engine(job(setup, cascade=[f"c={tmp_path / 'missing.json'}"]))
    with pytest.raises(ValueError, match="--cascade name 'tiny' is also a model's"):
        build_engine(job(setup, cascade=[f"tiny={root / 'first.json'}"]))
    with pytest.raises(ValueError, match="--cascade 'first' must be NAME=PATH"):
        build_engine(job(setup, cascade=["first"]))
    with pytest.raises(ValueError, match="mean_logprob scorer"):
        Cascade(members, LogisticScorer({}), thresholds=[0.0]).spec({"small": "base", "large": "x"})
    parsed = parse_job(ServeJob, ["--cascade", "a=x.json", "--cascade", "b=y.json"])
    assert parsed.cascade == ["a=x.json", "b=y.json"]
