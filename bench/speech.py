"""Speech recognition: groundup's Whisper vs faster-whisper (CTranslate2) and transformers on the same weights.

Weights: whisper-tiny.en and whisper-base as packaged (CTranslate2 fp16 files); faster-whisper reads those files,
transformers reads groundup's Hugging Face export of them (save_hf_whisper), groundup reads them with numpy.
Audio: the 5 LibriVox utterances of Debian pocketsphinx-testdata (25 s, 16 kHz, with their transcription), and a
long-form text (>60 s) spoken by Debian espeak-ng. WER: groundup.eval.wer (one English normaliser on both sides).

    accuracy   WER per model and runtime at beam 5 (temperature fallback, previous-text conditioning, no VAD);
               greedy first-window tokens of groundup vs CTranslate2's generate on the same features
    speed      real-time factor (wall seconds / audio seconds) transcribing the 5 files one at a time, run
               round-robin after a warm-up (median of --repeats), all at --threads threads:
               fp32: groundup (pack_for_decoding, as the CLI and the server load it), faster-whisper, transformers
               (generate, num_beams 5; its own feature extractor)
               int8: groundup (groundup.quantize int8, the output projection too) vs faster-whisper compute_type int8
               and groundup with the 5 files as one batch (what `groundup transcribe a.wav b.wav ...` does)
    long-form  WER, timestamps increasing across windows, repeated segments, gzip ratio of the whole transcript

    python bench/speech.py [--threads 1] [--quick] [--repeats N]
"""

from __future__ import annotations

import copy
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402

from groundup.audio import load_audio, log_mel_spectrogram, pad_or_trim  # noqa: E402
from groundup.eval.wer import read_sphinx_transcription, word_error_rate  # noqa: E402
from groundup.speech import TranscribeOptions, load_whisper, pack_for_decoding, transcribe  # noqa: E402
from groundup.speech import _packaged_parts as packaged_parts  # noqa: E402

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
LONG_TEXT = (  # Jane Austen, Pride and Prejudice, chapter 1 (public domain)
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of "
    "a wife. However little known the feelings or views of such a man may be on his first entering a neighbourhood, "
    "this truth is so well fixed in the minds of the surrounding families, that he is considered the rightful "
    "property of some one or other of their daughters. My dear Mister Bennet, said his lady to him one day, have you "
    "heard that Netherfield Park is let at last? Mister Bennet replied that he had not. But it is, returned she; for "
    "Missus Long has just been here, and she told me all about it. Mister Bennet made no answer. Do you not want to "
    "know who has taken it? cried his wife impatiently. You want to tell me, and I have no objection to hearing it. "
    "This was invitation enough. Why, my dear, you must know, Missus Long says that Netherfield is taken by a young "
    "man of large fortune from the north of England; that he came down on Monday in a chaise and four to see the "
    "place, and was so much delighted with it, that he agreed with Mister Morris immediately; that he is to take "
    "possession before Michaelmas, and some of his servants are to be in the house by the end of next week. What is "
    "his name? Bingley. Is he married or single? Oh! Single, my dear, to be sure! A single man of large fortune; four "
    "or five thousand a year. What a fine thing for our girls!")
MODELS = ("whisper-tiny.en", "whisper-base")


def ct2_folder(name: str, tmp: Path) -> Path:
    """A folder faster-whisper loads: the packaged one, or whisper-base's two parts joined."""
    parts = packaged_parts(name)
    if len(parts) == 1:
        return parts[0].parent
    folder = tmp / name
    folder.mkdir()
    (folder / "model.bin").write_bytes(b"".join(p.read_bytes() for p in parts))
    for f in ("config.json", "tokenizer.json", "vocabulary.txt"):
        (folder / f).write_bytes((parts[0].parent / f).read_bytes())
    return folder


class Contenders:
    def __init__(self, name: str, tmp: Path, threads: int) -> None:
        from faster_whisper import WhisperModel
        from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

        from groundup.interop.hf_whisper import save_hf_whisper
        from groundup.quant import quantize

        self.name, self.english = name, name.endswith(".en")
        self.model, self.tok = load_whisper(name)
        self.int8 = copy.deepcopy(self.model)
        quantize(self.int8, "int8", head="int8")
        self.packed = pack_for_decoding(copy.deepcopy(self.model))  # what `groundup transcribe` and serve run
        folder = ct2_folder(name, tmp)
        self.fw = {ct: WhisperModel(str(folder), device="cpu", compute_type=ct, cpu_threads=threads)
                   for ct in ("float32", "int8")}
        hf_dir = save_hf_whisper(self.model, tmp / f"{name}-hf", tokenizer_dir=folder)
        self.hf = WhisperForConditionalGeneration.from_pretrained(hf_dir).eval()
        self.features = WhisperFeatureExtractor(feature_size=self.model.config.n_mels)
        self.opts = TranscribeOptions(beam_size=5, language="en")

    def groundup(self, audios, model=None, batch_size=1) -> list[str]:
        return [t.text for t in transcribe(model or self.packed, self.tok, audios, self.opts, batch_size=batch_size)]

    def faster_whisper(self, audios, compute_type="float32") -> list[str]:
        out = []
        for a in audios:
            segments, _ = self.fw[compute_type].transcribe(a, beam_size=5, language="en", vad_filter=False,
                                                           condition_on_previous_text=True)
            out.append("".join(s.text for s in segments).strip())
        return out

    def transformers(self, audios) -> list[str]:
        out = []
        extra = {} if self.english else {"language": "en", "task": "transcribe"}
        with torch.inference_mode():
            for a in audios:
                x = self.features(a, sampling_rate=16000, return_tensors="pt").input_features
                ids = self.hf.generate(x, num_beams=5, **extra)
                out.append(self.tok.decode(ids[0].tolist()).strip())
        return out

    def greedy_identical(self, audios) -> tuple[int, int]:
        """(files whose greedy first-window tokens equal CTranslate2's, files)."""
        import ctranslate2

        from groundup.speech.decode import decode_sampling, decoding_rules

        mels = torch.stack([log_mel_spectrogram(pad_or_trim(a), self.model.config.n_mels) for a in audios])
        prompt = self.tok.sot_sequence(None if self.english else "en", "transcribe", timestamps=True)
        theirs = self.fw["float32"].model.generate(ctranslate2.StorageView.from_array(np.ascontiguousarray(
            mels.numpy())), [prompt] * len(audios), beam_size=1, suppress_blank=True, suppress_tokens=[-1],
            max_initial_timestamp_index=50)
        with torch.no_grad():
            ours = decode_sampling(self.model, self.tok, self.model.encode(mels), [prompt] * len(audios),
                                   decoding_rules(self.model, self.tok, True))
        return sum(o.tokens == t.sequences_ids[0] for o, t in zip(ours, theirs, strict=True)), len(audios)


def long_form_checks(result, reference: str) -> dict:
    segs = result.segments
    texts = [s.text.strip().lower() for s in segs]
    from groundup.speech import compression_ratio

    return {"wer": word_error_rate([reference], [result.text]), "segments": len(segs),
            "increasing": all(s.start < s.end for s in segs) and all(
                b.start >= a.end - 1e-6 for a, b in zip(segs, segs[1:], strict=False)),
            "last_end": segs[-1].end if segs else 0.0, "duration": result.duration,
            "repeated_segments": sum(a == b for a, b in zip(texts, texts[1:], strict=False)),
            "gzip_ratio": compression_ratio(result.text)}


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.set_defaults(threads=1)
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 3, --quick 1)")
    args = p.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    common.setup(args.threads)
    refs = read_sphinx_transcription(LIBRIVOX / "transcription")
    wavs = sorted(LIBRIVOX.glob("*.wav"))[: 2 if args.quick else None]
    audios = [load_audio(w) for w in wavs]
    truth = [refs[w.stem] for w in wavs]
    seconds = sum(len(a) for a in audios) / 16000
    accuracy, speed, longform, greedy = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        long_wav = Path(tmp) / "long.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "160", "-w", str(long_wav), LONG_TEXT], check=True)
        long_audio = load_audio(long_wav)
        for name in MODELS[:1] if args.quick else MODELS:
            c = Contenders(name, Path(tmp), args.threads)
            runs = {"groundup fp32": lambda c=c: c.groundup(audios),
                    "faster-whisper fp32": lambda c=c: c.faster_whisper(audios),
                    "transformers fp32": lambda c=c: c.transformers(audios),
                    "groundup int8": lambda c=c: c.groundup(audios, c.int8),
                    "faster-whisper int8": lambda c=c: c.faster_whisper(audios, "int8"),
                    "groundup fp32, one batch": lambda c=c: c.groundup(audios, batch_size=8)}
            texts = {k: f() for k, f in runs.items()}  # also the warm-up
            wall, cpu = common.interleaved(runs, 0, repeats)
            for k in runs:
                accuracy.append([name, k, 100 * word_error_rate(truth, texts[k])])
                anchor = "faster-whisper int8" if "int8" in k else "faster-whisper fp32"
                speed.append([name, k, common.median(wall[k]) / seconds, common.speedup(wall[anchor], wall[k]),
                              common.speedup(wall["transformers fp32"], wall[k]), common.speedup(cpu[anchor], cpu[k]),
                              f"{common.spread(wall[k]):.0%}"])
            same, n = c.greedy_identical(audios)
            greedy.append([name, f"{same}/{n}"])
            t0 = time.perf_counter()
            (ours,) = transcribe(c.packed, c.tok, [long_audio], c.opts)
            ours_s = time.perf_counter() - t0
            checks = long_form_checks(ours, LONG_TEXT)
            fw_wer = word_error_rate([LONG_TEXT], c.faster_whisper([long_audio]))
            longform.append([name, f"{ours.duration:.0f}", 100 * checks["wer"], 100 * fw_wer, checks["segments"],
                             checks["increasing"], f"{checks['last_end']:.1f}", checks["repeated_segments"],
                             f"{checks['gzip_ratio']:.2f}", ours_s / ours.duration])
            print(f"{name} long-form: {ours.text[:300]} ...", flush=True)
    tables = {
        f"WER on the LibriVox utterances ({len(wavs)} files, {seconds:.1f} s), beam 5, %": common.show(
            "WER", ["model", "runtime", "WER %"], accuracy),
        f"real-time factor ({args.threads} thread(s), median of {repeats})": common.show(
            "speed", ["model", "runtime", "RTF", "x vs faster-whisper (same precision)", "x vs transformers",
                      "x vs faster-whisper, CPU time", "spread"], speed),
        "greedy first-window tokens equal to CTranslate2's": common.show("greedy", ["model", "files"], greedy),
        "long-form (espeak-ng, Pride and Prejudice ch. 1), beam 5": common.show("long-form", [
            "model", "audio s", "WER %", "faster-whisper WER %", "segments", "times increasing", "last end s",
            "repeated segments", "gzip ratio", "groundup RTF"], longform),
    }
    path = common.write_results(common.result_name("speech", args.tag), tables, {"quick": args.quick})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
