"""Instruction data: three JSONL shapes, loss only on completions, errors that name the line, packing, truncation."""

from __future__ import annotations

import json
import string

import pytest
import torch

from groundup.chat import ChatTemplateError
from groundup.data.instruct import (
    ALPACA_PROMPT,
    ALPACA_PROMPT_NO_INPUT,
    DEFAULT_SEPARATOR,
    Example,
    InstructData,
    InstructFormatError,
    chat_segments,
    load_instructions,
    parse_instructions,
    write_jsonl,
)
from groundup.tokenizer import char_tokenizer

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
EOS = "<|endoftext|>"


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer(string.printable, special_tokens=[EOS, "<|im_start|>", "<|im_end|>"])


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rows_of(data: InstructData, split: str = "train", n: int = 64) -> dict[str, torch.Tensor]:
    return data.get_batch(split, n, gen())


def targets(tok, batch: dict[str, torch.Tensor], b: int) -> str:
    labels = batch["labels"][b]
    return tok.decode(labels[labels != -100].tolist())


def write(tmp_path, lines: list[str], name: str = "data.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


# --- labels: exactly the completion tokens, shifted like LMData ------------------------------------
def test_prompt_completion_labels_exact_positions(tok):
    examples, _ = parse_instructions([{"prompt": "ab", "completion": "cd"}], separator="|")
    data = InstructData(examples, tok, block_size=16, val_fraction=0.0)
    batch = data.get_batch("train", 2, gen())
    a, b, bar, c, d = tok.encode("ab|cd")
    eos = tok.eos_id
    assert batch["input_ids"].tolist() == [[a, b, bar, c, d]] * 2
    assert batch["labels"].tolist() == [[-100, -100, c, d, eos]] * 2
    assert batch["attention_mask"].tolist() == [[1] * 5] * 2


def test_padding_is_right_side_masked_and_uses_eos_without_pad(tok):
    examples, _ = parse_instructions([{"prompt": "a", "completion": "b"}, {"prompt": "long prompt", "completion": "x"}])
    data = InstructData(examples, tok, block_size=64, val_fraction=0.0)
    batch = rows_of(data)
    lens = batch["attention_mask"].sum(1)
    assert set(lens.tolist()) == {len("a" + DEFAULT_SEPARATOR + "b"), len("long prompt" + DEFAULT_SEPARATOR + "x")}
    T = batch["input_ids"].shape[1]
    for b in range(len(lens)):
        n = int(lens[b])
        assert batch["attention_mask"][b, :n].all() and not batch["attention_mask"][b, n:].any()
        assert (batch["input_ids"][b, n:] == tok.eos_id).all() and (batch["labels"][b, n:] == -100).all()
        assert targets(tok, batch, b) in ("b" + EOS, "x" + EOS)
    assert T == max(lens)


def test_alpaca_prompt_template_and_targets(tok):
    records = [{"instruction": "Add.", "input": "2 3", "output": "5"}, {"instruction": "Say hi.", "output": "hi"}]
    examples, report = parse_instructions(records)
    assert report.formats == {"alpaca": 2}
    assert examples[0].prompt == ALPACA_PROMPT.format(instruction="Add.", input="2 3")
    assert examples[1].prompt == ALPACA_PROMPT_NO_INPUT.format(instruction="Say hi.")
    assert "### Input:" not in examples[1].prompt and examples[1].prompt.endswith("### Response:\n")
    data = InstructData(examples, tok, block_size=512, val_fraction=0.0)
    batch = rows_of(data)
    for b in range(batch["labels"].shape[0]):
        n = int(batch["attention_mask"][b].sum())
        text = tok.decode(batch["input_ids"][b, :n].tolist())
        want = "5" if "2 3" in text else "hi"
        assert targets(tok, batch, b) == want + EOS
        n_prompt = len(tok.encode(text)) - len(want)  # inputs = prompt + completion (eos is the last label only)
        assert (batch["labels"][b, : n_prompt - 1] == -100).all()
        assert (batch["labels"][b, n_prompt - 1: n] != -100).all()


def test_chat_loss_only_on_assistant_turns(tok):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Ciao"}]
    pieces = chat_segments(CHATML, msgs)
    assert [t for t, train in pieces if train] == ["Hello<|im_end|>\n", "Ciao<|im_end|>\n"]
    assert "".join(t for t, _ in pieces) == "".join(
        f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in msgs)
    examples, _ = parse_instructions([{"messages": msgs}])
    data = InstructData(examples, tok, block_size=256, val_fraction=0.0, template=CHATML)
    batch = data.get_batch("train", 1, gen())
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0]
    full = ids + [labels[-1].item()]
    labelled = [i + 1 for i in range(len(ids)) if labels[i] != -100]  # positions in `full` that are targets
    # the targets are exactly the two assistant pieces, at their positions in the rendered conversation
    text = "".join(t for t, _ in pieces)
    start1 = len(tok.encode(text[: text.index("Hello")]))
    start2 = len(tok.encode(text[: text.index("Ciao")]))
    want = list(range(start1, start1 + len(tok.encode("Hello<|im_end|>\n")))) + list(
        range(start2, start2 + len(tok.encode("Ciao<|im_end|>\n"))))
    assert labelled == want
    assert [full[p] for p in labelled] == [labels[p - 1].item() for p in labelled]
    assert data.eval_examples("train") == [(text[: text.index("Ciao")], "Ciao")]


def test_chat_without_template_is_an_error(tok):
    examples, _ = parse_instructions([{"messages": [{"role": "user", "content": "q"},
                                                    {"role": "assistant", "content": "a"}]}])
    with pytest.raises(ChatTemplateError, match="line 1 .*template="):
        InstructData(examples, tok, block_size=32)


def test_auto_detect_and_forced_format(tmp_path, tok):
    lines = [json.dumps({"prompt": "p", "completion": "c"}), "",
             json.dumps({"instruction": "i", "output": "o"}),
             json.dumps({"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]})]
    path = write(tmp_path, lines)
    examples, report = load_instructions(path)
    assert [e.fmt for e in examples] == ["prompt_completion", "alpaca", "chat"]
    assert [e.line for e in examples] == [1, 3, 4]
    assert report.blank_lines == [2] and report.n_loaded == report.n_records == 3
    with pytest.raises(InstructFormatError, match=r"line 3: missing key 'prompt'"):
        load_instructions(path, fmt="prompt_completion")
    with pytest.raises(ValueError, match="fmt='jsonl'"):
        load_instructions(path, fmt="jsonl")
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_instructions(tmp_path / "nope.jsonl")


BAD_LINES = [
    ('{"prompt": "p", "completion": ', "not valid JSON"),
    ('{"prompt": "p"}', "missing key 'completion'"),
    ('{"prompt": "p", "completion": 3}', "'completion' must be a string, got int"),
    ('{"prompt": "p", "completion": "  "}', "'completion' is empty"),
    (json.dumps({"prompt": "a" + DEFAULT_SEPARATOR + "b", "completion": "c"}), "contains the separator"),
    ('["prompt", "completion"]', "expected a JSON object, got list"),
    ('{"text": "hello"}', "cannot tell the format"),
    ('{"instruction": "i", "output": ""}', "'output' is empty"),
    ('{"instruction": "i", "input": null, "output": "o"}', "'input' must be a string"),
    ('{"messages": []}', "non-empty list"),
    ('{"messages": [{"role": "bot", "content": "x"}]}', r"messages\[0\]"),
    ('{"messages": [{"role": "user", "content": "x"}]}', "no assistant turn"),
    ('{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}]}', "empty content"),
    ('{"messages": [{"role": "assistant", "content": "x"}]}', "start with a user turn"),
]


@pytest.mark.parametrize("line, why", BAD_LINES)
def test_malformed_line_names_line_number_and_problem(tmp_path, line, why):
    good = json.dumps({"prompt": "p", "completion": "c"})
    path = write(tmp_path, [good, good, line, good])
    with pytest.raises(InstructFormatError, match=rf"line 3: .*{why}.*skip_bad=True"):
        load_instructions(path)


def test_skip_bad_counts_and_lists_every_skipped_line(tmp_path):
    good = json.dumps({"prompt": "p", "completion": "c"})
    lines = [good, BAD_LINES[0][0], good, BAD_LINES[1][0], BAD_LINES[4][0], good]
    examples, report = load_instructions(write(tmp_path, lines), skip_bad=True)
    assert len(examples) == report.n_loaded == 3 and report.n_records == 6
    assert [n for n, _ in report.skipped] == [2, 4, 5]
    assert "not valid JSON" in report.skipped[0][1] and "missing key 'completion'" in report.skipped[1][1]
    assert "skipped 3 bad record(s)" in report.summary() and "line 5" in report.summary()


def test_parse_records_names_the_record():
    with pytest.raises(InstructFormatError, match="record 2: missing key 'output'"):
        parse_instructions([{"instruction": "a", "output": "b"}, {"instruction": "a"}])


# --- packing and truncation ------------------------------------------------------------------------
def _pc_examples(n: int) -> list[Example]:
    records = [{"prompt": f"q{i}" * (1 + i % 3), "completion": f"A{i}"} for i in range(n)]
    return parse_instructions(records, separator="=")[0]


def test_packing_keeps_labels_on_completions_only(tok):
    examples = _pc_examples(30)
    plain = InstructData(examples, tok, block_size=40, val_fraction=0.0)
    packed = InstructData(examples, tok, block_size=40, val_fraction=0.0, pack=True)
    assert packed.report.rows["train"] < plain.report.rows["train"] == 30
    assert packed.report.target_tokens == plain.report.target_tokens  # no target lost or added
    completions = {f"A{i}{EOS}" for i in range(30)}
    seen = set()
    for ids, train in packed.rows["train"]:
        assert len(ids) <= 41
        text = tok.decode(ids.tolist())
        pieces = text.split(EOS)[:-1]  # each packed example ends with eos
        assert len(pieces) >= 1 and text.endswith(EOS)
        pos = 0
        for piece in pieces:  # walk the examples inside the row
            prompt, comp = piece.split("=")
            n_p, n_c = len(prompt) + 1, len(comp) + 1
            assert not train[pos: pos + n_p].any()  # prompt + separator: never a target
            assert train[pos + n_p: pos + n_p + n_c].all()  # completion + eos: all targets
            seen.add(comp + EOS)
            pos += n_p + n_c
        assert pos == len(ids)
    assert seen == completions
    batch = packed.get_batch("train", 8, gen())
    for b in range(8):
        got = targets(tok, batch, b)
        assert all(p + EOS in completions for p in got.split(EOS)[:-1])


def test_prompt_truncated_from_the_left_and_reported(tok):
    records = [{"prompt": "x" * 50 + "END", "completion": "ok"}, {"prompt": "short", "completion": "fine"}]
    examples = parse_instructions(records, separator="=")[0]
    with pytest.warns(UserWarning, match="1 example.*lost the left part of the prompt.*lines \\[1\\]"):
        data = InstructData(examples, tok, block_size=20, val_fraction=0.0)
    assert data.report.prompt_truncated == [1] and data.report.completion_truncated == []
    row = next(ids for ids, _ in data.rows["train"] if len(ids) == 21)
    assert tok.decode(row.tolist()) == "x" * 14 + "END=ok" + EOS  # the prompt's right end survives
    batch = rows_of(data)
    assert {targets(tok, batch, b) for b in range(64)} == {"ok" + EOS, "fine" + EOS}


def test_overlong_completion_truncated_and_reported(tok):
    examples = parse_instructions([{"prompt": "p", "completion": "y" * 30}], separator="=")[0]
    with pytest.warns(UserWarning, match="end of the completion"):
        data = InstructData(examples, tok, block_size=10, val_fraction=0.0)
    assert data.report.completion_truncated == [1]
    ids, train = data.rows["train"][0]
    assert tok.decode(ids.tolist()) == "=" + "y" * 10 and train[1:].all() and not train[0]


# --- splits, determinism, evaluation pairs ---------------------------------------------------------
def test_splits_batches_and_eval_pairs(tok):
    examples = _pc_examples(50)
    data = InstructData(examples, tok, block_size=32, val_fraction=0.2, seed=3)
    assert data.report.examples == {"train": 40, "val": 10}
    a, b = data.get_batch("val", 4, gen(1)), data.get_batch("val", 4, gen(1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    pairs = data.eval_examples("val")
    assert len(pairs) == 10 and all(p.endswith("=") and c.startswith("A") for p, c in pairs)
    val_lines = {e.line for e in data.examples["val"]}
    assert {f"A{n - 1}" for n in val_lines} == {c for _, c in pairs}
    other = InstructData(examples, tok, block_size=32, val_fraction=0.2, seed=4)
    assert {e.line for e in other.examples["val"]} != val_lines
    with pytest.raises(ValueError, match="split='test'"):
        data.get_batch("test", 2, gen())
    with pytest.raises(ValueError, match="empty"):
        InstructData(examples, tok, block_size=32, val_fraction=0.0).get_batch("val", 2, gen())


def test_constructor_errors(tok):
    examples = _pc_examples(2)
    with pytest.raises(ValueError, match="no eos"):
        InstructData(examples, char_tokenizer(string.printable), block_size=8)
    with pytest.raises(ValueError, match="block_size=0"):
        InstructData(examples, tok, block_size=0)
    with pytest.raises(ValueError, match="list of Example"):
        InstructData([{"prompt": "a", "completion": "b"}], tok, block_size=8)
    bad = parse_instructions([{"prompt": "é", "completion": "b"}])[0]
    with pytest.raises(ValueError, match="line 1: .*not in the vocabulary"):
        InstructData(bad, tok, block_size=8)


def test_write_jsonl_roundtrip(tmp_path):
    recs = [{"prompt": "1 + 1 =", "completion": " 2"}, {"prompt": "ü", "completion": "x"}]
    path = write_jsonl(tmp_path / "out" / "a.jsonl", recs)
    assert [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()] == recs
    examples, _ = load_instructions(path)
    assert [e.completion for e in examples] == [" 2", "x"]


# --- the real SmolLM2 chat template and tokenizer --------------------------------------------------
@pytest.mark.real_weights
def test_smollm2_chat_template_masks_assistant_turns():
    from groundup.interop.gguf import gguf_metadata, gguf_tokenizer, read_gguf
    from groundup.loading import packaged_path

    tok = gguf_tokenizer(gguf_metadata(read_gguf(packaged_path("smollm2-135m-instruct"))))
    msgs = [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "And of Italy?"}, {"role": "assistant", "content": "Rome."}]
    examples, _ = parse_instructions([{"messages": msgs}, {"prompt": "2 + 2 =", "completion": " 4"}])
    data = InstructData(examples, tok, block_size=128, val_fraction=0.0)
    batch = data.get_batch("train", 8, gen())
    got = {targets(tok, batch, b) for b in range(8)}
    assert got == {"Paris.<|im_end|>\nRome.<|im_end|>\n", " 4<|im_end|>"}  # SmolLM2's eos is <|im_end|>
    pieces = chat_segments(tok.chat_template, msgs)
    assert pieces[0][0].startswith("<|im_start|>system\n")  # the template's default system turn: no loss
    whole = tok.encode("".join(t for t, _ in pieces))
    assert whole == [i for t, _ in pieces for i in tok.encode(t)]  # pieces split at special tokens: same ids


def test_template_that_hides_assistant_turns_is_an_error(tok):
    user_only = "{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}{% endif %}{% endfor %}"
    examples, _ = parse_instructions([{"messages": [{"role": "user", "content": "q"},
                                                    {"role": "assistant", "content": "a"}]}])
    with pytest.raises(ChatTemplateError, match="line 1: .*no assistant text"):
        InstructData(examples, tok, block_size=32, template=user_only)


def test_batches_feed_the_causal_lm_objective(tok):
    """The batch plugs into the causal_lm objective unchanged, and its loss is the completion tokens' mean."""
    from groundup.config import preset
    from groundup.models import build_model
    from groundup.train.objectives import causal_lm

    torch.manual_seed(0)
    examples, _ = parse_instructions([{"prompt": "2+2", "completion": "4"}, {"prompt": "13+3", "completion": "16"}],
                                     separator="=")
    data = InstructData(examples, tok, block_size=16, val_fraction=0.0)
    batch = data.get_batch("train", 4, gen())
    model = build_model(preset("gpt-tiny", vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, d_model=32))
    with torch.no_grad():
        loss, metrics = causal_lm(model, batch)
        logits = model(batch["input_ids"])  # (B, T, V)
    keep = batch["labels"] != -100
    assert {targets(tok, batch, b) for b in range(4)} == {"4" + EOS, "16" + EOS}
    assert set(keep.sum(1).tolist()) == {2, 3}  # completion + eos only
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits[keep], batch["labels"][keep]))
