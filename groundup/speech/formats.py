"""Transcripts as files and API responses: plain text, SRT and WebVTT subtitles, JSON, and OpenAI's verbose_json.

    to_text(t)                  "And Mr. John Dashwood had then leisure ...\n"
    to_text(t, timestamps=True) "[00:00.000 --> 00:07.000] And Mr. John Dashwood ...\n" (one line per segment)
    to_srt(t)                   "1\n00:00:00,000 --> 00:00:07,000\nAnd Mr. John ...\n\n" (cues numbered from 1)
    to_vtt(t)                   "WEBVTT\n\n00:00:00.000 --> 00:00:07.000\nAnd Mr. John ...\n\n"
    to_json(t)                  {"text", "segments": [{start, end, text, tokens, ...}], "language", "duration"}
    verbose_json(t, task)       OpenAI's /v1/audio/transcriptions verbose_json object (language as a name: "english")

Every text form ends with a newline, except that a transcript with no speech gives "" (srt, txt) or the bare
header (vtt). A cue's text is the segment's, stripped, with "-->" written "->" (openai-whisper's writers do the
same: the arrow would end the cue line in both formats).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from ..tokenizer_whisper import LANGUAGES

if TYPE_CHECKING:
    from . import Segment, Transcript

FORMATS = ("txt", "srt", "vtt", "json")  # what `groundup transcribe --format` writes, and the file extensions


def timestamp(seconds: float, hours: bool = False, marker: str = ".") -> str:
    """openai-whisper's format_timestamp: [HH:]MM:SS<marker>mmm; hours always with hours=True, else from 1 h on."""
    if seconds < 0:
        raise ValueError(f"timestamp({seconds}): a time in the audio cannot be negative")
    ms = round(seconds * 1000.0)
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{f'{h:02d}:' if hours or h else ''}{m:02d}:{s:02d}{marker}{ms:03d}"


def _cue_text(segment: Segment) -> str:
    return segment.text.strip().replace("-->", "->")


def _spoken(transcript: Transcript) -> list[Segment]:
    return [s for s in transcript.segments if s.text.strip()]


def to_text(transcript: Transcript, timestamps: bool = False) -> str:
    """The transcript's text, or with timestamps one "[MM:SS.mmm --> MM:SS.mmm] text" line per segment."""
    if timestamps:
        return "".join(f"[{timestamp(s.start)} --> {timestamp(s.end)}] {s.text.strip()}\n"
                       for s in _spoken(transcript))
    return f"{transcript.text}\n" if transcript.text else ""


def to_srt(transcript: Transcript) -> str:
    """SubRip: numbered cues (from 1), HH:MM:SS,mmm --> HH:MM:SS,mmm, a blank line after each."""
    return "".join(f"{i}\n{timestamp(s.start, True, ',')} --> {timestamp(s.end, True, ',')}\n{_cue_text(s)}\n\n"
                   for i, s in enumerate(_spoken(transcript), 1))


def to_vtt(transcript: Transcript) -> str:
    """WebVTT: the WEBVTT header, then HH:MM:SS.mmm --> HH:MM:SS.mmm cues."""
    cues = "".join(f"{timestamp(s.start, True)} --> {timestamp(s.end, True)}\n{_cue_text(s)}\n\n"
                   for s in _spoken(transcript))
    return f"WEBVTT\n\n{cues}"


def _segment(s: Segment) -> dict:
    return {"start": s.start, "end": s.end, "text": s.text, "tokens": list(s.tokens), "temperature": s.temperature,
            "avg_logprob": s.avg_logprob, "compression_ratio": s.compression_ratio, "no_speech_prob": s.no_speech_prob}


def json_dict(transcript: Transcript) -> dict:
    """{"text", "segments", "language" (the code, e.g. "en"), "duration" (seconds)}."""
    return {"text": transcript.text, "segments": [_segment(s) for s in transcript.segments],
            "language": transcript.language, "duration": transcript.duration}


def to_json(transcript: Transcript) -> str:
    """json_dict as indented JSON text (UTF-8 characters kept as they are)."""
    return json.dumps(json_dict(transcript), ensure_ascii=False, indent=2) + "\n"


def language_name(code: str) -> str:
    """"en" -> "english": how OpenAI's verbose_json names the language (the code itself if unknown)."""
    return LANGUAGES.get(code, code)


def verbose_json(transcript: Transcript, task: str = "transcribe") -> dict:
    """OpenAI's verbose_json: task, language (lower-case English name), duration, text, and segments with id and
    seek. `seek` is the segment's start in 10 ms mel frames: Segment does not record which 30 s window it was
    decoded in (openai-whisper's seek), and the start frame is what a client can use it for."""
    segments = [{"id": i, "seek": round(s.start * 100), **_segment(s)} for i, s in enumerate(transcript.segments)]
    return {"task": task, "language": language_name(transcript.language), "duration": transcript.duration,
            "text": transcript.text, "segments": segments}


def render(transcript: Transcript, fmt: str, timestamps: bool = False) -> str:
    """The transcript as `fmt` (txt, srt, vtt or json); `timestamps` applies to txt."""
    if fmt == "txt":
        return to_text(transcript, timestamps)
    writers = {"srt": to_srt, "vtt": to_vtt, "json": to_json}
    if fmt not in writers:
        raise ValueError(f"format={fmt!r}: use one of {', '.join(FORMATS)}")
    return writers[fmt](transcript)


__all__ = ["FORMATS", "json_dict", "language_name", "render", "timestamp", "to_json", "to_srt", "to_text", "to_vtt",
           "verbose_json"]
