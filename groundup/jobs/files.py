"""The options of the commands that write files: convert, quantize, data clean / augment / arithmetic."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..data.arithmetic import OPS, STYLES
from ..data.augment import METHODS as AUGMENT_METHODS
from ..data.clean import CleanConfig


@dataclass
class ConvertJob:
    """Convert between formats: any loadable model -> a Hugging Face directory or a groundup checkpoint."""

    model: str = ""  # what to read: checkpoint dir, HF dir, .gguf file or packaged name
    out: str = ""  # the directory to write
    to: Literal["hf", "groundup"] = "hf"
    dtype: str = "fp32"  # the written weights: fp32 | bf16 | auto (what inference here runs fastest in)
    dequantize: bool = False  # a `groundup quantize` checkpoint: write float weights (needed for --to hf)
    overwrite: bool = False  # replace an existing, non-empty --out


@dataclass
class QuantizeJob:
    """Quantize a model's linear layers (int8 / int4 / NF4, weight-only) and save it as a groundup checkpoint."""

    model: str = ""  # what to quantize: checkpoint dir, HF dir, .gguf file or packaged name
    to: str = "int8"  # int8 | int4 | nf4
    out: str = ""  # the checkpoint directory to write (load_pretrained / generate --model read it back)
    group_size: int = 32  # int4: weights per scale and zero (32, 64 or 128)
    head: str | None = "int8"  # the output projection's format (an int8 copy decodes faster); null keeps it float
    dtype: str = "auto"  # what stays in floating point (embeddings, norms): auto | bf16 | fp32


@dataclass
class CleanJob:
    """Clean a JSONL dataset: PII scrubbing, length and separator filters, exact and near-duplicate removal."""

    input: str = ""  # JSONL to clean
    out: str = ""  # JSONL of the kept records
    fields: list[str] = field(default_factory=lambda: ["prompt", "completion"])  # text fields checked
    clean: CleanConfig = field(default_factory=CleanConfig)
    tokenizer: str | None = None  # for --clean.min_tokens/max_tokens: a tokenizer.json, or a model whose tokenizer


@dataclass
class AugmentJob:
    """Augment one text field of a JSONL dataset (EDA: synonyms, deletion, swaps, typos), seeded; what the
    label depends on (the shared instruction template, the payload, words the completion shares, --protect)
    stays as it is."""

    input: str = ""  # JSONL to augment
    out: str = ""  # JSONL: the originals (keep_original) then the changed copies
    methods: list[str] = field(default_factory=lambda: list(AUGMENT_METHODS))  # synonym, delete, swap, typo
    protect: list[str] = field(default_factory=list)  # words/phrases never changed, e.g. "[French, Translate]"
    field: str = "prompt"  # the text field to change (declared after every field(...) call it would shadow)
    n_per_record: int = 1
    p: float = 0.1  # fraction of words changed
    seed: int = 0
    keep_original: bool = True
    payload_words: int = 3  # a payload (after the template or last colon) this short is kept verbatim; 0: none


@dataclass
class VLMTaskJob:
    """Write a vision-language task in LLaVA JSON: emoji and Fashion-MNIST images with questions ("What is in this
    image?", "What colour is it?") and answers, train and test on disjoint images (needs the Debian
    fonts-noto-color-emoji and dataset-fashion-mnist packages)."""

    out_dir: str = "data/vlm"  # writes train.json, test.json and images/ here
    seed: int = 0
    test_fraction: float = 0.2  # of the emoji
    fashion_train_per_class: int = 100
    fashion_test_per_class: int = 20


@dataclass
class ArithmeticJob:
    """Write train/test JSONL of the arithmetic task (Goat-style +, -, *, / with disjoint operand pairs)."""

    out_dir: str = "data/arithmetic"  # writes train.jsonl and test.jsonl here
    n_train: int = 2000
    n_test: int = 200
    seed: int = 0
    ops: list[str] = field(default_factory=lambda: list(OPS))
    max_digits: int = 3
    styles: list[str] = field(default_factory=lambda: list(STYLES))  # question, equation, words
