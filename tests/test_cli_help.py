"""What `--help` tells a new user, and the near misses it catches (through the CLI, as the user meets them)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from cli_helpers import groundup

from groundup.cli import field_comments, summary
from groundup.jobs import COMMANDS, GenerateJob


def test_the_command_list_gives_each_command_its_whole_first_sentence():
    done = groundup("--help")
    assert done.returncode == 0
    listed = " ".join(done.stdout.split())  # wrapped lines joined back
    for name, command in COMMANDS.items():
        first = summary(command.job)
        assert first.endswith(".") and f"{name} {first}" in listed, name
    assert "LoRA, cascades)." in listed  # serve's line used to stop mid-sentence


def test_options_are_listed_with_the_comment_their_field_has_in_the_source():
    assert field_comments(GenerateJob)["adapter"].startswith("an adapter folder")
    done = groundup("generate", "--help")
    line = next(x for x in done.stdout.splitlines() if x.strip().startswith("--dtype="))
    assert "auto (fastest here" in line
    train = next(x for x in groundup("pretrain", "--help").stdout.splitlines() if "--train.dtype=" in x)
    assert "auto = fastest here" in train  # a nested section's fields have theirs too


def test_data_help_lists_the_data_subcommands():
    done = groundup("data", "--help")
    assert done.returncode == 0, done.stderr
    assert all(f"data {sub}" in done.stdout for sub in ("clean", "augment", "arithmetic"))


@pytest.mark.parametrize("args, hint", [
    (["dat", "clean"], "did you mean 'data'?"),
    (["genrate"], "did you mean 'generate'?"),
    (["generate", "--model", "smollm2-135m-instruc"], "did you mean 'smollm2-135m-instruct'?"),
])
def test_a_near_miss_gets_a_did_you_mean(args, hint):
    done = groundup(*args)
    assert done.returncode == 2 and hint in done.stderr and "Traceback" not in done.stderr


def test_help_answers_without_importing_torch():
    """Every --help (and the command list) is read from the job dataclasses alone: torch, the models and the
    data pipeline load only when a command runs (which is what made --help take seconds)."""
    names = [name.split() for name in COMMANDS] + [["data"]]
    probe = ("import contextlib, io, sys\nfrom groundup.cli import main\n"
             f"for argv in [['--help'], *[[*name, '--help'] for name in {names!r}]]:\n"
             "    with contextlib.redirect_stdout(io.StringIO()):\n        assert main(argv) == 0, argv\n"
             "print(sorted(m for m in ('torch', 'tokenizers', 'safetensors') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_data_commands_run_without_importing_torch(tmp_path):
    probe = ("import sys\nfrom groundup.cli import main\n"
             f"d = {str(tmp_path)!r}\n"
             "assert main(['data', 'arithmetic', f'--out_dir={d}', '--n_train=40', '--n_test=8']) == 0\n"
             "assert main(['data', 'clean', f'--input={d}/train.jsonl', f'--out={d}/clean.jsonl']) == 0\n"
             "assert main(['data', 'augment', f'--input={d}/clean.jsonl', f'--out={d}/aug.jsonl']) == 0\n"
             "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"
    assert (tmp_path / "aug.jsonl").stat().st_size > (tmp_path / "clean.jsonl").stat().st_size > 0
