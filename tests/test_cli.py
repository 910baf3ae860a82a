"""The CLI end to end, through a real subprocess, including its answers to bad input."""

import csv
import json
from pathlib import Path

import pytest
import yaml
from cli_helpers import groundup, hamlet_corpus

from groundup.cli import CLIError, parse_job
from groundup.pretrain import PretrainJob

TINY = ["--model.preset=gpt-tiny", "--model.n_layer=1", "--model.d_model=32", "--model.block_size=32"]
FAST = ["--train.max_steps=6", "--train.batch_size=4", "--train.eval_every=3", "--train.eval_batches=2",
        "--train.progress=false", "--train.log_every=1", "--train.warmup_steps=2"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return hamlet_corpus(tmp_path_factory.mktemp("corpus") / "text.txt")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus) -> Path:
    out = tmp_path_factory.mktemp("run")
    done = groundup("pretrain", *TINY, *FAST, f"--data.corpus={corpus}", f"--train.out_dir={out}")
    assert done.returncode == 0, done.stderr
    return out


def test_pretrain_writes_checkpoint_metrics_and_curve(trained):
    assert {"model.safetensors", "config.json", "tokenizer.json", "state.json"} <= {
        p.name for p in (trained / "ckpt").iterdir()
    }
    rows = list(csv.DictReader((trained / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(1, 7))
    assert (trained / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_generate_and_eval_use_the_checkpoint(trained, corpus):
    done = groundup("generate", f"--model={trained / 'ckpt'}", "--prompt=To be", "--max_new_tokens=20", "--seed=1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("To be") and len(done.stdout) >= len("To be") + 20
    done = groundup("eval", f"--model={trained / 'ckpt'}", f"--data={corpus}")
    assert done.returncode == 0, done.stderr
    assert "perplexity" in done.stdout and "bits/char" in done.stdout


def test_help_lists_options_and_examples():
    done = groundup("pretrain", "--help")
    assert done.returncode == 0
    assert "--train.lr=" in done.stdout and "examples:" in done.stdout and "torchrun" in done.stdout
    assert "quickstart" in groundup("--help").stdout


def test_yaml_then_flags_override_defaults(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("model: {preset: gpt-tiny, n_layer: 3}\ntrain: {lr: 0.01, max_steps: 7}\n")
    job = parse_job(PretrainJob, ["--config", str(config), "--train.lr=2e-3", "--model.dropout=0.1"])
    assert job.train.lr == 2e-3 and job.train.max_steps == 7
    assert job.model == {"preset": "gpt-tiny", "n_layer": 3, "dropout": 0.1}


def test_unknown_option_is_named():
    with pytest.raises(CLIError, match="--train.learning_rate"):
        parse_job(PretrainJob, ["--train.learning_rate=1"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data.corpus=/nonexistent/text.txt"], "/nonexistent/text.txt"),
        (["--model.preset=gpt5"], "unknown preset 'gpt5'"),
        (["--model.n_head=3"], "d_model"),
        (["--train.dtype=fp16"], "fp16"),
        (["--config=/nonexistent.yaml"], "no such file"),
    ],
)
def test_bad_input_gets_a_clear_error_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "out"
    done = groundup("pretrain", *TINY, *FAST, f"--train.out_dir={out}", *args)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()


def test_empty_corpus_and_malformed_yaml(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    done = groundup("pretrain", *TINY, *FAST, f"--data.corpus={empty}", f"--train.out_dir={tmp_path / 'o'}")
    assert done.returncode == 2 and "empty" in done.stderr and "Traceback" not in done.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    done = groundup("pretrain", f"--config={bad}")
    assert done.returncode == 2 and "mapping" in done.stderr


def test_resuming_with_another_architecture_names_the_fields(trained, corpus):
    done = groundup("pretrain", *TINY, "--model.n_layer=2", *FAST,
                    f"--data.corpus={corpus}", f"--train.out_dir={trained}", "--train.resume=true",
                    "--train.max_steps=8")
    assert done.returncode == 2 and "n_layer" in done.stderr and "Traceback" not in done.stderr


def test_prompt_longer_than_the_context_is_refused(trained):
    done = groundup("generate", f"--model={trained / 'ckpt'}", "--prompt=" + "to be " * 20)
    assert done.returncode == 2 and "block_size=32" in done.stderr and "Traceback" not in done.stderr


def test_a_partial_section_keeps_the_job_defaults():
    job = parse_job(PretrainJob, ["--train.max_steps=5", "--model.n_layer=2"])
    assert job.train.out_dir == "runs/pretrain" and job.train.max_steps == 5
    assert job.model == {"preset": "gpt-shakespeare-char", "n_layer": 2}


def test_list_options_take_a_yaml_list_or_one_value():
    from groundup.jobs import GenerateJob

    assert parse_job(GenerateJob, ["--stop", "[QUEEN, ROMEO]"]).stop == ["QUEEN", "ROMEO"]
    assert parse_job(GenerateJob, ["--stop", "KING"]).stop == ["KING"]


CONFIGS = sorted(Path(__file__).resolve().parents[1].glob("configs/*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_trains(tmp_path, config):
    """Each recipe under configs/ parses, builds and trains: 2 steps at a reduced size (one layer, 2 rows, a smaller
    corpus), so the suite stays fast on a plain CPU; every other field as written in the file."""
    done = groundup("pretrain", f"--config={config}", f"--train.out_dir={tmp_path}", "--train.max_steps=2",
                    "--train.eval_every=2", "--train.eval_batches=1", "--train.progress=false", "--data.n_pairs=500",
                    "--model.n_layer=1", "--train.batch_size=2")
    assert done.returncode == 0, done.stderr
    written = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    recipe = yaml.safe_load(config.read_text())["model"]
    assert written["n_layer"] == 1 and written.get("block_size") == recipe.get("block_size", written.get("block_size"))
