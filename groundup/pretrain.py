"""Pretraining jobs: corpus -> tokenizer -> data -> model -> the one training loop.

The model's arch picks the objective: decoder -> next-token prediction, encoder -> MLM + NSP,
seq2seq -> target-given-source. Everything a run needs is in one PretrainJob, so the CLI, a YAML
file and Python all describe a run the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .config import ConfigError, preset
from .data import MLMData, Seq2SeqData, prepare_lm_data, read_text_corpus, reversal_pairs, shakespeare_path
from .jobs.train import DataSpec, PretrainJob
from .models import build_model
from .tokenizer import Tokenizer, char_tokenizer, load_tokenizer, train_bpe, train_wordpiece
from .train import TrainResult, check_out_dir, train

OBJECTIVE = {"decoder": "causal_lm", "encoder": "mlm_nsp", "seq2seq": "seq2seq"}
SEQ2SEQ_SPECIALS = ("<pad>", "<bos>", "<eos>")


def _tokenizer(spec: DataSpec, text: str, out_dir: Path, specials: tuple[str, ...] = ()) -> Tokenizer:
    saved = out_dir / "ckpt" / "tokenizer.json"
    if saved.is_file():  # resuming: the ids must not change
        return load_tokenizer(saved)
    if spec.tokenizer == "char":
        return char_tokenizer(text, special_tokens=specials)
    if spec.tokenizer == "bpe":
        return train_bpe([text], spec.vocab_size)
    return train_wordpiece([text], spec.vocab_size)


def _pairs_text(spec: DataSpec, seed: int) -> list[tuple[str, str]]:
    if spec.task == "reversal":
        pairs = reversal_pairs(spec.n_pairs, 3, 12, list("abcdefghijklmnopqrstuvwxyz"), seed=seed)
        return [("".join(src), "".join(tgt)) for src, tgt in pairs]
    if spec.task != "pairs":
        raise ConfigError(f"data.task={spec.task!r}: a seq2seq model needs data.task='reversal' or 'pairs'")
    lines = read_text_corpus(spec.corpus).splitlines()
    pairs = []
    for number, line in enumerate(lines, 1):
        if line.count("\t") != 1:
            raise ValueError(f"{spec.corpus}:{number}: expected 'source<TAB>target', got {line[:60]!r}")
        src, tgt = line.split("\t")
        pairs.append((src, tgt))
    return pairs


def build_data(job: PretrainJob, arch: str, block_size: int) -> tuple[Any, Tokenizer]:
    """The data object and tokenizer for the model's objective."""
    spec, out = job.data, Path(job.train.out_dir)
    if arch == "seq2seq":
        pairs = _pairs_text(spec, job.train.seed)
        tok = _tokenizer(spec, "".join(s + t for s, t in pairs), out, SEQ2SEQ_SPECIALS)
        ids = [(tok.encode(s), tok.encode(t)) for s, t in pairs]
        pad, bos, eos = (tok.token_to_id(t) for t in SEQ2SEQ_SPECIALS)
        return Seq2SeqData(ids, block_size, pad, bos, eos, spec.val_fraction), tok
    text = read_text_corpus(spec.corpus or shakespeare_path())
    if arch == "encoder":
        if spec.tokenizer != "wordpiece":
            raise ConfigError("data.tokenizer must be 'wordpiece' for an encoder (MLM + NSP needs [CLS]/[SEP]/[MASK])")
        tok = _tokenizer(spec, text, out)
        return MLMData.from_text(text, tok, block_size, val_fraction=spec.val_fraction), tok
    tok = _tokenizer(spec, text, out)
    return prepare_lm_data(text, tok, out / "data", spec.val_fraction, block_size=block_size), tok


def model_config(job: PretrainJob, vocab_size: int):
    overrides = dict(job.model)
    name = overrides.pop("preset", None)
    if name is None:
        raise ConfigError("model.preset is missing; name a preset, e.g. --model.preset=gpt-shakespeare-char")
    overrides.setdefault("vocab_size", vocab_size)
    return preset(name, **overrides)


def check_job(job: PretrainJob) -> None:
    """What can be refused before anything is written to train.out_dir (build_data writes the token stream)."""
    check_out_dir(job.train, "--train.resume=true", "--train.out_dir")
    if job.train.eval_every and not job.data.val_fraction:
        raise ConfigError(f"--data.val_fraction=0 leaves no validation text, but --train.eval_every="
                          f"{job.train.eval_every} evaluates on it; set --train.eval_every=0 or a val_fraction > 0")


def pretrain(job: PretrainJob) -> TrainResult:
    """Pretrain a model from scratch: a decoder, encoder or encoder-decoder on a corpus, a ViT on labelled images
    or a CLIP on image-caption pairs."""
    from .apps.vision import is_vision, pretrain_vision

    if is_vision(job):
        return pretrain_vision(job)
    from .apps.clip_train import is_clip, pretrain_clip

    if is_clip(job):
        return pretrain_clip(job)
    shape = model_config(job, vocab_size=1)  # arch and context, before the tokenizer fixes the vocabulary
    check_job(job)
    data, tok = build_data(job, shape.arch, shape.block_size)
    torch.manual_seed(job.train.seed)  # the initial weights are part of the run: the same seed, the same start
    model = build_model(model_config(job, tok.vocab_size))
    result = train(model, OBJECTIVE[shape.arch], data, job.train, tokenizer=tok)
    if result.metrics_csv is not None:  # rank 0
        print("\n" + result.summary("nats/char" if job.data.tokenizer == "char" else "nats/token"), flush=True)
    return result
