"""The OpenAI-compatible web app (FastAPI): /v1/completions, /v1/chat/completions (stream: true gives server-sent
events in OpenAI's chunk format, ending with `data: [DONE]`), /v1/embeddings, /v1/audio/transcriptions (a
multipart upload to the Whisper model, speech.py), /v1/models, /health, /metrics.

A request whose `model` names a cascade (registry.ServedCascade) runs the whole cascade on a worker thread and
answers in the same format, plus a `groundup` object: the member that answered, its score, the cost of every
member asked, and the sampling fields it `ignored`. A cascade decodes greedily (its thresholds were set for greedy
answers), so temperature / top_p / top_k are ignored, as OpenAI's clients send them by default; max_tokens caps
each member's max_new_tokens and stop cuts the answer. Chat messages are rendered with the first member's chat
template. With stream: true the answer comes as one chunk, then [DONE]: nothing can stream before the cascade
has decided which member answers.

A text prompt to an adapter (or a model) that groundup fine-tuned is formatted as its training prompts were (the
separator or template in its prompt_format.json), and chat messages to it are rendered that way, unless the server
was started with --raw_prompt; a prompt of token ids is always used as sent.

    HTTP request ─ auth ─ read body (size cap) ─ parse + check (schema.py) ─ tokenize ─ engine.submit
        <─ asyncio.Queue <─ loop.call_soon_threadsafe <─ engine thread emits Events

The app never runs the decoder: the engine thread owns it. A vision-language model's images go through its frozen
image encoder on a worker thread (the engine never runs that tower), so encoding does not stall decoding. A client
that disconnects cancels its request, which frees its slot at the next decode step.
"""

from __future__ import annotations

import asyncio
import base64
import time
from contextlib import asynccontextmanager

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException

from ..chat import CHAT_TEMPLATES, ChatTemplateError, apply_chat_template
from .config import AppConfig
from .context import RequestContext, _special
from .engine import Engine
from .metrics import Metrics
from .registry import ServedModels
from .schema import (
    RequestError,
    error_body,
    parse_chat,
    parse_completion,
    parse_embedding,
    parse_transcription,
)
from .speech import SpeechJob
from .speech import response as speech_response

# For models that ship no chat template (e.g. the quickstart's character model).
PLAIN_TEMPLATE = CHAT_TEMPLATES["plain"]
END_OF_TURN = "<|im_end|>"  # ChatML's, as groundup.Chat stops on it
ROUTES = ("/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions", "/v1/embeddings",
          "/v1/audio/transcriptions")


class CountRequests:
    """Pure ASGI middleware (it leaves streaming and disconnects alone): count responses per route and status."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = [500]

        async def record(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:  # unknown paths share one label, so clients cannot grow the metrics without bound
            path = scope["path"] if scope["path"] in ROUTES else "other"
            self.metrics.count_request(path, status[0])


def create_app(engine: Engine, models: ServedModels, cfg: AppConfig | None = None) -> FastAPI:
    cfg = cfg or AppConfig()
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        yield
        await asyncio.to_thread(engine.stop, cfg.shutdown_grace_s)  # finishes what is running and queued
        if models.speech is not None:
            await asyncio.to_thread(models.speech.close)

    app = FastAPI(title="groundup", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(CountRequests, metrics=engine.metrics)
    ctx = RequestContext(engine, models, cfg)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, e: RequestError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(f"{request.method} {request.url.path}: {e.detail}", kind), e.status_code)

    @app.exception_handler(Exception)
    async def server_error(request: Request, e: Exception) -> JSONResponse:
        return JSONResponse(error_body(f"internal error: {type(e).__name__}: {e}", "server_error"), 500)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "shutting_down" if engine.closing.is_set() else "ok", "running": len(engine.rows),
                "queued": engine.queue_depth()}

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        ctx.authorize(request)
        return PlainTextResponse(engine.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict:
        ctx.authorize(request)
        return models.listing(created)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        ctx.authorize(request)
        body = parse_completion(raw := await ctx.read_json(request))
        prompt = body.prompt
        if body.model in models.cascades:
            return await ctx.cascade(request, body, raw, prompt, "text_completion", "prompt")
        # a text prompt to a fine-tuned adapter gets the format it was trained with; token ids are used as sent
        ids = list(prompt) if isinstance(prompt, list) else ctx.encode(
            models.formatted(body.model, prompt, ctx.tokenizer), "prompt")
        return await ctx.generate(request, body, ids, "text_completion", "prompt", default_tokens=16)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        ctx.authorize(request)
        body = parse_chat(raw := await ctx.read_json(request))
        served = models.cascades.get(body.model)
        if served is None:
            ctx.encode("", "messages")  # refuses early on a server that only embeds
        tok = ctx.tokenizer if served is None else served.tokenizer
        template = (models.chat_template(body.model) if served is None else None) or tok.chat_template \
            or PLAIN_TEMPLATE
        try:
            text = apply_chat_template(template, body.messages, True, _special(tok, tok.bos_id),
                                       _special(tok, tok.eos_id))
        except ChatTemplateError as e:
            raise RequestError(str(e), "messages") from None
        if END_OF_TURN in template:
            body.sampling.stop = (*body.sampling.stop, END_OF_TURN)
        if served is not None:
            if body.images:
                raise RequestError(f"cascade {body.model!r} answers text only; send no image parts", body.images[0][0])
            return await ctx.cascade(request, body, raw, text, "chat.completion", "messages")
        ids, pictures = ctx.seen(text, body.images)
        return await ctx.generate(request, body, ids, "chat.completion", "messages", pictures=pictures)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> dict:
        ctx.authorize(request)
        body = parse_embedding(await ctx.read_json(request))
        models.check_embedding(body.model)
        vectors = await ctx.embed(request, body.texts)
        tok = engine.encoder[1]
        n_tokens = sum(len(ids) for ids in tok.encode_batch(body.texts, add_special_tokens=True))
        data = [{"object": "embedding", "index": i,
                 "embedding": base64.b64encode(v.numpy().astype("<f4").tobytes()).decode() if body.base64
                 else v.tolist()} for i, v in enumerate(vectors)]
        return {"object": "list", "data": data, "model": body.model,
                "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request) -> Response:
        arrived = time.monotonic()  # request_timeout counts from here, as for the text endpoints
        ctx.authorize(request)
        body = parse_transcription(*await ctx.read_form(request))
        speech = models.check_speech(body.model)
        options = speech.options(body)
        audio = await asyncio.to_thread(_load_upload, body.audio, body.filename)
        job = SpeechJob(audio, options, arrived + speech.request_timeout)
        transcript = await ctx.wait_for(request, speech.submit(job), job.cancelled)
        content, media_type = speech_response(transcript, body.response_format)
        if isinstance(content, dict):
            return JSONResponse(content)
        return PlainTextResponse(content, media_type=media_type)

    return app


def _load_upload(data: bytes, filename: str) -> np.ndarray:
    from ..audio import AudioError, load_audio

    try:
        return load_audio(data)
    except AudioError as e:
        raise RequestError(f"'file' ({filename or 'no name'}) is not usable audio: {e}", "file", "invalid_file") \
            from None


def embeddings_from_base64(data: str) -> np.ndarray:
    """Decode one base64 embedding (what `encoding_format: base64` returns) to float32."""
    return np.frombuffer(base64.b64decode(data), dtype="<f4")
