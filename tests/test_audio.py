"""Audio: Whisper's mel filters and log-mel against recorded and independent references, loading, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from faster_whisper.feature_extractor import FeatureExtractor  # numpy reimplementation of whisper's frontend

from groundup.audio import (
    HOP_LENGTH,
    N_FRAMES,
    N_SAMPLES,
    SAMPLE_RATE,
    AudioError,
    load_audio,
    log_mel_spectrogram,
    mel_filters,
    pad_or_trim,
)

# openai-whisper 20250625's whisper/assets/mel_filters.npz, unchanged (float32): what whisper saved from
# librosa.filters.mel(sr=16000, n_fft=400, n_mels=80 / 128). An independent recorded reference, not our output.
WHISPER_FILTERS = Path(__file__).parent / "data" / "whisper_mel_filters.npz"
# Debian pocketsphinx-testdata: 3 s of LibriVox speech, 16 kHz mono 16-bit
SPEECH = Path("/usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0880.wav")


def synthetic(seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    """A 440 Hz tone + a 1 kHz -> 4 kHz chirp + seeded noise, with a silent stretch (exercises the 80 dB floor)."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    chirp = np.sin(2 * np.pi * (1000 * t + 1500 * t**2 / seconds))
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * chirp + 0.01 * np.random.default_rng(seed).standard_normal(t.size)
    x[len(x) // 2: len(x) // 2 + 3000] = 0.0
    return x.astype(np.float32)


def speech() -> np.ndarray:
    if not SPEECH.is_file():
        pytest.fail(f"Debian pocketsphinx-testdata is not installed ({SPEECH}): apt-get install pocketsphinx-testdata")
    return load_audio(SPEECH)


def reference_log_mel(x: np.ndarray, filters: np.ndarray) -> np.ndarray:
    """The formula written out in float64 numpy: centred reflect-padded frames, periodic Hann, rfft, |X|^2, last
    frame dropped, mel, log10, 80 dB floor, (x + 4) / 4."""
    n_fft = 400
    padded = np.pad(x.astype(np.float64), n_fft // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::HOP_LENGTH]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2  # (frames, 201)
    log_spec = np.log10(np.maximum(filters.astype(np.float64) @ power[:-1].T, 1e-10))
    return (np.maximum(log_spec, log_spec.max() - 8.0) + 4.0) / 4.0


# --- mel filters --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_equal_whisper_recorded_librosa_filters(n_mels):
    expected = np.load(WHISPER_FILTERS)[f"mel_{n_mels}"]
    got = mel_filters(n_mels)
    assert got.shape == expected.shape == (n_mels, 201) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-8)


# --- log-mel -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("signal", ["synthetic", "quiet", "speech", "speech 30 s"])
@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_matches_a_numpy_formula_and_faster_whisper(signal, n_mels):
    x = speech() if signal.startswith("speech") else synthetic()
    if signal == "quiet":
        x = 1e-3 * x  # so quiet that the silent stretch sits at the 1e-10 clamp, not at max - 8
    if signal == "speech 30 s":
        x = pad_or_trim(x)  # what whisper feeds its encoder: mostly zeros, all at the floor
    got = log_mel_spectrogram(x, n_mels)
    assert got.dtype == torch.float32 and got.shape == (n_mels, len(x) // HOP_LENGTH)
    filters = np.load(WHISPER_FILTERS)[f"mel_{n_mels}"]
    np.testing.assert_allclose(got.numpy(), reference_log_mel(x, filters), rtol=0, atol=1e-4)
    # faster-whisper pads 160 zeros by default; padding=0 is whisper's own default
    np.testing.assert_allclose(got.numpy(), FeatureExtractor(feature_size=n_mels)(x, padding=0), rtol=0, atol=1e-4)
    padded = log_mel_spectrogram(torch.from_numpy(x), n_mels, padding=160)
    np.testing.assert_allclose(padded.numpy(), FeatureExtractor(feature_size=n_mels)(x), rtol=0, atol=1e-4)


def test_thirty_seconds_give_whisper_encoder_input_shape():
    assert log_mel_spectrogram(pad_or_trim(synthetic())).shape == (80, N_FRAMES) == (80, 3000)


def test_batch_equals_one_at_a_time_with_a_floor_per_item():
    loud, quiet = synthetic(2.0, seed=1), 1e-2 * synthetic(1.3, seed=2)  # 40 dB apart, different lengths
    batch = np.stack([pad_or_trim(loud, len(loud)), pad_or_trim(quiet, len(loud))])
    out = log_mel_spectrogram(batch)
    assert out.shape == (2, 80, len(loud) // HOP_LENGTH)
    for item, row in zip(out, batch, strict=True):
        torch.testing.assert_close(item, log_mel_spectrogram(row), rtol=0, atol=1e-5)
    # the quiet item keeps detail below the loud one's floor: a global max (whisper's) would have flattened it
    loud_floor = out[0].max() - 8.0 / 4
    assert out[1].min() < loud_floor - 0.5


def test_pad_or_trim_numpy_and_torch():
    a = np.arange(1, 7, dtype=np.float32).reshape(2, 3)
    assert pad_or_trim(a, 5).tolist() == [[1, 2, 3, 0, 0], [4, 5, 6, 0, 0]]
    assert pad_or_trim(a, 2).tolist() == [[1, 2], [4, 5]]
    assert pad_or_trim(a, 3, axis=0).tolist() == [[1, 2, 3], [4, 5, 6], [0, 0, 0]]
    t = torch.from_numpy(a)
    assert pad_or_trim(t, 5).tolist() == [[1, 2, 3, 0, 0], [4, 5, 6, 0, 0]]
    assert pad_or_trim(t, 1, axis=0).tolist() == [[1, 2, 3]]
    assert pad_or_trim(t, 3, axis=0).tolist() == [[1, 2, 3], [4, 5, 6], [0, 0, 0]]
    assert pad_or_trim(np.zeros(10)).shape == (N_SAMPLES,)


def test_log_mel_input_errors():
    with pytest.raises(ValueError, match="shape"):
        log_mel_spectrogram(np.zeros((1, 2, 1000), np.float32))
    with pytest.raises(ValueError, match="int16 PCM"):
        log_mel_spectrogram(np.zeros(1000, np.int16))
    with pytest.raises(ValueError, match="pad_or_trim"):
        log_mel_spectrogram(np.zeros(100, np.float32))


# --- loading -------------------------------------------------------------------------------------------------------
def tone(hz: float, seconds: float, sr: int, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * hz * np.arange(int(seconds * sr)) / sr)).astype(np.float32)


def test_8khz_stereo_becomes_16khz_mono_with_the_tone_kept(tmp_path):
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([tone(440, 1.0, 8000, 0.6), tone(440, 1.0, 8000, 0.2)], axis=1), 8000)
    x = load_audio(path)
    assert x.dtype == np.float32 and x.ndim == 1 and abs(len(x) - SAMPLE_RATE) <= 1
    spectrum = np.abs(np.fft.rfft(x))
    assert np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE)[spectrum.argmax()] == pytest.approx(440, abs=1)
    middle = x[1000:-1000]  # away from the resampler's edges
    assert np.abs(middle).max() == pytest.approx(0.4, rel=0.01)  # the channels' mean, not the first one (0.6)


def test_resampled_audio_stays_within_full_scale(tmp_path):
    square = np.sign(tone(250, 0.5, 8000)).astype(np.float32)  # full-scale edges: soxr rings past +-1
    assert np.abs(soxr.resample(square, 8000, SAMPLE_RATE, quality="HQ")).max() > 1.0
    path = tmp_path / "square.wav"
    sf.write(path, square, 8000, subtype="FLOAT")
    x = load_audio(path)
    assert np.abs(x).max() <= 1.0


@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg"])
def test_formats_round_trip_and_bytes_equal_path(tmp_path, fmt):
    x = synthetic(1.0)
    path = tmp_path / f"a.{fmt}"
    sf.write(path, x, SAMPLE_RATE)
    got = load_audio(path)
    assert got.dtype == np.float32 and got.shape == x.shape
    if fmt == "ogg":  # Vorbis is lossy: close, not equal
        assert np.sqrt(np.mean((got - x) ** 2)) < 0.1 * np.sqrt(np.mean(x**2))  # error ~4% of the signal's RMS
    else:  # 16-bit PCM: within one quantisation step
        np.testing.assert_allclose(got, x, rtol=0, atol=1.01 / 32768)
    np.testing.assert_array_equal(load_audio(path.read_bytes()), got)
    np.testing.assert_array_equal(load_audio(str(path)), got)


def test_load_audio_errors_name_the_problem(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not audio at all\n")
    with pytest.raises(AudioError, match=r"notes\.txt: not readable audio .*WAV, FLAC.*ffmpeg -i .*notes\.txt"):
        load_audio(text)
    with pytest.raises(AudioError, match="audio bytes .*not readable audio"):
        load_audio(text.read_bytes())
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioError, match=r"empty\.wav: empty file .*contains no samples"):
        load_audio(empty)
    with pytest.raises(AudioError, match="contains no samples"):
        load_audio(b"")
    zero = tmp_path / "zero.wav"
    sf.write(zero, np.zeros((0, 1), np.float32), SAMPLE_RATE)
    assert zero.stat().st_size > 0  # a real header, just no frames
    with pytest.raises(AudioError, match=r"zero\.wav: contains no samples"):
        load_audio(zero)
    with pytest.raises(AudioError, match=r"missing\.wav: no such file"):
        load_audio(tmp_path / "missing.wav")
    with pytest.raises(AudioError, match="is a directory"):
        load_audio(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.wav", "notes.txt", "zero.wav"]  # nothing written
