"""`groundup data augment` and `groundup data clean` as a user meets them: through a real subprocess.

Augmentation keeps every labelled pair consistent (the instruction template, the payload, the words the
completion shares, --protect); cleaning drops what finetune would reject, scrubs SSNs and IP addresses (not
dates or versions) and counts tokens with the tokenizer --tokenizer names.
"""

from __future__ import annotations

import json
import re
import string
import subprocess
from pathlib import Path

import pytest
import torch
from cli_helpers import groundup

from groundup.config import preset
from groundup.data import load_instructions
from groundup.data.wordnet import WORDNET_DIR
from groundup.models import build_model
from groundup.tokenizer import char_tokenizer
from groundup.train import save_checkpoint

FRENCH = {"cat": "chat", "dog": "chien", "house": "maison", "irrigate": "irriguer", "water": "eau",
          "horse": "cheval", "bread": "pain", "apple": "pomme"}
FREE = "Please could you kindly translate this short little word into French for me: tree"


def write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def read(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.fixture(scope="module", autouse=True)
def wordnet_installed():
    if not (WORDNET_DIR / "data.adj").is_file():
        pytest.fail("Debian wordnet-base is not installed: apt-get install wordnet-base (.ci/run does this)")


# --- data augment ----------------------------------------------------------------------------------
def augment(tmp_path: Path, records: list[dict], *flags: str) -> tuple[list[dict], str]:
    src, out = write(tmp_path / "in.jsonl", records), tmp_path / "out.jsonl"
    done = groundup("data", "augment", f"--input={src}", f"--out={out}", *flags)
    assert done.returncode == 0, done.stderr
    return read(out), done.stdout


def test_augment_keeps_the_template_and_payload_of_every_translation_pair(tmp_path):
    records = [{"prompt": f"Translate to French: {w}", "completion": f} for w, f in FRENCH.items()]
    records += [{"prompt": "Translate to German: dog", "completion": "Hund"},  # a variant of the template
                {"prompt": FREE, "completion": "arbre"},
                {"prompt": "Write the word banana twice, then stop writing", "completion": "banana banana"}]
    out, stdout = augment(tmp_path, records, "--n_per_record=6", "--p=0.3", "--seed=0")
    assert out[: len(records)] == records
    copies = out[len(records):]
    for c in copies:
        src = records[c["augment_source"]]
        assert c["completion"] == src["completion"]  # the label is never touched
        if src["prompt"].startswith("Translate to"):
            assert c["prompt"] == src["prompt"]
        if ": " in src["prompt"]:  # the payload word after its colon, and the language
            assert c["prompt"].endswith(": " + src["prompt"].rpartition(": ")[2])
            assert re.search(r"\b(French|German)\b", c["prompt"])
        assert c["prompt"].count("banana") == src["prompt"].count("banana")  # a word the completion depends on
    assert not any(records[c["augment_source"]]["prompt"].startswith("Translate to") for c in copies)
    changed = {records[c["augment_source"]]["prompt"] for c in copies}
    assert changed == {FREE, records[-1]["prompt"]}  # the free text still gets augmented, by every method
    assert {c["augment_method"] for c in copies} == {"synonym", "delete", "swap", "typo"}
    assert "kept 1 instruction template(s) unchanged: 'Translate to French:'" in stdout


def test_augment_protect_names_words_that_never_change(tmp_path):
    records = [{"prompt": "Please tell me quickly the usual colour of a clear sky at noon", "completion": "blue"}]
    words = ("colour", "clear", "sky", "noon")
    plain, _ = augment(tmp_path, records, "--methods=[typo, delete]", "--n_per_record=8", "--p=0.5")
    assert any(not all(re.search(rf"\b{w}\b", c["prompt"]) for w in words) for c in plain[1:])
    kept, _ = augment(tmp_path, records, "--methods=[typo, delete]", "--n_per_record=8", "--p=0.5",
                      "--protect=[Colour, clear sky, noon]")  # any case, phrases too
    assert len(kept) > 4 and all(re.search(rf"\b{w}\b", c["prompt"]) for c in kept[1:] for w in words)


def test_delete_and_swap_keep_the_line_breaks_of_a_template(tmp_path):
    reviews = ["the film was a delight from the first scene to the last one", "a dull plot and a wooden cast ruined it",
               "the music carried every single scene of this long movie"]
    records = [{"prompt": f"Review: {r}\nSentiment:", "completion": c} for r, c in zip(reviews, ("good", "bad", "good"),
                                                                                          strict=True)]
    out, stdout = augment(tmp_path, records, "--methods=[delete, swap]", "--n_per_record=2", "--p=0.3")
    assert len(out) == 9
    for c in out[3:]:
        assert c["prompt"].startswith("Review: ") and c["prompt"].endswith("\nSentiment:")
        assert c["prompt"] != records[c["augment_source"]]["prompt"]
    assert "'\\nSentiment:'" in stdout and "'Review:'" in stdout


def test_augment_field_option_changes_that_field_only(tmp_path):
    records = [{"instruction": "Give a short friendly greeting to the happy new visitor", "input": "Ann",
                "output": "Hello Ann, welcome!"} for _ in range(1)]
    out, _ = augment(tmp_path, records, "--field=instruction", "--n_per_record=4", "--p=0.3")
    assert len(out) == 5 and all(c["input"] == "Ann" and c["output"] == "Hello Ann, welcome!" for c in out[1:])
    assert all(c["instruction"] != records[0]["instruction"] for c in out[1:])
    src = write(tmp_path / "in.jsonl", records)
    done = groundup("data", "augment", f"--input={src}", f"--out={tmp_path / 'x.jsonl'}")  # the default: prompt
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "field 'prompt' must be a string" in done.stderr and "--field" in done.stderr
    assert "['input', 'instruction', 'output']" in done.stderr


# --- data clean ------------------------------------------------------------------------------------
def clean(tmp_path: Path, records: list[dict], *flags: str) -> subprocess.CompletedProcess:
    return groundup("data", "clean", f"--input={write(tmp_path / 'raw.jsonl', records)}",
                    f"--out={tmp_path / 'clean.jsonl'}", *flags)


def test_clean_drops_the_records_finetune_rejects(tmp_path):
    records = [{"prompt": "What is 2 + 2?", "completion": "4"}, {"prompt": "Name a colour", "completion": ""},
               {"prompt": "Name a fruit", "completion": "  \n"}, {"prompt": "Name a tree", "completion": "oak"}]
    with pytest.raises(ValueError, match="line 2: 'completion' is empty"):  # what finetune's loader says
        load_instructions(write(tmp_path / "raw.jsonl", records))
    done = clean(tmp_path, records)
    assert done.returncode == 0, done.stderr
    assert "kept 2/4" in done.stdout and "removed 2 rejected_by_finetune (lines [2, 3])" in done.stdout
    assert "line 2: 'completion' is empty (finetune would reject it)" in done.stdout
    examples, _ = load_instructions(tmp_path / "clean.jsonl")  # what clean kept, finetune loads
    assert [e.completion for e in examples] == ["4", "oak"]


def test_clean_scrubs_ssns_and_ip_addresses_but_not_dates_or_versions(tmp_path):
    records = [
        {"text": "My SSN is 123-45-6789, please keep it safe."},
        {"text": "Ping 192.168.0.12 or 2001:db8::8a2e:370:7334 (port 10.0.0.1:8080)."},
        {"text": "Released 2024-01-15 as version 1.2.3.4-beta, build v2.0.1.7, then 1.2.3.4+rc2 and 1.2.3.4.5."},
        {"text": "Ticket 000-12-3456, code 999.1.1.1, the time 10:30:45, python slice x[1::2]."},
    ]
    done = clean(tmp_path, records, "--fields=[text]")
    assert done.returncode == 0, done.stderr
    assert "scrubbed PII {'SSN': 1, 'IP': 3} in 2 record(s)" in done.stdout
    assert [r["text"] for r in read(tmp_path / "clean.jsonl")] == [
        "My SSN is [SSN], please keep it safe.", "Ping [IP] or [IP] (port [IP]:8080).", records[2]["text"],
        records[3]["text"]]


@pytest.fixture(scope="module")
def tokenizer_paths(tmp_path_factory) -> dict[str, Path]:
    """A tokenizer.json, and a checkpoint folder holding the same tokenizer."""
    root = tmp_path_factory.mktemp("tok")
    tok = char_tokenizer(string.printable, special_tokens=["<|endoftext|>"])
    torch.manual_seed(0)
    model = build_model(preset("gpt-tiny", vocab_size=tok.vocab_size, n_layer=1, d_model=16, n_head=2, block_size=16))
    return {"file": tok.save(root / "tok.json"), "model": save_checkpoint(root / "ckpt", model, tokenizer=tok)}


@pytest.mark.parametrize("which", ["file", "model"])
def test_clean_min_tokens_counts_with_the_tokenizer_flag(tmp_path, tokenizer_paths, which):
    records = [{"prompt": "Hi", "completion": "yo"},
               {"prompt": "What is the capital of France?", "completion": "Paris"}]
    done = clean(tmp_path, records, "--clean.min_tokens=10", f"--tokenizer={tokenizer_paths[which]}")
    assert done.returncode == 0, done.stderr
    assert "kept 1/2" in done.stdout and "line 1: 5 tokens < min_tokens=10" in done.stdout  # "Hi\nyo", one a char
    assert read(tmp_path / "clean.jsonl") == records[1:]


def test_clean_token_filters_without_a_tokenizer_say_to_pass_the_flag(tmp_path):
    records = [{"prompt": "Hi", "completion": "yo"}]
    for flag in ("--clean.min_tokens=10", "--clean.max_tokens=10"):
        done = clean(tmp_path, records, flag)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert "pass --tokenizer" in done.stderr and "tokenizer=" not in done.stderr.replace("--tokenizer=", "")
    done = clean(tmp_path, records, "--clean.max_tokens=10", f"--tokenizer={tmp_path / 'missing.json'}")
    assert done.returncode == 2 and "missing.json" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.real_weights
def test_clean_max_tokens_with_a_packaged_models_tokenizer(tmp_path):
    name = "smollm2-135m-instruct"  # its GGUF's vocabulary, read without the weights
    records = [{"prompt": "Hello", "completion": "world"},
               {"prompt": "Tell me a long story about " + "dragons and castles " * 10, "completion": "Once."}]
    done = clean(tmp_path, records, "--clean.max_tokens=20", f"--tokenizer={name}")
    assert done.returncode == 0, done.stderr
    assert "kept 1/2" in done.stdout and re.search(r"line 2: \d+ tokens > max_tokens=20", done.stdout)
