"""POST /v1/audio/transcriptions end to end: a real uvicorn server started as `groundup serve --asr_model
whisper-tiny.en` starts it (no text model), driven by the official `openai` client and by raw HTTP, on LibriVox
read speech: every response_format, OpenAI's error shape for bad uploads and fields, the size cap (413), the
request timeout (504) and the queue bound (429)."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf
from serve_helpers import running_server, save_assets

from groundup.eval.wer import read_sphinx_transcription, word_error_rate
from groundup.serve.app import AppConfig, create_app
from groundup.serve.engine import EngineConfig
from groundup.serve.schema import RequestError
from groundup.serve.server import ServeJob, build_engine
from groundup.serve.speech import SpeechJob, Stopped

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
REFERENCE = read_sphinx_transcription(LIBRIVOX / "transcription")  # Debian pocketsphinx-testdata (make install)
pytestmark = pytest.mark.real_weights
LONG = "sense_and_sensibility_01_austen_64kb-0870"  # 7.1 s, 227 kB
WAV = LIBRIVOX / f"{LONG}.wav"
MODEL = "whisper-tiny.en"
MAX_AUDIO = 300_000


@pytest.fixture(scope="module")
def served():
    engine, models = build_engine(ServeJob(asr_model=MODEL, engine=EngineConfig(max_queue=4, request_timeout=120)))
    with running_server(create_app(engine, models, AppConfig(max_audio_bytes=MAX_AUDIO))) as (_, url):
        yield url, models


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=f"{served[0]}/v1", api_key="unused", max_retries=0, timeout=120)


def transcribe(client, **kw):
    with open(WAV, "rb") as f:
        return client.audio.transcriptions.create(**({"model": MODEL, "file": f} | kw))


def test_every_response_format(client) -> None:
    as_json = transcribe(client)
    assert word_error_rate([REFERENCE[LONG]], [as_json.text]) <= 0.2, as_json.text
    assert as_json.usage.type == "duration" and as_json.usage.seconds == 8  # 7.1 s, rounded up
    assert transcribe(client, response_format="text") == as_json.text + "\n"

    srt = transcribe(client, response_format="srt")
    number, times, text = srt.strip().split("\n")[:3]
    assert number == "1" and re.fullmatch(r"00:00:00,000 --> 00:00:0\d,\d{3}", times) and text in as_json.text
    vtt = transcribe(client, response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:0") and text in vtt

    verbose = transcribe(client, response_format="verbose_json", timestamp_granularities=["segment"])
    assert (verbose.task, verbose.language, verbose.text) == ("transcribe", "english", as_json.text)
    assert 7.0 < verbose.duration < 7.2 and verbose.segments
    assert "".join(s.text for s in verbose.segments).strip() == as_json.text
    for i, s in enumerate(verbose.segments):
        assert s.id == i and 0 <= s.start < s.end <= 7.2 and s.tokens and s.temperature == 0.0
        assert s.avg_logprob < 0 and 0 <= s.no_speech_prob <= 1 and s.seek == round(s.start * 100)


def test_language_prompt_and_temperature_are_used(client) -> None:
    sampled = transcribe(client, language="en", prompt="Mr. John Dashwood.", temperature=0.4,
                         response_format="verbose_json")
    assert {s.temperature for s in sampled.segments} == {0.4}  # T > 0: sampled at T, no fallback
    assert word_error_rate([REFERENCE[LONG]], [sampled.text]) <= 0.3


def test_silence_is_an_empty_transcript(client) -> None:
    silence = io.BytesIO()
    sf.write(silence, np.zeros(3 * 16000, np.float32), 16000, format="WAV")
    verbose = client.audio.transcriptions.create(model=MODEL, file=("silence.wav", silence.getvalue()),
                                                 response_format="verbose_json")
    assert (verbose.text, verbose.segments, verbose.duration) == ("", [], 3.0)


def test_models_lists_the_speech_model_and_text_routes_point_to_it(served, client) -> None:
    url, _ = served
    assert [m.id for m in client.models.list().data] == [MODEL]
    err = httpx.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "x"}).json()["error"]
    assert err["code"] == "model_not_found" and "/v1/audio/transcriptions" in err["message"]


@pytest.mark.parametrize(("kw", "param", "words"), [
    ({"file": ("notes.wav", b"meeting notes, not audio")}, "file", "not usable audio"),
    ({"file": ("empty.wav", b"")}, "file", None),
    ({"language": "xx"}, "language", "unknown language 'xx'"),
    ({"language": "de"}, "language", "English-only"),
    ({"response_format": "diarized_json"}, "response_format", "json, text, srt, vtt, verbose_json"),
    ({"model": "whisper-1"}, "model", "whisper-tiny.en"),
    ({"temperature": 1.5}, "temperature", "[0, 1]"),
    ({"timestamp_granularities": ["word"]}, "timestamp_granularities", "segment"),
])
def test_bad_requests_are_400_naming_the_field(client, kw, param, words) -> None:
    kw = {"response_format": "verbose_json"} | kw if "timestamp_granularities" in kw else kw
    with pytest.raises(openai.BadRequestError) as e:
        if "file" in kw:
            client.audio.transcriptions.create(model=MODEL, **kw)
        else:
            transcribe(client, **kw)
    error = e.value.body
    assert error["param"] == param and error["type"] == "invalid_request_error", error
    assert words is None or words in error["message"], error


def test_uploads_over_the_limit_are_413_and_non_multipart_bodies_400(served, client) -> None:
    url, _ = served
    with pytest.raises(openai.APIStatusError) as e:
        client.audio.transcriptions.create(model=MODEL, file=("big.wav", b"\0" * (MAX_AUDIO + 1)))
    assert e.value.status_code == 413 and e.value.body["code"] == "request_too_large"
    assert "--max_audio_bytes" in e.value.body["message"]
    plain = httpx.post(f"{url}/v1/audio/transcriptions", json={"model": MODEL})
    assert plain.status_code == 400 and plain.json()["error"]["param"] == "file"
    no_file = httpx.post(f"{url}/v1/audio/transcriptions", data={"model": MODEL}, files={"other": ("x", b"1")})
    assert no_file.status_code == 400 and no_file.json()["error"]["param"] == "file"
    assert transcribe(client, response_format="text").strip()  # and the server still answers


def test_timeouts_are_504_and_a_full_queue_429(served, client) -> None:
    _, models = served
    speech = models.speech
    before = speech.request_timeout
    speech.request_timeout = 0.0  # every request is past its deadline when it starts
    try:
        with pytest.raises(openai.APIStatusError) as e:
            transcribe(client)
    finally:
        speech.request_timeout = before
    assert e.value.status_code == 504 and "timed out" in e.value.body["message"]

    late = speech.submit(SpeechJob(None, speech.options(_body()), time.monotonic() - 1))
    with pytest.raises(Stopped, match="while queued"):
        late.result(30)
    speech.waiting += speech.max_queue  # as if max_queue requests were waiting
    try:
        with pytest.raises(RequestError) as full:
            speech.submit(SpeechJob(None, speech.options(_body()), time.monotonic() + 60))
    finally:
        speech.waiting -= speech.max_queue
    assert full.value.status == 429 and full.value.code == "queue_full"
    for _ in range(100):  # the count drops in the future's done-callback, just after its result is set
        if speech.waiting == 0:
            break
        time.sleep(0.01)
    assert speech.waiting == 0
    assert transcribe(client, response_format="text").strip()


def _body():
    from groundup.serve.schema import TranscriptionBody

    return TranscriptionBody(MODEL, b"", "x.wav")


def test_serve_options_without_a_text_model(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # no runs/quickstart/ckpt here
    with pytest.raises(FileNotFoundError, match="--asr_model whisper-tiny.en"):
        build_engine(ServeJob())
    with pytest.raises(ValueError, match="--adapter need"):
        build_engine(ServeJob(asr_model=MODEL, adapter=["a=x"]))
    with pytest.raises(ValueError, match="also the name"):
        build_engine(ServeJob(asr_model=MODEL, embedding_model=MODEL))


def test_a_text_model_and_the_speech_model_side_by_side(tmp_path) -> None:
    paths = save_assets(tmp_path)
    engine, models = build_engine(ServeJob(model=str(paths["model"]), name="tiny", asr_model=MODEL,
                                           engine=EngineConfig(max_batch=2, max_seq_len=64)))
    assert engine.model is not None and models.names() == ["tiny", MODEL]
    assert [m["id"] for m in models.listing(0)["data"]] == ["tiny", MODEL]
    with pytest.raises(RequestError, match="speech-recognition model"):
        models.generation_target(MODEL)
    with pytest.raises(RequestError, match="transcribes with 'whisper-tiny.en'"):
        models.check_speech("tiny")
