"""Fine-tuning and the data commands from the command line, through a real subprocess: data arithmetic ->
finetune -> generate --adapter -> merge, and the CLI's answers to bad input (exit code 2, no traceback)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from cli_helpers import char_checkpoint, groundup
from torch.testing import assert_close

from groundup.apps.data import augment_cli
from groundup.data import DEFAULT_SEPARATOR, augment_records
from groundup.finetune import attach_adapter, greedy_completions
from groundup.jobs import AugmentJob
from groundup.loading import load_pretrained


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return char_checkpoint(tmp_path_factory.mktemp("base") / "ckpt", n_layer=2, scale=3.0)


@pytest.fixture(scope="module")
def run(tmp_path_factory, base) -> dict[str, Path]:
    """data arithmetic, then a LoRA run, both through the CLI."""
    root = tmp_path_factory.mktemp("cli")
    done = groundup("data", "arithmetic", f"--out_dir={root / 'data'}", "--n_train=60", "--n_test=10",
                    "--ops=[+]", "--max_digits=1", "--styles=[equation]")
    assert done.returncode == 0, done.stderr
    assert "train.jsonl (60)" in done.stdout
    done = groundup("finetune", f"--model={base}", "--method=lora", f"--data.path={root / 'data' / 'train.jsonl'}",
                    f"--out_dir={root / 'run'}", "--train.max_steps=20", "--train.batch_size=8", "--train.lr=3e-2",
                    "--train.warmup_steps=0", "--train.eval_every=0", "--train.dtype=fp32", "--train.progress=false",
                    "--train.log_every=5", "--peft.r=4", "--data.val_fraction=0", "--eval_max_new_tokens=4",
                    f"--eval_data={root / 'data' / 'test.jsonl'}")
    assert done.returncode == 0, done.stderr
    assert "exact match on" in done.stdout
    return {"data": root / "data", "run": root / "run", "root": root}


def test_finetune_cli_writes_both_adapter_layouts_and_lowers_the_loss(run):
    out = run["run"]
    assert {p.name for p in (out / "adapter").iterdir()} == {"adapter_config.json", "adapter.safetensors",
                                                             "prompt_format.json"}
    assert {p.name for p in (out / "adapter_hf").iterdir()} == {"adapter_config.json", "adapter_model.safetensors",
                                                                "prompt_format.json"}
    assert json.loads((out / "adapter_hf" / "adapter_config.json").read_text())["peft_type"] == "LORA"
    losses = [float(r["loss"]) for r in csv.DictReader((out / "metrics.csv").open())]
    assert len(losses) == 4 and losses[-1] < losses[0] - 0.1


def test_generate_with_adapter_matches_the_library(run, base):
    prompt = "3 + 4 =" + DEFAULT_SEPARATOR
    done = groundup("generate", f"--model={base}", f"--adapter={run['run'] / 'adapter'}", f"--prompt={prompt}",
                    "--temperature=0", "--max_new_tokens=6")
    assert done.returncode == 0, done.stderr
    model, tok = load_pretrained(base)
    tuned = attach_adapter(model, run["run"] / "adapter")
    expected = greedy_completions(tuned, tok, [prompt], max_new_tokens=6)[0]
    plain = greedy_completions(load_pretrained(base)[0], tok, [prompt], max_new_tokens=6)[0]
    assert done.stdout == prompt + expected + "\n"
    assert expected != plain  # the adapter was used


def test_merge_cli_output_equals_the_adapter_output(run, base):
    out = run["root"] / "merged"
    done = groundup("merge", f"--model={base}", f"--adapter={run['run'] / 'adapter_hf'}", f"--out={out}",
                    "--dtype=fp32")
    assert done.returncode == 0, done.stderr
    merged, tok = load_pretrained(out)
    tuned = attach_adapter(load_pretrained(base)[0], run["run"] / "adapter").eval()
    ids = torch.tensor([tok.encode("3 + 4 =" + DEFAULT_SEPARATOR)])
    with torch.no_grad():
        assert_close(merged(ids), tuned(ids), atol=1e-5, rtol=1e-5)


def test_malformed_jsonl_line_exits_2_naming_the_line(tmp_path, base):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1 + 1 =", "completion": "2"}\n\n{"prompt": "2 + 2 =", "completion": 4}\n')
    done = groundup("finetune", f"--model={base}", f"--data.path={bad}", f"--out_dir={tmp_path / 'run'}")
    assert done.returncode == 2
    assert "line 3: 'completion' must be a string" in done.stderr and "Traceback" not in done.stderr


def test_unknown_method_exits_2_listing_the_methods(tmp_path, base):
    done = groundup("finetune", "--method=dora", f"--model={base}", "--data.path=x.jsonl")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    methods = "['full', 'lora', 'prompt', 'prefix', 'ia3', 'bitfit', 'flamingo', 'llava']"
    assert f"method='dora' is unknown; use one of {methods}" in done.stderr


def test_data_clean_prints_its_report_and_writes_the_kept_records(tmp_path):
    raw = tmp_path / "raw.jsonl"
    rows = [{"prompt": "Mail me at ann@example.com", "completion": "ok"}, {"prompt": "What is 2 + 2?",
            "completion": "4"}, {"prompt": "what is 2 + 2?", "completion": "4"}]
    raw.write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = groundup("data", "clean", f"--input={raw}", f"--out={tmp_path / 'clean.jsonl'}")
    assert done.returncode == 0, done.stderr
    assert "kept 2/3" in done.stdout and "line 3: duplicate of line 2" in done.stdout
    kept = [json.loads(x) for x in (tmp_path / "clean.jsonl").read_text().splitlines()]
    assert kept[0]["prompt"] == "Mail me at [EMAIL]" and len(kept) == 2


def test_data_augment_is_seeded_and_matches_the_library(tmp_path):
    records = [{"prompt": f"please compute the sum of {i} and seven", "completion": "x"} for i in range(4)]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    outs = []
    for seed in (1, 2):
        out = tmp_path / f"out{seed}.jsonl"
        done = groundup("data", "augment", f"--input={src}", f"--out={out}", "--methods=[typo]", "--n_per_record=2",
                        "--p=0.3", f"--seed={seed}")
        assert done.returncode == 0, done.stderr
        outs.append([json.loads(x) for x in out.read_text().splitlines()])
    expected, _ = augment_records(records, "prompt", ["typo"], n_per_record=2, seed=1, p=0.3)
    assert outs[0] == expected and outs[0] != outs[1]
    assert len(outs[0]) == 12 and all(r["augment_method"] == "typo" for r in outs[0][4:])
    with pytest.raises(FileNotFoundError, match="no such file"):
        augment_cli(AugmentJob(input=str(tmp_path / "missing.jsonl"), out=str(tmp_path / "x.jsonl")))
