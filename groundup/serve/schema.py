"""OpenAI request bodies (JSON; a transcription's multipart form) -> checked, typed parameters; anything wrong is
a RequestError that names the field (`param`) and the fix, returned as OpenAI's error JSON: {"error": {"message",
"type", "param", "code"}}."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MAX_STOP = 4
IMAGE_MARKER = "<image>"  # where an image part stands in a message's text (models/flamingo.py's IMAGE_TOKEN)


class RequestError(Exception):
    def __init__(self, message: str, param: str | None = None, code: str | None = None, status: int = 400,
                 type: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.code, self.status, self.type = message, param, code, status, type
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


@dataclass
class SamplingParams:
    max_tokens: int | None = None  # None: the endpoint's default (16 for completions, the rest of the context)
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None  # not in OpenAI's API; vLLM's extension
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass
class GenerationBody:
    model: str
    sampling: SamplingParams
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage: a last chunk with the token counts
    prompt: str | list[int] | None = None  # /v1/completions
    messages: list[dict[str, str]] = field(default_factory=list)  # /v1/chat/completions
    images: list[tuple[str, str]] = field(default_factory=list)  # (param, image URL) per IMAGE_MARKER, in order


@dataclass
class EmbeddingBody:
    model: str
    texts: list[str]
    base64: bool = False


def _number(body: dict, name: str, kind: type, default: Any, low: float | None = None, high: float | None = None,
            low_open: bool = False) -> Any:
    value = body.get(name)
    if value is None:
        return default
    ok = isinstance(value, int) if kind is int else isinstance(value, int | float)
    if not ok or isinstance(value, bool):
        raise RequestError(f"'{name}' must be {'an integer' if kind is int else 'a number'}; got {value!r}", name)
    if (low is not None and (value <= low if low_open else value < low)) or (high is not None and value > high):
        span = f"{'(' if low_open else '['}{low}, {high if high is not None else 'inf'}]"
        raise RequestError(f"'{name}'={value} is out of range; it must be in {span}", name)
    return kind(value)


def _refuse_unsupported(body: dict) -> None:
    """Options that would change the answer and that this server does not implement: say so, never ignore."""
    checks = {
        "n": lambda v: v not in (None, 1), "best_of": lambda v: v not in (None, 1), "echo": bool,
        "logprobs": lambda v: v not in (None, False, 0), "top_logprobs": lambda v: v not in (None, 0),
        "suffix": lambda v: v not in (None, ""), "logit_bias": bool, "tools": bool,
        "presence_penalty": lambda v: v not in (None, 0, 0.0), "frequency_penalty": lambda v: v not in (None, 0, 0.0),
        "response_format": lambda v: v not in (None, {"type": "text"}),
    }
    for name, bad in checks.items():
        if name in body and bad(body[name]):
            raise RequestError(f"'{name}'={body[name]!r} is not supported by this server; leave it out "
                               "(one choice per request, plain text output, no logprobs or penalties)", name,
                               "unsupported_parameter")


def _model(body: dict) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError("'model' is required: the name of a served model or adapter (see GET /v1/models)",
                           "model", "missing_model")
    return model


def _stop(value: Any) -> tuple[str, ...]:
    stops = [value] if isinstance(value, str) else value
    if value is None:
        return ()
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOP:
        raise RequestError(f"'stop' must be a non-empty string or a list of at most {MAX_STOP}; got {value!r}",
                           "stop")
    return tuple(stops)


def _sampling(body: dict, token_field: str) -> SamplingParams:
    max_tokens = _number(body, token_field, int, None, 1)
    return SamplingParams(
        max_tokens=max_tokens, temperature=_number(body, "temperature", float, 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", float, None, 0.0, 1.0, low_open=True),
        top_k=_number(body, "top_k", int, None, 1) if body.get("top_k") not in (None, -1) else None,
        seed=_number(body, "seed", int, None, -(2**63), 2**63 - 1), stop=_stop(body.get("stop")),
    )


def _stream(body: dict) -> tuple[bool, bool]:
    stream = body.get("stream", False)
    if not isinstance(stream, bool | None):
        raise RequestError(f"'stream' must be true or false; got {stream!r}", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise RequestError("'stream_options' must be an object like {\"include_usage\": true}", "stream_options")
    return bool(stream), bool(options.get("include_usage", False))


def parse_completion(body: dict) -> GenerationBody:
    _refuse_unsupported(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # one prompt in a list, as some clients send it
    if isinstance(prompt, list) and prompt and all(isinstance(p, str | list) for p in prompt):
        raise RequestError(f"'prompt' holds {len(prompt)} prompts; send one request per prompt (they are batched "
                           "on the server anyway)", "prompt")
    ids = isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    if not isinstance(prompt, str) and not ids:
        raise RequestError(f"'prompt' must be a string (or a list of token ids); got {prompt!r:.80}", "prompt")
    stream, usage = _stream(body)
    return GenerationBody(_model(body), _sampling(body, "max_tokens"), stream, usage, prompt=prompt)


def parse_chat(body: dict) -> GenerationBody:
    _refuse_unsupported(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list of {\"role\", \"content\"} objects", "messages")
    clean, images = [], []
    for i, m in enumerate(messages):
        role, content = (m.get("role"), m.get("content")) if isinstance(m, dict) else (None, None)
        if isinstance(content, list):  # [{"type": "text", "text": ...} | {"type": "image_url", ...}, ...]
            content = _content_parts(content, f"messages[{i}].content", images)
        if role not in ("system", "user", "assistant", "developer") or not isinstance(content, str):
            raise RequestError(f"messages[{i}] must have 'role' (system, user or assistant) and a string 'content'; "
                               f"got {m!r:.80}", f"messages[{i}]")
        clean.append({"role": "system" if role == "developer" else role, "content": content})
    field_name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    stream, usage = _stream(body)
    return GenerationBody(_model(body), _sampling(body, field_name), stream, usage, messages=clean, images=images)


def _content_parts(parts: list, param: str, images: list[tuple[str, str]]) -> str:
    """A message's content parts as one text, each image part an IMAGE_MARKER line; the image URLs go to images."""
    text = []
    for j, p in enumerate(parts):
        kind = p.get("type") if isinstance(p, dict) else None
        if kind == "text" and isinstance(p.get("text"), str):
            text.append(p["text"])
        elif kind == "image_url":
            url = p.get("image_url", {}).get("url") if isinstance(p.get("image_url"), dict) else p.get("image_url")
            if not isinstance(url, str):
                raise RequestError(f"{param}[{j}].image_url must be {{\"url\": \"data:image/png;base64,...\"}}",
                                   f"{param}[{j}].image_url")
            images.append((f"{param}[{j}].image_url", url))
            text.append(IMAGE_MARKER + "\n")
        else:
            raise RequestError(f"{param}[{j}]: only text and image_url parts are supported", f"{param}[{j}]")
    return "".join(text)


def parse_embedding(body: dict, max_inputs: int = 256) -> EmbeddingBody:
    texts = body.get("input")
    texts = [texts] if isinstance(texts, str) else texts
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
        raise RequestError("'input' must be a non-empty string or a list of non-empty strings (token-id input is "
                           "not supported)", "input")
    if len(texts) > max_inputs:
        raise RequestError(f"'input' has {len(texts)} texts; at most {max_inputs} per request", "input")
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise RequestError(f"'encoding_format' must be 'float' or 'base64'; got {fmt!r}", "encoding_format")
    if body.get("dimensions") is not None:
        raise RequestError("'dimensions' is not supported: the model's embedding size is fixed; leave it out",
                           "dimensions", "unsupported_parameter")
    return EmbeddingBody(_model(body), texts, fmt == "base64")


AUDIO_RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
# OpenAI transcription fields that would change the answer and that this server does not implement
_AUDIO_UNSUPPORTED = ("chunking_strategy", "include", "include[]", "known_speaker_names", "known_speaker_names[]",
                      "known_speaker_references", "known_speaker_references[]", "keywords", "keywords[]", "languages",
                      "languages[]")


@dataclass
class TranscriptionBody:
    model: str
    audio: bytes  # the uploaded file, still encoded (WAV, FLAC, ...)
    filename: str
    language: str | None = None
    prompt: str | None = None
    response_format: str = "json"
    temperature: float = 0.0  # 0: Whisper's temperature fallback; T > 0: sample at T


def parse_transcription(fields: dict[str, list[str]], files: dict[str, list[tuple[str, bytes]]]
                        ) -> TranscriptionBody:
    """A /v1/audio/transcriptions multipart form: `fields` are its text parts (name -> values), `files` its file
    parts (name -> (filename, bytes))."""
    def one(name: str) -> str | None:
        values = fields.get(name) or []
        if len(values) > 1:
            raise RequestError(f"'{name}' is given {len(values)} times; send it once", name)
        return values[0] if values else None

    uploads = files.get("file") or []
    if len(uploads) != 1 or "file" in fields:
        got = "a text field" if "file" in fields else f"{len(uploads)} files"
        raise RequestError(f"'file' must be one audio file sent as a multipart file part (WAV, FLAC, OGG, ...); got "
                           f"{got}", "file", "invalid_file")
    filename, audio = uploads[0]
    extra = sorted(set(files) - {"file"})
    if extra:
        raise RequestError(f"'{extra[0]}' is a file part, but only 'file' takes a file", extra[0])
    model = one("model")
    if not model:
        raise RequestError("'model' is required: the name of the served speech model (see GET /v1/models)", "model",
                           "missing_model")
    for name in _AUDIO_UNSUPPORTED:
        if any(v not in ("", "[]") for v in fields.get(name) or []):
            raise RequestError(f"'{name.removesuffix('[]')}' is not supported by this server; leave it out", name,
                               "unsupported_parameter")
    if (one("stream") or "false").lower() not in ("false", "0"):
        raise RequestError("'stream'=true is not supported for transcriptions; leave it out (the whole transcript "
                           "comes in one response)", "stream", "unsupported_parameter")
    fmt = one("response_format") or "json"
    if fmt not in AUDIO_RESPONSE_FORMATS:
        raise RequestError(f"'response_format'={fmt!r} is not supported; use one of "
                           f"{', '.join(AUDIO_RESPONSE_FORMATS)}", "response_format")
    raw = one("temperature")
    try:
        temperature = float(raw) if raw not in (None, "") else 0.0
    except ValueError:
        raise RequestError(f"'temperature' must be a number in [0, 1]; got {raw!r}", "temperature") from None
    if not 0.0 <= temperature <= 1.0:
        raise RequestError(f"'temperature'={raw} is out of range; it must be in [0, 1] (0: fall back to hotter "
                           "decoding only where needed)", "temperature")
    granularities = [*(fields.get("timestamp_granularities[]") or []), *(fields.get("timestamp_granularities") or [])]
    for g in granularities:
        if g not in ("segment", "word"):
            raise RequestError(f"'timestamp_granularities' holds {g!r}; use 'segment'", "timestamp_granularities")
        if g == "word":
            raise RequestError("'timestamp_granularities'=['word'] is not supported: this server gives segment "
                               "timestamps only; send ['segment'] or leave it out", "timestamp_granularities",
                               "unsupported_parameter")
    if granularities and fmt != "verbose_json":
        raise RequestError(f"'timestamp_granularities' needs 'response_format'='verbose_json' (got {fmt!r})",
                           "timestamp_granularities")
    language = one("language") or None
    return TranscriptionBody(model, audio, filename, language, one("prompt"), fmt, temperature)
