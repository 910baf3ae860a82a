"""Synthetic arithmetic: answers recomputed with Python ints, number words, disjoint train/test splits."""

from __future__ import annotations

import random
import re
import string

import pytest
import torch

from groundup.data.arithmetic import (
    OPS,
    arithmetic_problem,
    exact_match,
    make_arithmetic_splits,
    number_to_words,
    solve,
)
from groundup.data.instruct import InstructData, load_instructions, parse_instructions
from groundup.tokenizer import char_tokenizer

UNITS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve thirteen "
                                    "fourteen fifteen sixteen seventeen eighteen nineteen".split())}
TENS = {w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), start=2)}
WORD_OPS = {"plus": "+", "minus": "-", "times": "*", "divided by": "/"}


def words_to_int(text: str) -> int:
    """An independent parser for the words number_to_words writes (checks it by round trip)."""
    total, current = 0, 0
    for w in text.split():
        if w == "hundred":
            current *= 100
        elif w == "thousand":
            total, current = total + current * 1000, 0
        elif "-" in w:
            tens, unit = w.split("-")
            assert unit != "zero"
            current += TENS[tens] + UNITS[unit]
        else:
            current += TENS.get(w, UNITS.get(w, -10**9))
    return total + current


def parse(prompt: str) -> tuple[int, str, int]:
    m = re.fullmatch(r"What is (\d+) ([-+*/]) (\d+)\?|(\d+) ([-+*/]) (\d+) =", prompt)
    if m:
        g = [x for x in m.groups() if x is not None]
        return int(g[0]), g[1], int(g[2])
    m = re.fullmatch(r"What is (.+) (plus|minus|times|divided by) (.+)\?", prompt)
    assert m, prompt
    return words_to_int(m.group(1)), WORD_OPS[m.group(2)], words_to_int(m.group(3))


@pytest.mark.parametrize("n, words", [
    (0, "zero"), (7, "seven"), (13, "thirteen"), (20, "twenty"), (37, "thirty-seven"), (100, "one hundred"),
    (105, "one hundred five"), (999, "nine hundred ninety-nine"), (1000, "one thousand"),
    (12045, "twelve thousand forty-five"), (100001, "one hundred thousand one"),
    (999999, "nine hundred ninety-nine thousand nine hundred ninety-nine"),
])
def test_number_to_words_known_values(n, words):
    assert number_to_words(n) == words


def test_number_to_words_round_trips_and_is_unique():
    rng = random.Random(0)
    sample = list(range(0, 2000)) + [rng.randrange(1_000_000) for _ in range(3000)]
    for n in sample:
        assert words_to_int(number_to_words(n)) == n
    assert len({number_to_words(n) for n in sample}) == len(set(sample))
    for bad, err in ((-1, ValueError), (1_000_000, ValueError), (3.0, TypeError), (True, TypeError)):
        with pytest.raises(err, match="number_to_words"):
            number_to_words(bad)


def test_answers_recomputed_with_python_ints():
    train, test = make_arithmetic_splits(3000, 600, seed=0, max_digits=3)
    for r in train + test:
        a, op, b = parse(r["prompt"])
        assert 0 <= a <= 999 and 0 <= b <= 999
        if op == "/":
            q, rem = map(int, r["completion"].split(" R "))
            assert q * b + rem == a and 0 <= rem < b
        else:
            assert int(r["completion"]) == {"+": a + b, "-": a - b, "*": a * b}[op]
    ops = {parse(r["prompt"])[1] for r in train}
    assert ops == set(OPS)
    assert sum(r["prompt"].startswith("What is") and not any(c.isdigit() for c in r["prompt"]) for r in train) > 500
    assert sum(r["prompt"].endswith("=") for r in train) > 500
    lengths = {len(str(parse(r["prompt"])[0])) for r in train}
    assert lengths == {1, 2, 3}


def test_train_and_test_are_disjoint_and_deterministic():
    train, test = make_arithmetic_splits(2000, 500, seed=1, max_digits=2)
    assert len(train) == 2000 and len(test) == 500
    train_q, test_q = {r["prompt"] for r in train}, {r["prompt"] for r in test}
    assert len(train_q) == 2000 and len(test_q) == 500 and not train_q & test_q
    pair = lambda r: frozenset(parse(r["prompt"])[::2])
    assert not {pair(r) for r in train} & {pair(r) for r in test}  # no operand pair shared, in any order or op
    assert make_arithmetic_splits(2000, 500, seed=1, max_digits=2) == (train, test)
    assert make_arithmetic_splits(2000, 500, seed=2, max_digits=2) != (train, test)


def test_examples_and_errors():
    assert arithmetic_problem(37, "*", 4) == {"prompt": "What is 37 * 4?", "completion": "148"}
    assert arithmetic_problem(37, "*", 4, "equation") == {"prompt": "37 * 4 =", "completion": "148"}
    assert arithmetic_problem(37, "*", 4, "words") == {"prompt": "What is thirty-seven times four?",
                                                       "completion": "148"}
    assert arithmetic_problem(37, "/", 4, "words")["prompt"] == "What is thirty-seven divided by four?"
    assert solve(37, "/", 4) == "9 R 1" and solve(3, "-", 40) == "-37" and solve(8, "/", 4) == "2 R 0"
    with pytest.raises(ZeroDivisionError):
        solve(1, "/", 0)
    with pytest.raises(ValueError, match="style='latex'"):
        arithmetic_problem(1, "+", 2, "latex")
    with pytest.raises(ValueError, match="raise max_digits or ask for fewer"):
        make_arithmetic_splits(500, 100, max_digits=1)
    with pytest.raises(ValueError, match="max_digits=7 with the 'words' style"):
        make_arithmetic_splits(10, 10, max_digits=7)
    assert len(make_arithmetic_splits(10, 10, max_digits=9, styles=["equation"])[0]) == 10
    with pytest.raises(ValueError, match="unknown: \\['%'\\]"):
        make_arithmetic_splits(10, 10, ops=["+", "%"])


def test_exact_match_normalises_whitespace():
    assert exact_match(" 148 \n", "148") and exact_match("9  R 1", "9 R 1")
    assert not exact_match("1480", "148") and not exact_match("9 R 2", "9 R 1")


def test_jsonl_files_feed_instruct_data(tmp_path):
    train, test = make_arithmetic_splits(50, 10, seed=0, max_digits=2, out_dir=tmp_path)
    examples, report = load_instructions(tmp_path / "train.jsonl")
    assert report.n_loaded == 50 and [e.completion for e in examples] == [r["completion"] for r in train]
    assert len(load_instructions(tmp_path / "test.jsonl")[0]) == 10
    tok = char_tokenizer(string.printable, special_tokens=["<|endoftext|>"])
    data = InstructData(parse_instructions(test)[0], tok, block_size=64, val_fraction=0.0)
    batch = data.get_batch("train", 16, torch.Generator().manual_seed(0))
    answers = {r["completion"] + "<|endoftext|>" for r in test}
    for labels in batch["labels"]:
        assert tok.decode(labels[labels != -100].tolist()) in answers
    pairs = data.eval_examples("train")
    assert {c for _, c in pairs} == {r["completion"] for r in test}
