"""Few-shot prompting (Brown et al. 2020, "Language Models are Few-Shot Learners"): no training, k solved
examples in the prompt, then the query; the model continues the pattern.

    template "Q: {prompt}\\nA: {completion}"       k shots drawn with a seed, never the query itself

    Q: 3 + 4 =\\nA: 7      ┐
                          ├ separator "\\n\\n" between shots
    Q: 12 - 5 =\\nA: 7     ┘
                          ┐
    Q: 8 + 1 =\\nA:        ┘ the query: the template up to {completion}, trailing spaces cut (BPE
                                       vocabularies attach a space to the next word: the model writes " 9")

Generation stops at the separator, or at the first newline when no shot's completion has one.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from .apps.by_arch import require_arch, require_tokenizer
from .data.arithmetic import exact_match
from .data.instruct import load_instructions
from .finetune import greedy_completions
from .jobs.use import FEWSHOT_TEMPLATE, FewShotJob
from .loading import load_pretrained
from .tokenizer import Tokenizer

Pair = tuple[str, str]


def _split_template(template: str) -> tuple[str, str, str]:
    """(before {prompt}, between, after {completion}): rendered in one pass, so braces in the texts stay."""
    if template.count("{prompt}") != 1 or template.count("{completion}") != 1 or (
            template.index("{prompt}") > template.index("{completion}")):
        raise ValueError(f"template={template!r} must hold {{prompt}} once and then {{completion}} once, "
                         "e.g. 'Q: {prompt}\\nA: {completion}'")
    before, rest = template.split("{prompt}")
    between, after = rest.split("{completion}")
    return before, between, after


def _pairs(examples: Sequence[Pair] | Sequence[dict]) -> list[Pair]:
    out = []
    for i, ex in enumerate(examples):
        if isinstance(ex, dict):
            if not isinstance(ex.get("prompt"), str) or not isinstance(ex.get("completion"), str):
                raise ValueError(f"examples[{i}] needs string 'prompt' and 'completion'; got {ex!r:.60}")
            ex = (ex["prompt"], ex["completion"])
        out.append((ex[0], ex[1]))
    return out


def build_fewshot_prompt(examples: Sequence[Pair] | Sequence[dict], query: str, k: int,
                         template: str = FEWSHOT_TEMPLATE, seed: int = 0, separator: str = "\n\n") -> str:
    """k shots drawn (with `seed`, without replacement) from `examples` ((prompt, completion) pairs or
    {"prompt", "completion"} dicts), every example whose prompt is the query left out, each rendered with
    `template`; then the query rendered with the template up to {completion}. The same seed gives the
    same prompt."""
    before, between, after = _split_template(template)
    pool = [p for p in _pairs(examples) if p[0].strip() != query.strip()]
    if not 0 <= k <= len(pool):
        raise ValueError(f"k={k}: there are {len(pool)} examples to draw shots from (the query excluded); "
                         f"use 0 <= k <= {len(pool)}")
    shots = random.Random(seed).sample(pool, k)
    parts = [before + p + between + c + after for p, c in shots]
    return separator.join(parts + [before + query + between.rstrip(" ")])


@dataclass
class FewShotResult:
    accuracy: float
    predictions: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)


def fewshot_exact_match(model: nn.Module, tokenizer: Tokenizer, shots: Sequence[Pair] | Sequence[dict],
                        tests: Sequence[Pair] | Sequence[dict], k: int, template: str = FEWSHOT_TEMPLATE,
                        seed: int = 0, max_new_tokens: int = 16, separator: str = "\n\n",
                        batch_size: int = 8) -> FewShotResult:
    """Exact-match accuracy of greedy k-shot answers to `tests`; query i draws its shots with seed + i."""
    pool, tests = _pairs(shots), _pairs(tests)
    if not tests:
        raise ValueError("fewshot_exact_match: no test examples")
    prompts = [build_fewshot_prompt(pool, q, k, template, seed + i, separator) for i, (q, _) in enumerate(tests)]
    stop = (separator,) if any("\n" in c for _, c in pool) else ("\n", separator)
    preds = greedy_completions(model, tokenizer, prompts, max_new_tokens, batch_size, stop)
    correct = sum(exact_match(p, c) for p, (_, c) in zip(preds, tests, strict=True))
    return FewShotResult(correct / len(tests), preds, prompts)


def load_pairs(path: str | Path) -> list[Pair]:
    """(prompt, completion) pairs of a JSONL file (prompt/completion or Alpaca records; errors name the line)."""
    examples, _ = load_instructions(path, separator="")
    chat = [e.line for e in examples if e.fmt == "chat"]
    if chat:
        raise ValueError(f"{path} lines {chat[:5]}: chat records; few-shot prompts need prompt/completion pairs")
    return [(e.prompt, e.completion) for e in examples]


def fewshot(job: FewShotJob) -> FewShotResult:
    """Few-shot prompting: exact-match accuracy of a model given k solved examples per question (no training)."""
    if not job.shots or not job.data:
        raise ValueError("fewshot needs --shots (JSONL to draw examples from) and --data (JSONL of test questions)")
    pool, tests = load_pairs(job.shots), load_pairs(job.data)[: job.limit]
    model, tok = load_pretrained(job.model)
    require_arch(model, "fewshot")
    require_tokenizer(tok, job.model, "fewshot")
    result = fewshot_exact_match(model, tok, pool, tests, job.k, job.template, job.seed, job.max_new_tokens)
    print(f"{job.k}-shot exact match on {len(tests)} questions of {job.data}: {result.accuracy:.3f}")
    return result


__all__ = ["FEWSHOT_TEMPLATE", "FewShotJob", "FewShotResult", "build_fewshot_prompt", "fewshot", "fewshot_exact_match",
           "load_pairs"]
