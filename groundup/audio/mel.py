"""16 kHz waveform -> Whisper's log-mel spectrogram, the (n_mels, frames) input of its audio encoder.

    samples ─► STFT (400-pt periodic Hann, hop 160, centred, reflect pad) ─► drop last frame ─► |X|²
            ─► Slaney mel filters @ power ─► log10(max(·, 1e-10)) ─► floor at max - 8 ─► (x + 4) / 4

An encoder only sees what it was trained on if this is reproduced exactly, so the steps are openai-whisper's
log_mel_spectrogram and the filters are librosa.filters.mel(sr=16000, n_fft=400, n_mels=...) (Slaney scale and
area normalisation, what whisper ships in mel_filters.npz), recomputed in numpy so that librosa is not needed.
One difference: for a batch (B, samples) the floor's max is taken per item (whisper takes it over the whole
tensor, so one loud clip would floor a quiet one); for a single clip the two agree.
"""

from __future__ import annotations

from functools import cache
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from .io import SAMPLE_RATE

__all__ = ["CHUNK_LENGTH", "HOP_LENGTH", "N_FFT", "N_FRAMES", "N_SAMPLES", "log_mel_spectrogram", "mel_filters",
           "pad_or_trim"]

N_FFT = 400  # 25 ms window
HOP_LENGTH = 160  # 10 ms hop: 100 frames a second
CHUNK_LENGTH = 30  # seconds of audio per encoder input
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480000
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000

# Slaney's mel scale (librosa htk=False): linear below 1 kHz, logarithmic above.
_F_SP = 200.0 / 3  # Hz per mel in the linear part
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP  # 15 mels
_LOGSTEP = np.log(6.4) / 27.0

Array = TypeVar("Array", np.ndarray, torch.Tensor)


def _hz_to_mel(f: float) -> float:
    return f / _F_SP if f < _MIN_LOG_HZ else _MIN_LOG_MEL + float(np.log(f / _MIN_LOG_HZ)) / _LOGSTEP


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    return np.where(m >= _MIN_LOG_MEL, _MIN_LOG_HZ * np.exp(_LOGSTEP * (m - _MIN_LOG_MEL)), _F_SP * m)


@cache
def mel_filters(n_mels: int = 80, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(n_mels, 1 + n_fft // 2) float32 triangular filters, fmin 0 to fmax sample_rate / 2; read-only (cached)."""
    if isinstance(n_mels, bool) or not isinstance(n_mels, int) or n_mels < 1:
        raise ValueError(f"n_mels={n_mels!r}: give a positive int; Whisper uses 80 (large-v3: 128)")
    fft_hz = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    hz = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2), n_mels + 2))  # band edges/centres
    ramps = hz[:, None] - fft_hz[None, :]
    fdiff = np.diff(hz)[:, None]
    # librosa stores the triangles as float32 before scaling them; doing the same keeps its rounding bit for bit.
    weights = np.maximum(0.0, np.minimum(-ramps[:-2] / fdiff[:-1], ramps[2:] / fdiff[1:])).astype(np.float32)
    weights *= (2.0 / (hz[2:] - hz[:-2]))[:, None]  # Slaney: equal area, ~constant energy per band
    weights.flags.writeable = False  # shared through the cache
    return weights


@cache
def _filters_tensor(n_mels: int) -> torch.Tensor:
    return torch.from_numpy(mel_filters(n_mels).copy())


def log_mel_spectrogram(audio: np.ndarray | torch.Tensor, n_mels: int = 80, padding: int = 0) -> torch.Tensor:
    """16 kHz samples (samples,) or (B, samples) -> float32 log-mel (n_mels, frames) or (B, n_mels, frames), with
    frames = (samples + padding) // 160; `padding` zeros are appended first. See the module doc."""
    x = torch.from_numpy(np.ascontiguousarray(audio)) if isinstance(audio, np.ndarray) else audio
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"audio of type {type(audio).__name__}: pass a numpy array or torch tensor of samples")
    if x.ndim not in (1, 2):
        raise ValueError(f"audio of shape {tuple(x.shape)}: pass (samples,) or a batch (B, samples) of 16 kHz mono")
    if not x.is_floating_point():
        raise ValueError(f"audio of dtype {x.dtype}: pass float samples in [-1, 1] (int16 PCM: divide by 32768)")
    if padding < 0:
        raise ValueError(f"padding={padding!r}: give the number of zeros to append, >= 0")
    if x.shape[-1] + padding <= N_FFT // 2:
        raise ValueError(f"audio of {x.shape[-1]} samples (+ padding {padding}): the STFT's reflect padding needs "
                         f"more than {N_FFT // 2}; pass pad_or_trim(audio) for Whisper's 30 s input")
    x = x.float()  # the filters and Whisper's own frontend are float32
    if padding:
        x = F.pad(x, (0, padding))
    window = torch.hann_window(N_FFT, device=x.device)  # periodic, as torch.stft expects
    stft = torch.stft(x, N_FFT, HOP_LENGTH, window=window, center=True, pad_mode="reflect", return_complex=True)
    power = stft[..., :-1].abs() ** 2  # whisper drops the last frame: N samples give N // 160 frames
    log_spec = torch.clamp(_filters_tensor(n_mels).to(x.device) @ power, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.amax(dim=(-2, -1), keepdim=True) - 8.0)  # 80 dB range per item
    return (log_spec + 4.0) / 4.0


def pad_or_trim(array: Array, length: int = N_SAMPLES, axis: int = -1) -> Array:
    """Zero-pad at the end or cut `array` (numpy or torch) along `axis` to `length` (default: 30 s of 16 kHz)."""
    axis = axis % array.ndim
    index = [slice(None)] * array.ndim
    index[axis] = slice(0, length)
    array = array[tuple(index)]
    short = length - array.shape[axis]
    if short > 0:
        if isinstance(array, torch.Tensor):
            array = F.pad(array, (0, 0) * (array.ndim - 1 - axis) + (0, short))
        else:
            widths = [(0, 0)] * array.ndim
            widths[axis] = (0, short)
            array = np.pad(array, widths)
    return array
