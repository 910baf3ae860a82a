"""Training from the command line as a user meets it, through real subprocesses: the same seed gives the same run,
a run says what it did (loss lines with the progress bar off, a final summary), Ctrl-C saves a checkpoint that
resumes exactly, and a rejected run writes nothing."""

from __future__ import annotations

import csv
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_helpers import char_checkpoint, counting_jsonl
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--model.n_layer=1", "--model.d_model=32", "--model.block_size=32", "--train.batch_size=4",
         "--train.eval_every=3", "--train.eval_batches=2", "--train.progress=false", "--train.log_every=1"]
TINY = ["--model.preset=gpt-tiny", "--model.n_layer=1", "--model.d_model=32", "--model.block_size=32"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def groundup(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "groundup", *args], capture_output=True, text=True, cwd=ROOT,
                          env=ENV, timeout=300)


def rows(out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((out / "metrics.csv").open()))


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "ckpt" / "model.safetensors")


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


@pytest.fixture(scope="module")
def twice(tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """The issue's command, run twice into two out_dirs."""
    root = tmp_path_factory.mktemp("twice")
    runs = {}
    for name in ("a", "b"):
        out = root / name
        runs[name] = out, groundup("pretrain", "--config=configs/gpt-tiny.yaml", "--train.max_steps=3", *SMALL,
                                   f"--train.out_dir={out}")
        assert runs[name][1].returncode == 0, runs[name][1].stderr
    return runs


def test_the_same_pretrain_command_twice_gives_the_same_losses_and_weights(twice):
    (a, _), (b, _) = twice["a"], twice["b"]
    assert [r["loss"] for r in rows(a)] == [r["loss"] for r in rows(b)]
    assert rows(a)[-1]["val_loss"] == rows(b)[-1]["val_loss"]
    assert_same_weights(a, b)


def test_pretrain_prints_a_line_per_log_step_and_a_final_summary(twice):
    out, done = twice["a"]
    metrics = rows(out)
    for r in metrics:
        assert f"step {r['step']}/3 | loss {float(r['loss']):.4f} | lr {float(r['lr']):.2e}" in done.stdout
    assert f"| val_loss {float(metrics[-1]['val_loss']):.4f}" in done.stdout  # evaluated at step 3
    assert f"validation loss: {float(metrics[-1]['val_loss']):.4f} nats/char" in done.stdout
    assert f"checkpoint:      {out / 'ckpt'}" in done.stdout
    assert f"metrics CSV:     {out / 'metrics.csv'}" in done.stdout
    assert f"loss curve:      {out / 'loss.png'}" in done.stdout and (out / "loss.png").is_file()


def test_a_new_run_over_a_checkpoint_is_refused_before_it_writes(twice, tmp_path):
    out, _ = twice["a"]
    other = tmp_path / "other.txt"
    other.write_text("something else entirely, " * 100)
    before = (out / "data" / "meta.json").read_text()
    done = groundup("pretrain", "--config=configs/gpt-tiny.yaml", "--train.max_steps=3", *SMALL,
                    f"--data.corpus={other}", f"--train.out_dir={out}")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--train.resume=true" in done.stderr and "--train.out_dir" in done.stderr
    assert (out / "data" / "meta.json").read_text() == before  # the old run's token stream was not replaced


@pytest.mark.parametrize("text, args, message", [
    ("To be, or not to be.\n", [], "block_size=32"),  # shorter than one window of the context
    ("To be, or not to be, that is the question.\n" * 50, ["--data.val_fraction=0"], "--train.eval_every=0"),
])
def test_a_rejected_pretrain_leaves_no_out_dir(tmp_path, text, args, message):
    corpus, out = tmp_path / "corpus.txt", tmp_path / "out"
    corpus.write_text(text)
    done = groundup("pretrain", *TINY, *SMALL, f"--data.corpus={corpus}", f"--train.out_dir={out}", *args)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()


def test_ctrl_c_saves_a_checkpoint_that_resumes_exactly(tmp_path):
    """SIGINT mid-run: exit 130, no traceback, one line naming the checkpoint and the command that resumes it;
    that command continues from the saved step, and the resumed run equals an uninterrupted one (a constant lr,
    so the schedule does not depend on max_steps)."""
    out, corpus = tmp_path / "run", tmp_path / "corpus.txt"
    corpus.write_text("To be, or not to be, that is the question.\n" * 200)
    args = [*TINY, f"--data.corpus={corpus}", "--train.batch_size=4", "--train.eval_every=0", "--train.ckpt_every=0",
            "--train.log_every=5", "--train.warmup_steps=0", "--train.lr=1e-3", "--train.min_lr=1e-3",
            "--train.dtype=fp32", "--train.progress=false"]
    run = subprocess.Popen([sys.executable, "-m", "groundup", "pretrain", *args, "--train.max_steps=1000000",
                            f"--train.out_dir={out}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           cwd=ROOT, env=ENV, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 240
        while not (out / "metrics.csv").is_file() or len(rows(out)) < 2:  # two rows: inside the training loop
            if run.poll() is not None or time.monotonic() > deadline:
                run.kill()
                pytest.fail(f"the run made no progress: {run.communicate()[1]}")
            time.sleep(0.1)
        run.send_signal(signal.SIGINT)
        _, stderr = run.communicate(timeout=120)
    finally:
        run.kill()
    assert run.returncode == 130 and "Traceback" not in stderr, stderr
    step = json.loads((out / "ckpt" / "state.json").read_text())["step"]
    assert step >= 10
    line = next(x for x in stderr.splitlines() if "interrupted" in x)
    assert f"after step {step}/1000000; checkpoint saved to {out / 'ckpt'}" in line
    command = shlex.split(line.split("resume with: ")[1])
    assert command[:2] == ["groundup", "pretrain"] and command[-1] == "--train.resume=true"

    resumed = groundup(*command[1:], f"--train.max_steps={step + 3}")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {out / 'ckpt'} at step {step}" in resumed.stdout
    ref = tmp_path / "ref"
    done = groundup("pretrain", *args, f"--train.max_steps={step + 3}", f"--train.out_dir={ref}")
    assert done.returncode == 0, done.stderr
    state = {d: json.loads((d / "ckpt" / "state.json").read_text()) for d in (out, ref)}
    assert state[out]["step"] == step + 3 and state[out]["losses"] == state[ref]["losses"]
    assert [(r["step"], r["loss"]) for r in rows(out)] == [(r["step"], r["loss"]) for r in rows(ref)]
    assert_same_weights(out, ref)


# --- finetune ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return char_checkpoint(tmp_path_factory.mktemp("base") / "ckpt")


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> Path:
    return counting_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl", 8)


def test_finetune_without_the_progress_bar_prints_its_losses(base, records, tmp_path):
    done = groundup("finetune", f"--model={base}", f"--data.path={records}", f"--out_dir={tmp_path / 'run'}",
                    "--train.max_steps=4", "--train.batch_size=2", "--train.log_every=2", "--train.eval_every=4",
                    "--train.eval_batches=1", "--data.val_fraction=0.25", "--train.progress=false")
    assert done.returncode == 0, done.stderr
    metrics = rows(tmp_path / "run")
    assert [r["step"] for r in metrics] == ["2", "4"]
    assert f"step 2/4 | loss {float(metrics[0]['loss']):.4f} | lr" in done.stdout
    assert f"step 4/4 | loss {float(metrics[1]['loss']):.4f} | lr" in done.stdout
    assert f"| val_loss {float(metrics[1]['val_loss']):.4f}" in done.stdout


def test_a_rejected_finetune_leaves_no_out_dir(base, records, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    for args, message in (([f"--model={base}", f"--data.path={empty}"], f"{empty} is empty"),
                          ([f"--model={tmp_path / 'missing'}", f"--data.path={records}"], "missing")):
        out = tmp_path / "out"
        done = groundup("finetune", *args, f"--out_dir={out}")
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert not out.exists()
