"""A vision-language model end to end: saved, loaded by load_pretrained, chatted with from the CLI, served with
OpenAI image_url parts to the official client (requests with and without images in one batch equal each served
alone), and bad images refused with HTTP 400."""

from __future__ import annotations

import base64
import io
import json
import re

import httpx
import numpy as np
import openai
import PIL.Image
import pytest
import torch
from serve_helpers import chat_tokenizer, running_server, tiny_decoder

from groundup.config import VisionConfig, VisionLMConfig
from groundup.data.vlm import VLMExample
from groundup.generate import GenerationConfig
from groundup.loading import load_pretrained
from groundup.models.flamingo import VisionLM
from groundup.models.vit import ViT
from groundup.serve.app import AppConfig, create_app
from groundup.serve.engine import EngineConfig
from groundup.serve.server import ServeJob, build_engine
from groundup.train.checkpoint import save_checkpoint
from groundup.vlm import answer, save_vision_lm


def picture(seed: int) -> PIL.Image.Image:
    return PIL.Image.fromarray(np.random.default_rng(seed).integers(0, 256, (28, 28, 3), dtype=np.uint8))


def data_url(img: PIL.Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module", params=["flamingo", "llava"])
def saved(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"vlm-{request.param}")
    tok = chat_tokenizer()
    lm = tiny_decoder(tok.vocab_size)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # weights far from their start, so the text depends on what the LM reads
        for p in lm.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    base = save_checkpoint(root / "base", lm, tokenizer=tok)
    torch.manual_seed(1)
    vision = save_checkpoint(root / "vit", ViT(VisionConfig(image_size=28, patch_size=7, d_model=48, n_head=4,
                                                            n_layer=1)))
    model = VisionLM(load_pretrained(base)[0], load_pretrained(vision)[0],
                     VisionLMConfig(kind=request.param, cross_every=1, n_latents=4, resampler_heads=4, pool=2))
    torch.manual_seed(2)
    with torch.no_grad():  # a "trained" connector: open gates, weights far from their start
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.fill_(0.8) if name.endswith("_gate") else p.add_(0.3 * torch.randn_like(p))
    return save_vision_lm(model, root / "vlm", str(base), str(vision), tok)


@pytest.fixture(scope="module")
def server(saved):
    engine, models = build_engine(ServeJob(model=str(saved), name="eye", dtype="fp32",
                                           engine=EngineConfig(max_batch=8, max_seq_len=80)))
    with running_server(create_app(engine, models, AppConfig(max_body_bytes=1_000_000))) as (_, url):
        yield url


def alone(saved, question: str, images: list[PIL.Image.Image], max_tokens: int = 8) -> str:
    model, tok = load_pretrained(saved)
    text = "".join("<image>\n" for _ in images) + question
    ex = VLMExample(tuple(images), ({"role": "user", "content": text},))
    stop = ("<|im_end|>",)
    reply = answer(model, tok, [ex], GenerationConfig(max_new_tokens=max_tokens, temperature=0.0, stop=stop))[0]
    return reply.split("<|im_end|>")[0]


def ask(client, question: str, images: list[PIL.Image.Image]) -> str:
    parts = [{"type": "image_url", "image_url": {"url": data_url(i)}} for i in images]
    reply = client.chat.completions.create(model="eye", max_tokens=8, temperature=0, messages=[
        {"role": "user", "content": [*parts, {"type": "text", "text": question}]}])
    return reply.choices[0].message.content


def test_the_saved_model_loads_as_it_was(saved):
    model, tok = load_pretrained(saved)
    assert isinstance(model, VisionLM) and tok is not None
    state = json.loads((saved / "vision_lm.json").read_text())
    assert state["config"]["kind"] == model.vlm_config.kind
    assert all(float(p.detach().abs().sum()) > 0 for n, p in model.named_parameters() if n.endswith("_gate"))


def test_served_answers_with_and_without_images_equal_each_alone(server, saved):
    import asyncio

    client = openai.AsyncOpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=60)
    asks = [("What is it?", [picture(0)]), ("hello there", []), ("Which is bigger?", [picture(1), picture(2)]),
            ("What is it?", [picture(3)])]

    async def all_at_once():
        async def one(q, imgs):
            parts = [{"type": "image_url", "image_url": {"url": data_url(i)}} for i in imgs]
            r = await client.chat.completions.create(model="eye", max_tokens=8, temperature=0, messages=[
                {"role": "user", "content": [*parts, {"type": "text", "text": q}]}])
            return r.choices[0].message.content
        return await asyncio.gather(*(one(q, i) for q, i in asks))

    got = asyncio.run(all_at_once())
    want = [alone(saved, q, imgs) for q, imgs in asks]
    assert got == want
    assert want[0] != want[3]  # the image matters: two pictures, two answers


def test_bad_images_get_400_naming_the_part(server):
    def post(content) -> httpx.Response:
        return httpx.post(f"{server}/v1/chat/completions", timeout=60, json={
            "model": "eye", "max_tokens": 4, "messages": [{"role": "user", "content": content}]})

    cases = [
        ([{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@notbase64@@"}}], "does not decode"),
        ([{"type": "image_url", "image_url": {"url": "data:image/png;base64,"
                                             + base64.b64encode(b"plain text, no pixels").decode()}}], "not an image"),
        ([{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}], "only data: URLs"),
        ([{"type": "text", "text": "<image>\nWhat is it?"}], "marks 1 images .* but 0 were sent"),
        ([{"type": "image_url", "image_url": {"url": data_url(picture(0))}}] * 90, "context holds"),
    ]
    for content, message in cases:
        r = post(content)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert re.search(message, err["message"]) and (err["param"] or "").startswith("messages"), err


def test_chat_cli_sees_the_image(saved, tmp_path, capsys):
    from groundup.cli import main

    path = tmp_path / "p.png"
    picture(0).save(path)
    main(["chat", "--model", str(saved), "--image", str(path), "--message", "What is it?", "--max_new_tokens", "8",
          "--dtype", "fp32"])
    assert capsys.readouterr().out == alone(saved, "What is it?", [picture(0)]) + "\n"
    assert main(["chat", "--model", str(saved), "--image", str(tmp_path / "missing.png"), "--message", "hi"]) != 0
    assert "no such file" in capsys.readouterr().err
