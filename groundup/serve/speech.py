"""A Whisper model behind POST /v1/audio/transcriptions (OpenAI's speech-to-text endpoint).

    upload ─ size cap (413) ─ multipart form ─ parse + check (schema.parse_transcription) ─ decode the audio
        ─ the speech worker thread (one transcription at a time; at most max_queue waiting, else 429)
        ─ json | text | srt | vtt | verbose_json

The worker thread owns the model, as the engine thread owns the text model; transcriptions run one at a time
(Whisper batches the 30 s windows of one upload itself). A request that waits or runs past request_timeout (from
its arrival) ends with 504, and one whose client went away is dropped; both are checked when the request starts
and between batches of windows, so the model is free again within one window's decoding.
"""

from __future__ import annotations

import concurrent.futures
import math
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..apps.transcribe import fallback_temperatures
from ..speech import TranscribeOptions, Transcript, transcribe
from ..speech.formats import to_srt, to_text, to_vtt, verbose_json
from ..tokenizer_whisper import WhisperTokenizer
from .schema import RequestError, TranscriptionBody


class Stopped(Exception):
    """Raised inside transcribe (from its progress callback) to end a request that timed out or was cancelled."""


@dataclass
class SpeechJob:
    audio: np.ndarray
    options: TranscribeOptions
    deadline: float
    cancelled: threading.Event = field(default_factory=threading.Event)


class ServedSpeech:
    def __init__(self, name: str, model, tokenizer: WhisperTokenizer, max_queue: int = 64,
                 request_timeout: float = 600.0, batch_size: int = 8) -> None:
        self.name, self.model, self.tokenizer = name, model, tokenizer
        self.max_queue, self.request_timeout, self.batch_size = max_queue, request_timeout, batch_size
        self.waiting = 0  # submitted and not finished (the running one included)
        self._count = threading.Lock()
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="groundup-speech")
        self.closing = threading.Event()

    # --- the app's side -------------------------------------------------------------------------------------
    def check_model(self, name: str) -> None:
        if name != self.name:
            raise RequestError(f"unknown model {name!r}; this server transcribes with {self.name!r} (GET /v1/models "
                               "lists the served models)", "model", "model_not_found")

    def options(self, body: TranscriptionBody) -> TranscribeOptions:
        """The decoding options of a request: its language checked against this model, its prompt, and its
        temperature as OpenAI means it (0: Whisper's fallback from 0 to 1 in steps of 0.2; T > 0: sample at T)."""
        language = None
        if body.language is not None:
            try:
                language = self.tokenizer.language_code(body.language)
            except ValueError as e:
                raise RequestError(f"'language'={body.language!r} is not a language {self.name!r} knows: {e}",
                                   "language") from None
            if not self.tokenizer.multilingual and language != "en":
                raise RequestError(f"'language'={body.language!r}: {self.name!r} is English-only; send 'en' or "
                                   "leave 'language' out", "language")
        temperatures = fallback_temperatures(body.temperature, 0.2 if body.temperature == 0 else None)
        return TranscribeOptions(language=language, temperatures=temperatures, initial_prompt=body.prompt or None)

    def submit(self, job: SpeechJob) -> concurrent.futures.Future:
        if self.closing.is_set():
            raise RequestError("the server is shutting down; send the request to another replica or retry", None,
                               "shutting_down", 503, "server_error")
        with self._count:
            if self.waiting >= self.max_queue:
                raise RequestError(f"{self.max_queue} transcriptions are already waiting; retry shortly", None,
                                   "queue_full", 429, "rate_limit_error")
            self.waiting += 1
        try:
            future = self._worker.submit(self._run, job)
        except RuntimeError:  # the worker was shut down
            self._done()
            raise RequestError("the server is shutting down; retry", None, "shutting_down", 503,
                               "server_error") from None
        future.add_done_callback(lambda _: self._done())  # also when cancelled before it ran
        return future

    def close(self) -> None:
        """Take no new requests; finish the running and waiting ones (each bounded by its deadline)."""
        self.closing.set()
        self._worker.shutdown(wait=True)

    # --- the worker thread ----------------------------------------------------------------------------------
    def _done(self) -> None:
        with self._count:
            self.waiting -= 1

    def _run(self, job: SpeechJob) -> Transcript:
        self._check(job, "while queued")

        def progress(done: int, total: int) -> None:
            self._check(job, f"after {done / 100:.1f} of {total / 100:.1f} s of audio")

        with torch.inference_mode():
            return transcribe(self.model, self.tokenizer, [job.audio], job.options, self.batch_size, progress)[0]

    def _check(self, job: SpeechJob, where: str) -> None:
        if job.cancelled.is_set():
            raise Stopped("cancelled")
        if time.monotonic() > job.deadline:
            raise Stopped(f"the transcription timed out {where} (request_timeout={self.request_timeout:g}s); send "
                          "shorter audio or retry when the server is less busy")


def usage(transcript: Transcript) -> dict:
    """OpenAI's duration usage: whole seconds of audio, rounded up."""
    return {"type": "duration", "seconds": math.ceil(transcript.duration)}


def response(transcript: Transcript, fmt: str) -> tuple[dict | str, str]:
    """(body, media type) of the response_format: json and verbose_json as objects, the rest as plain text (as
    OpenAI sends srt and vtt too)."""
    if fmt == "json":
        return {"text": transcript.text, "usage": usage(transcript)}, "application/json"
    if fmt == "verbose_json":
        return verbose_json(transcript) | {"usage": usage(transcript)}, "application/json"
    text = {"text": to_text, "srt": to_srt, "vtt": to_vtt}[fmt](transcript)
    return text, "text/plain"
