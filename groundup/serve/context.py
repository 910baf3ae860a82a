"""What the routes of app.py share: the engine, the served names, the limits, and the request plumbing (auth,
bounded body reads, tokenizing, building and submitting GenerationRequests, waiting for their events, and the
OpenAI response and stream formats)."""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator

import torch
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from ..data.vlm import encode_text
from ..generate import GenerationConfig
from .config import AppConfig
from .engine import Engine, EngineClosedError, QueueFullError
from .images import decode_image_url
from .registry import ServedCascade, ServedModels
from .requests import EmbeddingRequest, Event, GenerationRequest
from .schema import (
    IMAGE_MARKER,
    GenerationBody,
    RequestError,
    error_body,
)
from .speech import Stopped


class RequestContext:
    """What the routes share: the engine, the names, the limits, and the request plumbing."""

    def __init__(self, engine: Engine, models: ServedModels, cfg: AppConfig) -> None:
        self.engine, self.models, self.cfg = engine, models, cfg
        self.tokenizer = engine.tokenizer

    def authorize(self, request: Request) -> None:
        if self.cfg.api_key is None:
            return
        given = request.headers.get("authorization", "")
        token = given[7:] if given.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(token.encode(), self.cfg.api_key.encode()):
            raise RequestError("missing or wrong API key: send the header 'Authorization: Bearer <key>'", None,
                               "invalid_api_key", 401, "authentication_error")

    async def _read_body(self, request: Request, limit: int, status: int = 400,
                         fix: str = "send a smaller request") -> bytes:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise RequestError(f"request body of {declared} bytes exceeds the limit of {limit} bytes; {fix}", None,
                               "request_too_large", status)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(f"request body exceeds the limit of {limit} bytes; {fix}", None,
                                   "request_too_large", status)
            chunks.append(chunk)
        return b"".join(chunks)

    async def read_form(self, request: Request) -> tuple[dict[str, list[str]], dict[str, list[tuple[str, bytes]]]]:
        """A multipart upload, its size capped at max_audio_bytes (413 beyond): (text fields, file parts)."""
        if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
            raise RequestError("send the audio as multipart/form-data with the file in a 'file' part (what OpenAI's "
                               "clients and curl -F file=@talk.wav send)", "file", "invalid_file")
        limit = self.cfg.max_audio_bytes
        data = await self._read_body(request, limit, 413, "send a smaller file (split a long recording, or compress "
                                     "it: FLAC, OGG/Opus), or start the server with a larger --max_audio_bytes")

        async def replay() -> dict:
            return {"type": "http.request", "body": data, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=4, max_fields=64)
        except HTTPException as e:  # python-multipart could not parse the body
            raise RequestError(f"the multipart body cannot be read ({e.detail}); send a multipart/form-data upload",
                               "file", "invalid_multipart") from None
        fields: dict[str, list[str]] = {}
        files: dict[str, list[tuple[str, bytes]]] = {}
        try:
            for name, value in form.multi_items():
                if isinstance(value, UploadFile):
                    files.setdefault(name, []).append((value.filename or "", await value.read()))
                else:
                    fields.setdefault(name, []).append(value)
        finally:
            await form.close()
        return fields, files

    async def wait_for(self, request: Request, future, cancelled: threading.Event):
        """The result of work on another thread (a concurrent Future); a client that went away cancels it."""
        waiting = asyncio.wrap_future(future)
        try:
            while True:
                try:
                    return await asyncio.wait_for(asyncio.shield(waiting), 0.5)
                except TimeoutError:
                    if await request.is_disconnected():
                        raise RequestError("client disconnected", None, "client_disconnected", 499) from None
                except Stopped as e:
                    raise RequestError(str(e), None, "timeout", 504, "timeout") from None
        finally:
            cancelled.set()
            future.cancel()

    async def read_json(self, request: Request) -> dict:
        data = await self._read_body(request, self.cfg.max_body_bytes)
        try:
            body = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RequestError(f"the body is not valid JSON ({e}); send a JSON object", None, "invalid_json") from None
        if not isinstance(body, dict):
            raise RequestError(f"the body must be a JSON object, got {type(body).__name__}", None, "invalid_json")
        return body

    def encode(self, text: str, param: str) -> list[int]:
        if self.tokenizer is None:
            served = [p for p, there in (("/v1/embeddings", self.models.embedding),
                                         ("/v1/audio/transcriptions", self.models.speech)) if there is not None]
            raise RequestError(f"this server has no generating model; use {' or '.join(served) or 'another server'}",
                               "model", "model_not_found")
        try:
            return self.tokenizer.encode(text)
        except ValueError as e:
            raise RequestError(f"'{param}' cannot be tokenized: {e}", param) from None

    def seen(self, text: str, images: list[tuple[str, str]]) -> tuple[list[int], list]:
        """A chat prompt's ids and its decoded images (a vision-language model sees them)."""
        model = self.engine.model
        if not hasattr(model, "seeing"):
            if images:
                raise RequestError("this model does not see images; send text only, or serve a vision-language "
                                   "model (groundup finetune --method flamingo|llava)", images[0][0])
            return self.encode(text, "messages"), []
        return encode_text(model, self.tokenizer, text), [decode_image_url(url, param) for param, url in images]

    def _request(self, body: GenerationBody, ids: list[int], param: str, default_tokens: int | None,
                 emit, n_images: int = 0) -> GenerationRequest:
        target = self.models.generation_target(body.model)
        model = self.engine.model
        sees = hasattr(model, "seeing")
        vocab = model.config.vocab_size + (2 if sees else 0)  # + a vision-language model's <image>, <|endofchunk|>
        if any(not 0 <= t < vocab for t in ids):
            raise RequestError(f"'{param}' holds token ids outside the vocabulary [0, {vocab})", param)
        if sees and ids.count(model.image_id) != model.tokens_per_image * n_images:
            raise RequestError(f"'{param}' marks {ids.count(model.image_id) / model.tokens_per_image:g} images "
                               f"({IMAGE_MARKER} in the text) but {n_images} were sent: one image_url part per "
                               f"image, and no literal {IMAGE_MARKER} in the text", param)
        if not ids:
            if self.tokenizer.bos_id is None:
                raise RequestError(f"'{param}' is empty; give at least one token of text", param)
            ids = [self.tokenizer.bos_id]
        limit = self.engine.max_seq_len
        length = len(ids) + (0 if target.soft_prompt is None else target.soft_prompt.shape[0])
        if length >= limit:
            each = f", each image {model.tokens_per_image}" if sees else ""
            raise RequestError(f"'{param}' is {length} tokens{each} but the context holds {limit} (prompt + "
                               "max_tokens); shorten it or send fewer images", param, "context_length_exceeded")
        s = body.sampling
        room = limit - length
        max_tokens = s.max_tokens if s.max_tokens is not None else min(default_tokens or room, room)
        if max_tokens > room:
            raise RequestError(f"'max_tokens'={max_tokens} does not fit: the prompt takes {length} of {limit} context "
                               f"tokens, so at most {room} can be generated", "max_tokens", "context_length_exceeded")
        config = GenerationConfig(max_new_tokens=max_tokens, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                                  seed=s.seed, stop=s.stop, eos_id=self.tokenizer.eos_id)
        return GenerationRequest(ids, config, emit, target.adapter, target.soft_prompt,
                                 time.monotonic() + self.engine.cfg.request_timeout)

    def _submit(self, request: GenerationRequest | EmbeddingRequest) -> None:
        try:
            self.engine.submit(request)
        except QueueFullError as e:
            raise RequestError(str(e), None, "queue_full", 429, "rate_limit_error",
                               {"Retry-After": str(self.cfg.retry_after_s)}) from None
        except EngineClosedError as e:
            raise RequestError(str(e), None, "shutting_down", 503, "server_error") from None

    def _channel(self) -> tuple[asyncio.Queue, callable]:
        loop, events = asyncio.get_running_loop(), asyncio.Queue()

        def emit(event) -> None:  # called on the engine thread
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the event loop is gone (server stopped): nobody is listening
                pass

        return events, emit

    async def _wait(self, request: Request, events: asyncio.Queue, cancel) -> object:
        """The next event; a client that went away cancels the work (checked twice a second)."""
        while True:
            try:
                return await asyncio.wait_for(events.get(), 0.5)
            except TimeoutError:
                if await request.is_disconnected():
                    cancel.set()
                    raise RequestError("client disconnected", None, "client_disconnected", 499) from None

    async def embed(self, request: Request, texts: list[str]) -> torch.Tensor:
        events, emit = self._channel()
        job = EmbeddingRequest(texts, emit)
        self._submit(job)
        try:
            result = await self._wait(request, events, job.cancelled)
        finally:
            job.cancelled.set()
        if isinstance(result, Event):
            raise RequestError(result.error, "input")
        return result

    async def cascade(self, request: Request, body: GenerationBody, raw: dict, query: str | list[int], kind: str,
                      param: str) -> Response:
        """Run the cascade on a worker thread; the reply (or one chunk when streaming) carries a `groundup` object."""
        served: ServedCascade = self.models.cascades[body.model]
        if not isinstance(query, str):
            raise RequestError(f"'{param}' must be text for cascade {body.model!r} (its members may use different "
                               "tokenizers); send a string", param)
        reply = await asyncio.to_thread(served.answer, query, body.sampling.max_tokens, body.sampling.stop, param)
        ignored = [k for k, neutral in (("temperature", (None, 0)), ("top_p", (None, 1)), ("top_k", (None, -1)))
                   if raw.get(k) not in neutral]
        meta = _meta(body.model, kind) | {"groundup": reply.info | {"ignored": ignored}}
        done = Event(reply.text, reply.finish_reason, prompt_tokens=reply.prompt_tokens,
                     completion_tokens=reply.completion_tokens)
        if body.stream:
            events: asyncio.Queue = asyncio.Queue()
            events.put_nowait(done)
            return StreamingResponse(self._sse(events, threading.Event(), meta, kind, body.include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        return _reply(meta, kind, reply.text, done)

    async def generate(self, request: Request, body: GenerationBody, ids: list[int], kind: str, param: str,
                       default_tokens: int | None = None, pictures: list | None = None) -> Response:
        events, emit = self._channel()
        job = self._request(body, ids, param, default_tokens, emit, len(pictures or ()))
        if pictures:  # the request is valid: now the images go through the encoder, off the event loop
            job.images = await asyncio.to_thread(self.engine.model.encode_images, pictures)
        self._submit(job)
        meta = _meta(body.model, kind)
        if body.stream:
            return StreamingResponse(self._sse(events, job.cancelled, meta, kind, body.include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        pieces = []
        try:
            while True:
                event = await self._wait(request, events, job.cancelled)
                if event.error:
                    status = 504 if event.error_type == "timeout" else 500
                    raise RequestError(event.error, None, event.error_type, status, event.error_type)
                pieces.append(event.text)
                if event.finish_reason:
                    break
        finally:
            job.cancelled.set()
        return _reply(meta, kind, "".join(pieces), event)

    async def _sse(self, events: asyncio.Queue, cancelled: threading.Event, meta: dict, kind: str,
                   include_usage: bool) -> AsyncIterator[str]:
        chat = kind == "chat.completion"
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(text: str | None, finish: str | None, first: bool = False) -> str:
            if chat:
                delta = ({"role": "assistant", "content": ""} if first else {}) | (
                    {"content": text} if text else {})
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            return f"data: {json.dumps({**meta, 'object': obj, 'choices': [choice]})}\n\n"

        try:  # the finally runs when the client disconnects (the task is cancelled): it frees the slot
            if chat:
                yield chunk(None, None, first=True)
            while True:
                event = await events.get()
                if event.error:
                    yield f"data: {json.dumps(error_body(event.error, event.error_type, None, event.error_type))}\n\n"
                    break
                if event.text or event.finish_reason:
                    yield chunk(event.text, event.finish_reason)
                if event.finish_reason:
                    if include_usage:
                        yield f"data: {json.dumps({**meta, 'object': obj, 'choices': [], 'usage': _usage(event)})}\n\n"
                    break
            yield "data: [DONE]\n\n"
        finally:
            cancelled.set()


def _special(tokenizer, token_id: int | None) -> str:
    return (tokenizer.id_to_token(token_id) or "") if token_id is not None else ""


def _meta(model: str, kind: str) -> dict:
    return {"id": f"{'chatcmpl' if kind.startswith('chat') else 'cmpl'}-{uuid.uuid4().hex}",
            "created": int(time.time()), "model": model}


def _reply(meta: dict, kind: str, text: str, event: Event) -> JSONResponse:
    if kind == "chat.completion":
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                  "finish_reason": event.finish_reason}
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": event.finish_reason}
    return JSONResponse({**meta, "object": kind, "choices": [choice], "usage": _usage(event)})


def _usage(event: Event) -> dict[str, int]:
    return {"prompt_tokens": event.prompt_tokens, "completion_tokens": event.completion_tokens,
            "total_tokens": event.prompt_tokens + event.completion_tokens}


