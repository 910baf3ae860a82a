"""`groundup transcribe`: audio files -> Whisper transcripts (groundup.speech), printed or written one file per
input. Every input is read before the model loads and every transcript is made before anything is written, so a
bad file ends the command with nothing written; each output file is written to a temporary name and renamed."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from ..audio import SAMPLE_RATE, load_audio
from ..jobs.use import TranscribeJob
from ..speech import TranscribeOptions, Transcript, load_whisper, transcribe
from ..speech.formats import FORMATS, json_dict, render
from ..tokenizer_whisper import WhisperTokenizer

PROGRESS_AFTER_S = 30.0  # a progress bar on stderr for more audio than this


def fallback_temperatures(first: float, increment: float | None) -> tuple[float, ...]:
    """openai-whisper's --temperature and --temperature_increment_on_fallback: first, first + increment, ... up
    to 1.0 (just `first` when the increment is 0 or None)."""
    if first < 0:
        raise ValueError(f"temperature={first} must be >= 0 (0: beam search, then hotter samples on fallback)")
    if increment is not None and increment < 0:
        raise ValueError(f"temperature_increment_on_fallback={increment} must be >= 0 (0 or None: no fallback)")
    temps = [float(first)]
    while increment and temps[-1] + increment <= 1.0 + 1e-6:
        temps.append(round(temps[-1] + increment, 6))
    return tuple(temps)


def check_options(tokenizer: WhisperTokenizer, options: TranscribeOptions) -> TranscribeOptions:
    """The options with the language as its code ("English" -> "en"); ValueError, naming language= or task=, for
    a language this model does not know or a task an English-only model cannot do."""
    if options.language is not None:
        options.language = tokenizer.language_code(options.language)
    if not tokenizer.multilingual or options.language is not None:
        tokenizer.sot_sequence(options.language, options.task)
    return options


def _outputs(files: list[str], out_dir: Path, fmt: str) -> list[Path]:
    paths = [out_dir / f"{Path(f).stem}.{fmt}" for f in files]
    seen: dict[Path, str] = {}
    for f, p in zip(files, paths, strict=True):
        if p in seen:
            raise ValueError(f"{seen[p]} and {f} would both be written to {p}; transcribe them in separate calls "
                             "with different --output_dir")
        seen[p] = f
    return paths


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, then rename it over `path`: a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 -> what open() would have given
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _Progress:
    """A tqdm bar over seconds of audio, on stderr; transcribe reports mel frames (100 per second)."""

    def __init__(self, seconds: float) -> None:
        from tqdm import tqdm

        shape = "{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s of audio [{elapsed}<{remaining}]"
        self.bar = tqdm(total=round(seconds, 1), unit="s", desc="transcribing", file=sys.stderr, leave=False,
                        bar_format=shape)

    def __call__(self, done: int, total: int) -> None:
        self.bar.update(round(done / 100, 1) - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def transcribe_cli(job: TranscribeJob) -> list[Transcript]:
    if not job.files:
        raise ValueError("no audio files given; write them after the command: groundup transcribe talk.wav "
                         "[more.flac ...]")
    if job.format not in FORMATS:
        raise ValueError(f"--format {job.format!r} is not a format; use one of {', '.join(FORMATS)}")
    if job.batch_size < 1:
        raise ValueError(f"--batch_size={job.batch_size} must be at least 1")
    options = TranscribeOptions(task=job.task, language=job.language, beam_size=job.beam_size,
                                temperatures=fallback_temperatures(job.temperature,
                                                                   job.temperature_increment_on_fallback),
                                initial_prompt=job.prompt)
    outputs = _outputs(job.files, Path(job.output_dir), job.format) if job.output_dir else None
    audios = [load_audio(f) for f in job.files]  # every input read (or refused) before anything else happens
    model, tokenizer = load_whisper(job.model, inference=True)
    check_options(tokenizer, options)
    seconds = sum(len(a) for a in audios) / SAMPLE_RATE
    progress = _Progress(seconds) if seconds > PROGRESS_AFTER_S else None
    try:
        results = transcribe(model, tokenizer, audios, options, job.batch_size, progress)  # silence: no segments
    finally:
        if progress is not None:
            progress.close()
    if outputs is not None:
        outputs[0].parent.mkdir(parents=True, exist_ok=True)
        for path, t in zip(outputs, results, strict=True):
            write_atomic(path, render(t, job.format, job.timestamps))
            print(f"wrote {path}")
    elif len(results) == 1:
        sys.stdout.write(render(results[0], job.format, job.timestamps))
    elif job.format == "json":  # one JSON document: a list of transcripts, each with its file
        sys.stdout.write(json.dumps([{"file": f, **json_dict(t)} for f, t in zip(job.files, results, strict=True)],
                                    ensure_ascii=False, indent=2) + "\n")
    else:
        parts = [f"==> {f} <==\n{render(t, job.format, job.timestamps)}"
                 for f, t in zip(job.files, results, strict=True)]
        sys.stdout.write("\n".join(parts))
    sys.stdout.flush()
    return results
