"""`groundup transcribe` on real read speech (LibriVox, whisper-tiny.en): the text against the reference, every
output format parsed back, --output_dir written atomically (and not at all when an input is bad), each bad input
refused in one line with exit code 2, silence transcribed as nothing. One run goes through a subprocess as a user
runs it; the rest call the CLI's main() in this process with the model loaded once."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from cli_helpers import groundup

import groundup.apps.transcribe as app
from groundup.cli import main, parse_job
from groundup.eval.wer import read_sphinx_transcription, word_error_rate
from groundup.jobs import TranscribeJob
from groundup.speech import Segment, Transcript, load_whisper
from groundup.speech.formats import timestamp, to_srt, to_text, to_vtt, verbose_json

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
REFERENCE = read_sphinx_transcription(LIBRIVOX / "transcription")  # Debian pocketsphinx-testdata (make install)
pytestmark = pytest.mark.real_weights
SRT_TIME = r"(\d\d):(\d\d):(\d\d),(\d{3})"
VTT_TIME = r"(\d\d):(\d\d):(\d\d)\.(\d{3})"


def wav(fileid: str) -> str:
    return str(LIBRIVOX / f"{fileid}.wav")


SHORT, OTHER, LONG = (f"sense_and_sensibility_01_austen_64kb-{n}" for n in ("0880", "0930", "0870"))


@pytest.fixture(scope="module")
def tiny():
    return load_whisper("whisper-tiny.en", inference=True)


@pytest.fixture
def cli(tiny, monkeypatch, capsys):
    """main(argv) -> (exit code, stdout, stderr), with whisper-tiny.en loaded once for the module."""
    real = app.load_whisper
    monkeypatch.setattr(app, "load_whisper", lambda name, **kw: tiny if name == "whisper-tiny.en" else real(name, **kw))

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        rc = main(["transcribe", *argv])
        out = capsys.readouterr()
        return rc, out.out, out.err

    return run


@pytest.fixture(scope="module")
def two_utterances(tmp_path_factory) -> Path:
    """13.4 s: two read sentences with a second of silence between them, so the transcript has several segments."""
    a, sr = sf.read(wav(LONG), dtype="float32")
    b, _ = sf.read(wav("sense_and_sensibility_01_austen_64kb-0890"), dtype="float32")
    path = tmp_path_factory.mktemp("audio") / "two.wav"
    sf.write(path, np.concatenate([a, np.zeros(sr, np.float32), b]), sr)
    return path


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    (root / "notes.wav").write_text("these are meeting notes, not audio\n")
    (root / "empty.wav").write_bytes(b"")
    silence = root / "silence.wav"
    sf.write(silence, np.zeros(5 * 16000, np.float32), 16000)
    return {"text": root / "notes.wav", "empty": root / "empty.wav", "silence": silence}


def _seconds(groups: tuple[str, ...]) -> float:
    h, m, s, ms = (int(g) for g in groups)
    return round(h * 3600 + m * 60 + s + ms / 1000, 3)


def parse_srt(text: str) -> list[tuple[int, float, float, str]]:
    cues = []
    for block in text.strip().split("\n\n"):
        number, times, *lines = block.split("\n")
        match = re.fullmatch(f"{SRT_TIME} --> {SRT_TIME}", times)
        assert match, times
        cues.append((int(number), _seconds(match.groups()[:4]), _seconds(match.groups()[4:]), " ".join(lines)))
    return cues


# --- the text -------------------------------------------------------------------------------------------------
def test_a_user_run_prints_the_transcript_close_to_the_reference() -> None:
    done = groundup("transcribe", wav(LONG))
    assert done.returncode == 0, done.stderr
    assert word_error_rate([REFERENCE[LONG]], [done.stdout]) <= 0.2, done.stdout
    assert done.stdout.endswith("\n") and done.stdout.count("\n") == 1  # the text alone
    assert "transcribing" not in done.stderr  # 7 s of audio: no progress bar


def test_two_files_in_one_call_give_each_transcript_as_one_at_a_time(cli) -> None:
    rc, both, _ = cli(wav(SHORT), wav(OTHER))
    assert rc == 0
    alone = [cli(wav(SHORT))[1], cli(wav(OTHER))[1]]
    assert both == f"==> {wav(SHORT)} <==\n{alone[0]}\n==> {wav(OTHER)} <==\n{alone[1]}"
    assert word_error_rate([REFERENCE[SHORT], REFERENCE[OTHER]], alone) <= 0.25
    rc, as_json, _ = cli(wav(SHORT), wav(OTHER), "--format", "json")
    listed = json.loads(as_json)
    assert [d["file"] for d in listed] == [wav(SHORT), wav(OTHER)]
    assert [d["text"] + "\n" for d in listed] == alone


def test_timestamps_srt_vtt_and_json_parse_back(cli, two_utterances) -> None:
    rc, srt, _ = cli(str(two_utterances), "--format", "srt")
    assert rc == 0
    cues = parse_srt(srt)
    assert len(cues) >= 2 and [c[0] for c in cues] == list(range(1, len(cues) + 1))
    times = [t for _, start, end, _ in cues for t in (start, end)]
    assert all(a < b for _, a, b, _ in cues) and times == sorted(times) and times[-1] <= 13.45

    rc, as_json, _ = cli(str(two_utterances), "--format", "json")
    data = json.loads(as_json)
    assert set(data) == {"text", "segments", "language", "duration"} and data["language"] == "en"
    assert 13.3 < data["duration"] < 13.5
    assert [(s["start"], s["end"]) for s in data["segments"]] == [(c[1], c[2]) for c in cues]
    assert data["text"] == "".join(s["text"] for s in data["segments"]).strip()
    assert [c[3] for c in cues] == [s["text"].strip() for s in data["segments"]]
    assert all(isinstance(t, int) for s in data["segments"] for t in s["tokens"])
    refs = REFERENCE[LONG] + " " + REFERENCE["sense_and_sensibility_01_austen_64kb-0890"]
    assert word_error_rate([refs], [data["text"]]) <= 0.2

    rc, vtt, _ = cli(str(two_utterances), "--format", "vtt")
    head, *blocks = vtt.strip().split("\n\n")
    assert head == "WEBVTT" and len(blocks) == len(cues)
    for block, (_, start, end, text) in zip(blocks, cues, strict=True):
        times, *lines = block.split("\n")
        match = re.fullmatch(f"{VTT_TIME} --> {VTT_TIME}", times)
        assert match and (_seconds(match.groups()[:4]), _seconds(match.groups()[4:])) == (start, end)
        assert " ".join(lines) == text

    rc, timed, _ = cli(str(two_utterances), "--timestamps")
    lines = timed.splitlines()
    assert len(lines) == len(cues)
    for line, (_, start, end, text) in zip(lines, cues, strict=True):
        match = re.fullmatch(r"\[(\d\d):(\d\d)\.(\d{3}) --> (\d\d):(\d\d)\.(\d{3})\] (.+)", line)
        assert match, line
        m1, s1, ms1, m2, s2, ms2 = (int(g) for g in match.groups()[:6])
        assert (round(m1 * 60 + s1 + ms1 / 1000, 3), round(m2 * 60 + s2 + ms2 / 1000, 3)) == (start, end)
        assert match[7] == text


def test_formats_by_hand() -> None:
    t = Transcript("Hi --> there. Bye.", [Segment(0.0, 3661.5, " Hi --> there.", [1], -0.1, 1.0, 0.01, 0.0),
                                          Segment(3661.5, 3662.25, " Bye.", [2], -0.2, 1.0, 0.02, 0.2)], "en", 3663.0)
    assert timestamp(3661.5) == "01:01:01.500" and timestamp(61.0) == "01:01.000"
    assert timestamp(0.0015, True, ",") == "00:00:00,002"
    assert to_srt(t) == ("1\n00:00:00,000 --> 01:01:01,500\nHi -> there.\n\n"
                         "2\n01:01:01,500 --> 01:01:02,250\nBye.\n\n")
    assert to_vtt(t).startswith("WEBVTT\n\n00:00:00.000 --> 01:01:01.500\nHi -> there.\n\n")
    assert to_text(t, timestamps=True).splitlines()[1] == "[01:01:01.500 --> 01:01:02.250] Bye."
    verbose = verbose_json(t)
    assert verbose["language"] == "english" and verbose["task"] == "transcribe"
    assert [s["id"] for s in verbose["segments"]] == [0, 1] and verbose["segments"][1]["seek"] == 366150
    empty = Transcript("", [], "en", 5.0)
    assert (to_text(empty), to_srt(empty), to_vtt(empty)) == ("", "", "WEBVTT\n\n")


def test_silence_is_an_empty_transcript(cli, bad_files) -> None:
    assert cli(str(bad_files["silence"])) == (0, "", "")
    rc, out, _ = cli(str(bad_files["silence"]), "--format", "json")
    assert rc == 0 and json.loads(out) == {"text": "", "segments": [], "language": "en", "duration": 5.0}


# --- files ----------------------------------------------------------------------------------------------------
def test_output_dir_gets_one_file_per_input_written_by_rename(cli, tmp_path, monkeypatch, bad_files) -> None:
    renames = []
    real_replace = app.os.replace
    monkeypatch.setattr(app.os, "replace", lambda src, dst: (renames.append((Path(src), Path(dst))),
                                                             real_replace(src, dst))[1])
    out = tmp_path / "subs" / "new"
    rc, stdout, _ = cli(wav(SHORT), str(bad_files["silence"]), "--format", "srt", "--output_dir", str(out))
    assert rc == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted([f"{SHORT}.srt", "silence.srt"])  # no temporary files left behind
    assert [dst for _, dst in renames] == [out / f"{SHORT}.srt", out / "silence.srt"]
    assert all(src.parent == out and src != dst for src, dst in renames)
    assert stdout == f"wrote {out / f'{SHORT}.srt'}\nwrote {out / 'silence.srt'}\n"
    assert (out / f"{SHORT}.srt").read_text() == cli(wav(SHORT), "--format", "srt")[1]
    assert (out / "silence.srt").read_text() == ""
    assert (out / f"{SHORT}.srt").stat().st_mode & 0o044 == 0o044  # readable as open() would make it, not 0600


def test_nothing_is_written_when_one_input_is_bad(cli, tmp_path, bad_files) -> None:
    out = tmp_path / "out"
    rc, stdout, err = cli(wav(SHORT), str(bad_files["text"]), "--output_dir", str(out))
    assert rc == 2 and stdout == "" and str(bad_files["text"]) in err and "not readable audio" in err
    assert not out.exists()
    out.mkdir()
    (out / f"{SHORT}.txt").write_text("an earlier transcript\n")
    rc, _, err = cli(wav(SHORT), str(tmp_path / "missing.wav"), "--output_dir", str(out))
    assert rc == 2 and "no such file" in err
    assert [p.name for p in out.iterdir()] == [f"{SHORT}.txt"]
    assert (out / f"{SHORT}.txt").read_text() == "an earlier transcript\n"
    rc, _, err = cli(wav(SHORT), str(tmp_path / "x" / Path(wav(SHORT)).name), "--output_dir", str(out))
    assert rc == 2 and "would both be written" in err


@pytest.mark.parametrize(("case", "expect"), [
    ("missing", "no such file"), ("text", "not readable audio"), ("empty", "empty file"),
    ("format", "--format 'xml' is not a format; use one of txt, srt, vtt, json"),
    ("language", "unknown language 'xx'"), ("translate", "English-only"), ("no files", "no audio files given"),
    ("beam", "--beam_size=0 must be"),
])
def test_each_bad_input_is_one_line_and_exit_code_2(cli, bad_files, tmp_path, case, expect) -> None:
    argv = {"missing": [str(tmp_path / "nope.wav")], "text": [str(bad_files["text"])],
            "empty": [str(bad_files["empty"])], "format": [wav(SHORT), "--format", "xml"],
            "language": [wav(SHORT), "--language", "xx"], "translate": [wav(SHORT), "--task", "translate"],
            "no files": ["--format", "srt"], "beam": [wav(SHORT), "--beam_size", "0"]}[case]
    rc, out, err = cli(*argv)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("groundup transcribe: error: ") and expect in err, err
    if case == "translate":
        assert "--task" in err and "whisper-base" in err  # the flag and the fix


def test_long_audio_shows_a_progress_bar_on_stderr(cli, monkeypatch) -> None:
    rc, out, err = cli(wav(SHORT))
    assert rc == 0 and err == ""
    monkeypatch.setattr(app, "PROGRESS_AFTER_S", 1.0)  # as if the 3 s were over 30 s
    rc, with_bar, err = cli(wav(SHORT))
    assert rc == 0 and with_bar == out and "transcribing" in err and "s of audio" in err


def test_files_are_bare_arguments_and_switches_do_not_swallow_them() -> None:
    job = parse_job(TranscribeJob, ["a.wav", "--timestamps", "b.wav", "--format", "srt", "--timestamps", "true",
                                    "--", "--odd name.wav"])
    assert job.files == ["a.wav", "b.wav", "--odd name.wav"] and job.timestamps is True and job.format == "srt"
    assert parse_job(TranscribeJob, ["--timestamps", "false", "a.wav"]).timestamps is False
    assert app.fallback_temperatures(0.0, 0.2) == (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    assert app.fallback_temperatures(0.5, None) == (0.5,)
    assert app.fallback_temperatures(0.3, 0) == (0.3,)
