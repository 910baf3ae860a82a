"""Audio of any length -> timed segments, Whisper's way (Radford et al. 2022, sec. 4.5), several files at once.

    audio ─> log-mel + 30 s of padding ─> windows of 3000 frames at each file's seek position
    per window: decode (beam at T = 0, then samples at rising T while the text is too repetitive, gzip ratio
        > 2.4, or too unlikely, mean log-prob < -1; a likely-silent window, P(no speech) > 0.6, is skipped)
    timestamps split the tokens into segments; the next window starts at the last closed timestamp, and is
        conditioned on the text so far (<|startofprev|>), until a window decodes at T > 0.5

Windows of different files share one encoder and decoder batch.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..audio import HOP_LENGTH, N_FRAMES, SAMPLE_RATE, log_mel_spectrogram, pad_or_trim
from ..models.whisper import Whisper
from ..tokenizer_whisper import WhisperTokenizer
from .decode import WindowResult, decode_beam, decode_sampling, decoding_rules, detect_language

TIME_STEP = 0.02  # seconds per timestamp token: 2 mel frames


@dataclass
class TranscribeOptions:
    task: str = "transcribe"  # or "translate" (to English; multilingual models)
    language: str | None = None  # None: "en" for English-only models, else detected per file
    beam_size: int = 5  # 1: greedy
    patience: float = 1.0
    best_of: int = 5  # samples per window at temperatures > 0
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    compression_ratio_threshold: float | None = 2.4
    logprob_threshold: float | None = -1.0
    no_speech_threshold: float | None = 0.6
    condition_on_previous_text: bool = True
    initial_prompt: str | None = None
    without_timestamps: bool = False  # one segment per window, seeking by whole windows
    max_initial_timestamp: float = 1.0
    suppress_blank: bool = True
    # windows quieter than this (RMS, dB below full scale) are silence, skipped undecoded: shown digital silence,
    # Whisper writes "You" with confidence (openai-whisper and faster-whisper alike). None: decode every window.
    silence_db: float | None = -60.0
    seed: int = 0  # for the samples at temperatures > 0

    def __post_init__(self) -> None:
        if self.task not in ("transcribe", "translate"):
            raise ValueError(f"task={self.task!r}: use 'transcribe' or 'translate'")
        if not isinstance(self.beam_size, int) or self.beam_size < 1:
            raise ValueError(f"beam_size={self.beam_size!r} must be an integer >= 1 (1 = greedy)")
        if not self.temperatures or any(t < 0 for t in self.temperatures):
            raise ValueError(f"temperatures={self.temperatures!r} must be a non-empty list of values >= 0")


@dataclass
class Segment:
    start: float
    end: float
    text: str
    tokens: list[int]
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    temperature: float


@dataclass
class Transcript:
    text: str
    segments: list[Segment]
    language: str
    duration: float  # seconds of audio

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def compression_ratio(text: str) -> float:
    """How much gzip shrinks the text: repetition loops score high."""
    data = text.encode()
    return len(data) / len(zlib.compress(data)) if data else 0.0


@dataclass
class _File:
    audio: np.ndarray
    mel: torch.Tensor  # (n_mels, content frames + N_FRAMES)
    content_frames: int
    language: str | None
    seek: int = 0
    tokens: list[int] = field(default_factory=list)  # the kept segments' tokens, timestamps too (the prompt source)
    prompt_from: int = 0
    segments: list[Segment] = field(default_factory=list)


@torch.no_grad()
def transcribe(
    model: Whisper, tokenizer: WhisperTokenizer, audios: Sequence[np.ndarray], options: TranscribeOptions | None = None,
    batch_size: int = 8, progress: Callable[[int, int], None] | None = None,
) -> list[Transcript]:
    """16 kHz mono float arrays (groundup.audio.load_audio) -> one Transcript each. progress(done, total) is
    called with mel frames after every batch of windows."""
    opts = options or TranscribeOptions()
    if not tokenizer.multilingual and (opts.task == "translate" or opts.language not in (None, "en")):
        tokenizer.sot_sequence(opts.language, opts.task)  # raises the English-only error
    device = model.decoder.embed.tok_emb.weight.device
    files = []
    for audio in audios:
        audio = np.asarray(audio, dtype=np.float32)
        mel = log_mel_spectrogram(audio, model.config.n_mels, padding=N_FRAMES * HOP_LENGTH)
        files.append(_File(audio, mel.to(device), mel.shape[-1] - N_FRAMES, opts.language))
    initial = tokenizer.encode(" " + opts.initial_prompt.strip()) if opts.initial_prompt else []
    for f in files:
        f.tokens = list(initial)
    total = sum(f.content_frames for f in files)
    generator = torch.Generator().manual_seed(opts.seed)
    while active := [f for f in files if f.seek < f.content_frames]:
        for f in active:
            while f.seek < f.content_frames and _silent(f, opts.silence_db):
                f.seek += N_FRAMES
        if not (active := [f for f in active if f.seek < f.content_frames]):
            break
        batch = active[:batch_size]
        sizes = [min(N_FRAMES, f.content_frames - f.seek) for f in batch]
        windows = torch.stack([pad_or_trim(f.mel[:, f.seek:f.seek + N_FRAMES], N_FRAMES) for f in batch])
        memory = model.encode(windows.to(model.encoder.conv1.weight.dtype))
        for f, probs in zip(batch, _languages(model, tokenizer, memory, batch), strict=True):
            if probs is not None:
                f.language = max(probs, key=probs.get)
        results = _decode_with_fallback(model, tokenizer, memory, batch, opts, generator)
        for f, size, res in zip(batch, sizes, results, strict=True):
            _advance(f, size, res, tokenizer, opts)
        if progress is not None:
            progress(sum(min(f.seek, f.content_frames) for f in files), total)
    return [Transcript("".join(s.text for s in f.segments).strip(), f.segments, f.language or "en",
                       f.content_frames * HOP_LENGTH / SAMPLE_RATE) for f in files]


def _silent(f: _File, silence_db: float | None) -> bool:
    if silence_db is None:
        return False
    window = f.audio[f.seek * HOP_LENGTH:(f.seek + N_FRAMES) * HOP_LENGTH].astype(np.float64)
    return 10 * np.log10(np.mean(window ** 2) + 1e-20) < silence_db


def _languages(model, tokenizer, memory, batch) -> list[dict[str, float] | None]:
    """Detected on a file's first window, for multilingual models asked no language."""
    if not tokenizer.multilingual:
        return [None] * len(batch)
    need = [i for i, f in enumerate(batch) if f.language is None]
    out: list[dict[str, float] | None] = [None] * len(batch)
    if need:
        for i, probs in zip(need, detect_language(model, tokenizer, memory[need]), strict=True):
            out[i] = probs
    return out


def _prompt(f: _File, tokenizer: WhisperTokenizer, opts: TranscribeOptions, n_text_ctx: int) -> list[int]:
    language = f.language if tokenizer.multilingual else None
    sot = tokenizer.sot_sequence(language, opts.task, timestamps=not opts.without_timestamps)
    previous = f.tokens[f.prompt_from:][-(n_text_ctx // 2 - 1):]
    return ([tokenizer.sot_prev, *previous] if previous else []) + sot


def _decode_with_fallback(model, tokenizer, memory, batch, opts, generator) -> list[WindowResult]:
    rules = decoding_rules(model, tokenizer, not opts.without_timestamps, opts.suppress_blank,
                           opts.max_initial_timestamp)
    prompts = [_prompt(f, tokenizer, opts, model.config.n_text_ctx) for f in batch]
    results: list[WindowResult | None] = [None] * len(batch)
    todo = list(range(len(batch)))
    sample_len = model.config.n_text_ctx // 2
    for temperature in opts.temperatures:
        if not todo:
            break
        mem, rows = memory[todo], [prompts[i] for i in todo]
        if temperature == 0 and opts.beam_size > 1:
            out = decode_beam(model, tokenizer, mem, rows, rules, opts.beam_size, opts.patience, sample_len)
        else:
            out = decode_sampling(model, tokenizer, mem, rows, rules, temperature, opts.best_of, sample_len, generator)
        again = []
        for i, res in zip(todo, out, strict=True):
            results[i] = res
            if _needs_fallback(res, tokenizer, opts) and temperature != opts.temperatures[-1]:
                again.append(i)
        todo = again
    return results  # type: ignore[return-value]


def _needs_fallback(res: WindowResult, tokenizer: WhisperTokenizer, opts: TranscribeOptions) -> bool:
    text = tokenizer.decode(res.tokens)
    too_repetitive = opts.compression_ratio_threshold is not None and \
        compression_ratio(text) > opts.compression_ratio_threshold
    too_unlikely = opts.logprob_threshold is not None and res.avg_logprob < opts.logprob_threshold
    silent = opts.no_speech_threshold is not None and res.no_speech_prob > opts.no_speech_threshold
    return (too_repetitive or too_unlikely) and not (silent and too_unlikely)


def _advance(f: _File, size: int, res: WindowResult, tokenizer: WhisperTokenizer, opts: TranscribeOptions) -> None:
    """Segments of one decoded window, and where the file's next window starts (openai-whisper's rules)."""
    offset = f.seek * HOP_LENGTH / SAMPLE_RATE
    window_s = size * HOP_LENGTH / SAMPLE_RATE
    silent = opts.no_speech_threshold is not None and res.no_speech_prob > opts.no_speech_threshold
    if silent and not (opts.logprob_threshold is not None and res.avg_logprob > opts.logprob_threshold):
        f.seek += size
        return
    tokens, tb = res.tokens, tokenizer.timestamp_begin
    is_ts = [t >= tb for t in tokens]
    ratio = compression_ratio(tokenizer.decode(tokens))

    def add(part: list[int], start: float, end: float) -> None:
        """A segment, and its tokens (timestamps included) as the next windows' prompt; an unfinished tail, an
        empty or instantaneous segment conditions nothing (openai-whisper's and faster-whisper's rule)."""
        text = tokenizer.decode(part)
        if end > start and text.strip():
            f.segments.append(Segment(round(start, 3), round(end, 3), text, [t for t in part if t < tb],
                                      res.avg_logprob, ratio, res.no_speech_prob, res.temperature))
            f.tokens += part

    closed_pairs = [i + 1 for i in range(len(tokens) - 1) if is_ts[i] and is_ts[i + 1]]
    single_end = is_ts[-2:] == [False, True]
    if opts.without_timestamps:
        add(tokens, offset, offset + window_s)
        f.seek += size
    elif closed_pairs:
        cuts = closed_pairs + ([len(tokens)] if single_end else [])
        last = 0
        for cut in cuts:
            part = tokens[last:cut]
            add(part, offset + (part[0] - tb) * TIME_STEP, offset + (part[-1] - tb) * TIME_STEP)
            last = cut
        if single_end:
            f.seek += size
        else:
            f.seek += (tokens[last - 1] - tb) * 2  # frames: the last closed timestamp
    else:
        stamps = [t for t in tokens if t >= tb]
        end = (stamps[-1] - tb) * TIME_STEP if stamps and stamps[-1] != tb else window_s
        add(tokens, offset, offset + end)
        f.seek += size
    if not opts.condition_on_previous_text or res.temperature > 0.5:
        f.prompt_from = len(f.tokens)
