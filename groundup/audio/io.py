"""Audio files (or their bytes) -> the float32 mono 16 kHz waveform in [-1, 1] that a speech model takes.

    path / bytes ─► soundfile (libsndfile) ─► float32 (frames, channels) ─► mean over channels ─► soxr HQ ─► clip

Whisper-style models were trained on 16 kHz mono, so everything is brought there: channels are averaged (not the
first one kept) and other rates are resampled with soxr's high-quality filter. Decoding goes through libsndfile
rather than an ffmpeg subprocess: no binary on PATH, and bytes (an upload) are read in memory. Nothing is written.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

__all__ = ["SAMPLE_RATE", "AudioError", "load_audio"]

SAMPLE_RATE = 16000  # what Whisper (and most speech encoders) take
_CONVERT = "ffmpeg -i {src} -ar {sr} -ac 1 out.wav"


class AudioError(ValueError):
    """Audio cannot be read or used; the message names the file (or input) and the fix."""


def _formats(sf) -> str:
    mp3 = "MP3" if "MP3" in sf.available_formats() else f"not MP3 (libsndfile {sf.__libsndfile_version__} lacks it)"
    return f"WAV, FLAC, OGG/Vorbis and Opus, {mp3}"


def load_audio(path_or_bytes: str | os.PathLike | bytes | bytearray | memoryview,
               sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A file path or a file's raw bytes -> float32 mono samples in [-1, 1] at `sample_rate`; see the module doc."""
    try:
        import soundfile as sf
        import soxr
    except ImportError as e:
        raise ImportError("reading audio needs soundfile and soxr: pip install soundfile soxr") from e
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate < 1:
        raise ValueError(f"sample_rate={sample_rate!r}: give the target rate in Hz as a positive int, e.g. 16000")

    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        data = bytes(path_or_bytes)
        name, src = f"audio bytes ({len(data)} bytes)", "in.xyz"
        if not data:
            raise AudioError(f"{name}: empty, contains no samples; send the whole file")
        source: io.BytesIO | Path = io.BytesIO(data)
    else:
        path = Path(path_or_bytes)
        name, src = str(path), str(path)
        if not path.exists():
            raise AudioError(f"{path}: no such file; check the path (relative paths start at {Path.cwd()})")
        if path.is_dir():
            raise AudioError(f"{path} is a directory; pass an audio file")
        if path.stat().st_size == 0:
            raise AudioError(f"{path}: empty file (0 bytes), contains no samples; check the file was copied whole")
        source = path

    try:
        x, sr = sf.read(source, dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, TypeError) as e:  # libsndfile: unknown format, bad header, codec
        why = (getattr(e, "error_string", None) or str(e)).rstrip(".")  # libsndfile's words, not the BytesIO repr
        raise AudioError(f"{name}: not readable audio ({why}); formats that work: {_formats(sf)}. "
                         f"Convert others with: {_CONVERT.format(src=src, sr=sample_rate)}") from e
    if x.shape[0] == 0:
        raise AudioError(f"{name}: contains no samples (a header with 0 frames); record or export it again")

    x = x.mean(axis=1, dtype=np.float32) if x.shape[1] > 1 else x[:, 0]  # mix down before resampling: 1 channel
    if sr != sample_rate:
        x = soxr.resample(x, sr, sample_rate, quality="HQ")
    # The resampler's ringing can overshoot full scale a little (and float files may exceed it); ffmpeg's s16
    # output, which Whisper's own loader uses, saturates the same way.
    return np.clip(x, -1.0, 1.0).astype(np.float32, copy=False)
