"""Synthetic arithmetic for instruction tuning, after Goat (Liu & Low 2023): +, -, *, and division with
remainder, asked in symbols or in words, answered with an exact string.

    question   "What is 37 * 4?"                    ->  "148"
    equation   "37 / 4 ="                           ->  "9 R 1"        (quotient R remainder, always)
    words      "What is thirty-seven minus forty?"  ->  "-3"

Operands get a uniformly drawn number of digits (1..max_digits), then a uniform value with that many
digits, so short and long numbers are equally common (as in Goat). Train and test share no operand
pair: once {a, b} is in the test set, no train question (any operation, either order) uses it.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path

from groundup.data.instruct_jsonl import write_jsonl

OPS = ("+", "-", "*", "/")
OP_WORDS = {"+": "plus", "-": "minus", "*": "times", "/": "divided by"}
STYLES = ("question", "equation", "words")
ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen").split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
MAX_WORDS = 999_999


def number_to_words(n: int) -> str:
    """English words for 0 <= n <= 999999, hyphenated tens, no "and": 12045 -> "twelve thousand forty-five"."""
    if not isinstance(n, int) or isinstance(n, bool):
        raise TypeError(f"number_to_words(n={n!r}): n must be an int")
    if not 0 <= n <= MAX_WORDS:
        raise ValueError(f"number_to_words(n={n}): only 0..{MAX_WORDS} are supported")

    def below_100(k: int) -> str:
        return ONES[k] if k < 20 else TENS[k // 10] + (f"-{ONES[k % 10]}" if k % 10 else "")

    def below_1000(k: int) -> str:
        h, r = divmod(k, 100)
        if not h:
            return below_100(r)
        return f"{ONES[h]} hundred" + (f" {below_100(r)}" if r else "")

    thousands, rest = divmod(n, 1000)
    if not thousands:
        return below_1000(rest)
    return f"{below_1000(thousands)} thousand" + (f" {below_1000(rest)}" if rest else "")


def solve(a: int, op: str, b: int) -> str:
    """The exact answer string: "148", "-3", or "quotient R remainder" for division."""
    if op == "+":
        return str(a + b)
    if op == "-":
        return str(a - b)
    if op == "*":
        return str(a * b)
    if op == "/":
        if b == 0:
            raise ZeroDivisionError(f"solve({a}, '/', 0): the divisor must be non-zero")
        q, r = divmod(a, b)
        return f"{q} R {r}"
    raise ValueError(f"op={op!r}: use one of {OPS}")


def arithmetic_problem(a: int, op: str, b: int, style: str = "question") -> dict[str, str]:
    """One {"prompt", "completion"} record."""
    if style == "question":
        prompt = f"What is {a} {op} {b}?"
    elif style == "equation":
        prompt = f"{a} {op} {b} ="
    elif style == "words":
        prompt = f"What is {number_to_words(a)} {OP_WORDS[op]} {number_to_words(b)}?"
    else:
        raise ValueError(f"style={style!r}: use one of {STYLES}")
    return {"prompt": prompt, "completion": solve(a, op, b)}


def _operand(rng: random.Random, max_digits: int, nonzero: bool = False) -> int:
    digits = rng.randint(1, max_digits)
    low = 10 ** (digits - 1) if digits > 1 else int(nonzero)
    return rng.randint(low, 10**digits - 1)


def _check(n_train: int, n_test: int, ops: Sequence[str], styles: Sequence[str], max_digits: int) -> None:
    if n_train < 0 or n_test < 0:
        raise ValueError(f"n_train={n_train}, n_test={n_test}: counts must be >= 0")
    bad = [o for o in ops if o not in OPS]
    if not ops or bad:
        raise ValueError(f"ops={ops!r}: give a non-empty selection of {OPS} (unknown: {bad})")
    if not styles or any(s not in STYLES for s in styles):
        raise ValueError(f"styles={styles!r}: give a non-empty selection of {STYLES}")
    if max_digits < 1:
        raise ValueError(f"max_digits={max_digits}: must be >= 1")
    if "words" in styles and 10**max_digits - 1 > MAX_WORDS:
        raise ValueError(f"max_digits={max_digits} with the 'words' style: number_to_words covers 0..{MAX_WORDS}, "
                         "so use max_digits <= 6 or leave 'words' out of styles")


def make_arithmetic_splits(n_train: int, n_test: int, seed: int = 0, ops: Sequence[str] = OPS, max_digits: int = 3,
                           styles: Sequence[str] = STYLES, out_dir: str | os.PathLike | None = None,
                           ) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(train, test) lists of distinct {"prompt", "completion"} records with disjoint operand pairs; with
    `out_dir`, also written there as train.jsonl and test.jsonl (load them with load_instructions)."""
    _check(n_train, n_test, ops, styles, max_digits)
    rng = random.Random(seed)
    test_pairs: set[tuple[int, int]] = set()
    splits: list[list[dict[str, str]]] = []
    for n, is_test in ((n_test, True), (n_train, False)):
        records: list[dict[str, str]] = []
        prompts: set[str] = set()
        budget = 50 * n + 1000
        while len(records) < n:
            if budget == 0:
                raise ValueError(
                    f"could only find {len(records)} of {n} distinct {'test' if is_test else 'train'} questions "
                    f"with max_digits={max_digits}, ops={tuple(ops)} (and train/test operand pairs disjoint): "
                    "raise max_digits or ask for fewer examples")
            budget -= 1
            op = rng.choice(list(ops))
            a, b = _operand(rng, max_digits), _operand(rng, max_digits, nonzero=op == "/")
            pair = (min(a, b), max(a, b))
            record = arithmetic_problem(a, op, b, rng.choice(list(styles)))
            if record["prompt"] in prompts or (not is_test and pair in test_pairs):
                continue
            if is_test:
                test_pairs.add(pair)
            prompts.add(record["prompt"])
            records.append(record)
        splits.append(records)
    test, train = splits
    if out_dir is not None:
        write_jsonl(Path(out_dir) / "train.jsonl", train)
        write_jsonl(Path(out_dir) / "test.jsonl", test)
    return train, test


def exact_match(pred: str, gold: str) -> bool:
    """Equal after stripping and collapsing whitespace (a generated " 148 \\n" matches "148")."""
    return " ".join(pred.split()) == " ".join(gold.split())


__all__ = [
    "OPS", "STYLES", "arithmetic_problem", "exact_match", "make_arithmetic_splits", "number_to_words", "solve",
]
