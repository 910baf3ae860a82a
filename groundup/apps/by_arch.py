"""What the model-using commands do with each architecture, and a one-line refusal where a command cannot apply.

    generate   decoder: continue the prompt        seq2seq: the target of the source in --prompt   encoder: refused
    eval       decoder: perplexity of a text file   seq2seq: target perplexity of source<TAB>target lines
               encoder: pseudo-perplexity and masked-token accuracy of a text file (each token masked alone)
    chat, fewshot, finetune   decoder only          serve   decoder (completions) or encoder (embeddings)
"""

from __future__ import annotations

import sys
from pathlib import Path

from torch import nn

from ..data import read_text_corpus
from ..data.seq2seq import read_pairs
from ..eval import pairs_perplexity, pseudo_perplexity
from ..generate import GenerationConfig
from ..generate_seq2seq import translate_text
from ..tokenizer import Tokenizer

ARCH_NAMES = {
    "decoder": "a decoder-only language model",
    "encoder": "a BERT-style encoder",
    "seq2seq": "an encoder-decoder (seq2seq) model",
}
_ENCODER_USES = ("score text with `groundup eval` (pseudo-perplexity), embed sentences with `groundup embed`, "
                 "or fine-tune it with `groundup classify`")
INSTEAD = {  # (command, arch) -> what to use instead
    ("generate", "encoder"): f"it fills in masked tokens and does not continue text: {_ENCODER_USES}",
    ("chat", "encoder"): f"it fills in masked tokens and does not write replies: {_ENCODER_USES}",
    ("chat", "seq2seq"): "it maps one source to one target and keeps no conversation: use `groundup generate "
                         "--prompt SOURCE` (prints the target)",
    ("fewshot", "encoder"): f"few-shot prompting needs a model that continues a prompt: {_ENCODER_USES}",
    ("fewshot", "seq2seq"): "few-shot prompting needs a model that continues a prompt: decode one source with "
                            "`groundup generate --prompt SOURCE`, score pairs with `groundup eval`",
    ("finetune", "encoder"): "instruction fine-tuning trains a decoder on completions: fine-tune an encoder for "
                             "classification with `groundup classify --method lora`",
    ("finetune", "seq2seq"): "instruction fine-tuning trains a decoder on completions: train an encoder-decoder on "
                             "source<TAB>target lines with `groundup pretrain --data.task pairs --data.corpus FILE`",
    ("serve", "seq2seq"): "the server completes text with a decoder and embeds with an encoder: decode one source "
                          "with `groundup generate --prompt SOURCE`",
}


def arch_of(model: nn.Module) -> str:
    """The model's ModelConfig.arch: decoder, encoder or seq2seq."""
    return getattr(getattr(model, "config", None), "arch", "decoder")


def require_arch(model: nn.Module, command: str, allowed: tuple[str, ...] = ("decoder",)) -> None:
    """A ValueError of one line naming the architecture and what to use instead, where `command` cannot apply."""
    arch = arch_of(model)
    if arch not in allowed:
        instead = INSTEAD.get((command, arch), f"`groundup {command}` works with {' or '.join(allowed)} models")
        raise ValueError(f"{command} does not apply to {ARCH_NAMES.get(arch, arch)} (arch={arch!r}): {instead}")


def require_tokenizer(tokenizer: Tokenizer | None, model: str, command: str) -> Tokenizer:
    """The tokenizer, or a FileNotFoundError of one line naming the folder that has none."""
    if tokenizer is None:
        raise FileNotFoundError(
            f"{command} needs a tokenizer and {model} has none (no tokenizer.json, nor a BERT vocab.txt); copy the "
            "tokenizer files of the model it was trained or converted from into it"
        )
    return tokenizer


def generate_for_arch(model: nn.Module, tokenizer, prompt: str, cfg: GenerationConfig) -> bool:
    """For an encoder-decoder model, print the target of the source `prompt` (greedy, sampled, or beam search
    with cfg.num_beams > 1) and return True; False for a decoder, which streams its continuation itself."""
    arch = arch_of(model)
    if arch == "decoder":
        if cfg.num_beams > 1:
            raise ValueError(f"--num_beams={cfg.num_beams}: beam search decodes encoder-decoder models here; a "
                             "decoder samples, or decodes greedily with --temperature 0 (leave --num_beams at 1)")
        return False
    require_arch(model, "generate", ("decoder", "seq2seq"))
    sys.stdout.write(translate_text(model, tokenizer, prompt, cfg) + "\n")
    return True


def eval_for_arch(model: nn.Module, tokenizer, data: str) -> dict[str, float] | None:
    """Score a seq2seq model (target perplexity on source<TAB>target lines) or an MLM encoder (pseudo-perplexity
    and masked-token accuracy on text), print one line and return the numbers; None for a decoder."""
    arch = arch_of(model)
    if arch == "seq2seq":
        result = pairs_perplexity(model, tokenizer, read_pairs(Path(data)))
        print(f"{data}: {result['pairs']} pairs, {result['tokens']} target tokens (<eos> included): target loss "
              f"{result['nll']:.4f} nats/token, target perplexity {result['ppl']:.3f} (teacher-forced, given the "
              "source)")
        return result
    if arch == "encoder":
        result = pseudo_perplexity(model, tokenizer, read_text_corpus(Path(data)))
        print(f"{data}: {result['tokens']} tokens, each masked alone: pseudo-perplexity {result['pppl']:.3f} "
              f"(loss {result['nll']:.4f} nats/token), masked-token accuracy {result['accuracy']:.2%}")
        return result
    return None
