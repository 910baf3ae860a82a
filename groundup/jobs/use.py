"""The options of the commands that use a model: generate, eval, chat, embed, zeroshot, fewshot, transcribe, serve."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..serve.config import EngineConfig

QUICKSTART = "runs/quickstart/ckpt"  # what `groundup quickstart` writes
FEWSHOT_TEMPLATE = "Q: {prompt}\nA: {completion}"


@dataclass
class GenerateJob:
    """Generate text from a prompt, streamed to stdout as it is produced."""

    model: str = QUICKSTART  # checkpoint dir, HF dir, .gguf file or hub id
    prompt: str = "\n"
    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int | None = 50
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    dtype: str = "auto"  # auto (fastest here: bf16 with native bf16, else fp32) | bf16 | fp32
    adapter: str | None = None  # an adapter folder (groundup or HF PEFT layout) trained on --model
    raw_prompt: bool = False  # use --prompt as given, not formatted as the fine-tuning run formatted its prompts
    num_beams: int = 1  # encoder-decoder models: > 1 = beam search (deterministic; temperature etc. unused)


@dataclass
class EvalJob:
    """Perplexity of a model on a text file (seq2seq: target perplexity on source<TAB>target lines; a BERT
    encoder: pseudo-perplexity and masked-token accuracy)."""

    model: str = QUICKSTART
    data: str = ""  # a UTF-8 text file (an encoder-decoder model: source<TAB>target lines)
    stride: int | None = None  # sliding-window step (default: the model's context, no overlap)
    dtype: str = "auto"  # auto | bf16 | fp32


@dataclass
class ChatJob:
    """Chat with an instruct model: its chat template, streamed replies, history kept within the context. With a
    vision-language model (a flamingo / llava run's vlm/ folder), --image or `/image PATH` shows it an image."""

    model: str = "smollm2-135m-instruct"  # a chat model: .gguf, HF dir, checkpoint, or packaged name
    system: str | None = None
    message: str | None = None  # answer one message and exit (otherwise read messages from stdin)
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float | None = None
    seed: int | None = None
    dtype: str = "auto"  # auto | bf16 | fp32
    adapter: str | None = None  # an adapter folder (groundup or HF PEFT layout) trained on --model; nothing is written
    template: str | None = None  # a chat template name (chatml, plain) or Jinja file; default: fine-tuned / model's
    raw_prompt: bool = False  # the model's own template, not the prompt format a fine-tuning run recorded
    image: str | None = None  # an image for the first message (a vision-language --model); later: /image PATH


@dataclass
class EmbedJob:
    """Embeddings (L2-normalised) saved as .npy: of each line of a text file with an encoder (mean-pooled), or of
    images with a vision model (a ViT's pooled features) or a CLIP (its image embedding)."""

    model: str = "all-minilm-l6-v2"  # an encoder: HF dir, checkpoint, or packaged name; a ViT / CLIP for images
    input: str = ""  # a text file, one sentence per line
    images: str = ""  # instead of --input: an image file or a folder of images (the row order goes to <out>.txt)
    out: str = "embeddings.npy"
    batch_size: int = 32


@dataclass
class ZeroShotJob:
    """Zero-shot image classification with a CLIP model: each image against the labels' prompt embeddings
    (CLIP's prompt ensembling); prints the top-k labels with their probabilities."""

    model: str = ""  # a CLIP: a groundup checkpoint or a Hugging Face CLIPModel folder
    images: str = ""  # an image file or a folder of images
    labels: str = ""  # comma-separated class names, at least two: "t-shirt,trouser,bag"
    templates: str = ""  # a text file, one prompt template per line with {} for the label ("" = "a photo of a {}.")
    top_k: int = 3
    out: str = ""  # also write image<TAB>label<TAB>probability rows (the top 1) to this TSV file


@dataclass
class FewShotJob:
    """Few-shot prompting: exact-match accuracy of a model given k solved examples per question (no training)."""

    model: str = "smollm2-135m-instruct"
    shots: str = ""  # JSONL the shots are drawn from (e.g. train.jsonl)
    data: str = ""  # JSONL of test questions (e.g. test.jsonl)
    k: int = 4
    template: str = FEWSHOT_TEMPLATE
    seed: int = 0
    max_new_tokens: int = 16
    limit: int | None = 50  # evaluate the first N test questions (None = all)


@dataclass
class TranscribeJob:
    """Transcribe speech in audio files with Whisper (or translate it to English): plain text, timed lines, SRT
    or WebVTT subtitles, or JSON with segments; printed, or written one file per input into --output_dir."""

    CLI_POSITIONAL: ClassVar[str] = "files"  # `groundup transcribe a.wav b.flac`: bare arguments are the files

    files: list[str] = field(default_factory=list)  # the audio files (WAV, FLAC, OGG, ...), given as FILE ...
    model: str = "whisper-tiny.en"  # whisper-tiny.en | whisper-base (packaged), or a Whisper folder
    language: str | None = None  # the spoken language (en, de, ...); default: en on .en models, else detected
    task: str = "transcribe"  # transcribe | translate (into English; multilingual models only)
    beam_size: int = 5  # at temperature 0; 1 = greedy
    temperature: float = 0.0  # the first decoding temperature (0: beam search)
    temperature_increment_on_fallback: float | None = 0.2  # redo a repetitive/unlikely window this much hotter
    prompt: str | None = None  # text that conditions the first window (spelling of names, style)
    timestamps: bool = False  # txt: one "[00:00.000 --> 00:07.000] text" line per segment
    format: str = "txt"  # txt | srt | vtt | json
    output_dir: str | None = None  # write <file stem>.<format> there (default: print to stdout)
    batch_size: int = 8  # 30 s windows decoded together (across files)


@dataclass
class ServeJob:
    """Serve a model behind an OpenAI-compatible HTTP API (completions, chat, streaming, embeddings, LoRA,
    cascades)."""

    model: str | None = None  # checkpoint/HF dir, .gguf, packaged name, encoder; default: quickstart (none if asr only)
    adapter: list[str] = field(default_factory=list)  # NAME=PATH, repeatable: LoRA / IA3 / BitFit / soft prompt
    cascade: list[str] = field(default_factory=list)  # NAME=SPEC.json, repeatable: a FrugalGPT cascade (CASCADE_SPEC)
    embedding_model: str | None = None  # an encoder for /v1/embeddings, e.g. all-minilm-l6-v2
    asr_model: str | None = None  # Whisper for /v1/audio/transcriptions: whisper-tiny.en, whisper-base or a folder
    name: str | None = None  # the base model's name in requests (default: --model as given)
    quantize: str | None = None  # e.g. int8: quantize the base weights before adapters attach
    api_key: str | None = None  # default: $GROUNDUP_API_KEY; unset = no authentication
    host: str = "127.0.0.1"
    port: int = 8000
    dtype: str = "auto"  # auto: bf16 (half the weight bytes, oneDNN-packed) with native bf16, else fp32
    engine: EngineConfig = field(default_factory=EngineConfig)
    max_body_bytes: int = 1 << 20
    max_audio_bytes: int = 25 << 20  # the largest audio upload (OpenAI's limit: 25 MB)
    raw_prompt: bool = False  # use prompts as sent, not formatted as each adapter's fine-tuning formatted its prompts
