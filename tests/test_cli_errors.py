"""What the CLI says about bad input, where the user meets it (a subprocess): the flag the user typed, never the
Python spelling of the option (TrainConfig.resume=True, skip_bad=True); FILE:LINE:COL for a broken YAML file;
list options with YAML's special characters; the JSON decoder's own column; "FILE is empty"; bf16 anywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import char_checkpoint, counting_jsonl

from groundup.cli import CLIError, parse_job, parse_list
from groundup.cli_flags import as_flags, flag_names
from groundup.finetune import FinetuneJob
from groundup.jobs import GenerateJob
from groundup.pretrain import PretrainJob
from groundup.quickstart import QuickstartJob

TESTS = Path(__file__).resolve().parent
FAST = ["--train.max_steps=1", "--train.batch_size=2", "--train.eval_every=0", "--train.progress=false",
        "--train.warmup_steps=0"]
# Several CLI calls in one interpreter (each `python -m groundup` pays ~3 s of imports): main() exactly as
# __main__ runs it, its stdout/stderr captured per call, an escaped exception printed as Python would.
MANY = """
import contextlib, io, json, sys, traceback
from groundup.cli import main
out = []
for argv in json.loads(sys.argv[1]):
    o, e = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        try:
            rc = main(argv)
        except BaseException:
            traceback.print_exc()
            rc = 1
    out.append({"rc": rc, "stdout": o.getvalue(), "stderr": e.getvalue()})
print(json.dumps(out))
"""
# The CLI on a plain AVX2 laptop CPU (no native bf16), whatever this machine is.
ON_AVX2 = """
import sys
sys.path.insert(0, sys.argv.pop(1))
from machines import AVX2
from groundup import cli, runtime
with runtime.simulate(AVX2):
    sys.exit(cli.main(sys.argv[1:]))
"""


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def groundup(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "groundup", *args], capture_output=True, text=True, cwd=cwd,
                          env=_env(), timeout=300)


def groundup_many(*argvs: list[str], cwd: Path | None = None) -> list[dict]:
    done = subprocess.run([sys.executable, "-c", MANY, json.dumps([list(a) for a in argvs])], capture_output=True,
                          text=True, cwd=cwd, env=_env(), timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def refused(result: dict | subprocess.CompletedProcess) -> str:
    """The stderr of a run that exited 2 with a one-line error and no traceback."""
    rc, err = (result["rc"], result["stderr"]) if isinstance(result, dict) else (result.returncode, result.stderr)
    assert rc == 2 and "Traceback" not in err and "error: " in err, err
    return err


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return char_checkpoint(tmp_path_factory.mktemp("base") / "ckpt")


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> Path:
    return counting_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl", 6)


# --- A: the flag, not the Python spelling --------------------------------------------------------------------
def test_library_spellings_become_the_flags_of_the_job():
    ft, pre = flag_names(FinetuneJob), flag_names(PretrainJob)
    assert as_flags("line 3: bad; fix the record or pass skip_bad=True to skip it", ft).endswith(
        "pass --data.skip_bad=true to skip it")
    assert as_flags("x/ckpt holds one; set TrainConfig.resume=True to continue it, or choose another "
                    "TrainConfig.out_dir", ft) == ("x/ckpt holds one; set --train.resume=true to continue it, or "
                                                    "choose another --out_dir")
    assert as_flags("choose another TrainConfig.out_dir", pre) == "choose another --train.out_dir"
    assert as_flags("continue it with TrainConfig(resume=True)", pre) == "continue it with --train.resume=true"
    assert as_flags("ModelConfig.d_model=100 is not divisible by n_head=3", pre) == (
        "--model.d_model=100 is not divisible by --model.n_head=3")
    assert as_flags("TrainConfig.max_steps=0 must be a positive integer", flag_names(QuickstartJob)) == (
        "--max_steps=0 must be a positive integer")
    # left as written: a Python call, a name two options share, a class the job does not build
    for kept in ("load_instructions(path='a.jsonl'): no such file", "vocab_size=3 is too small",
                 "ModelConfig.dropout=2 must be in [0, 1)"):
        assert as_flags(kept, ft if "dropout" in kept or "path" in kept else pre) == kept


@pytest.fixture(scope="module")
def finetuned(base, records, tmp_path_factory) -> Path:
    """A finetune run whose folder was given as --train.out_dir (the same as --out_dir)."""
    out = tmp_path_factory.mktemp("ft") / "given-as-train-out-dir"
    done = groundup("finetune", f"--model={base}", f"--data.path={records}", f"--train.out_dir={out}", *FAST)
    assert done.returncode == 0, done.stderr
    return out


def test_finetune_train_out_dir_is_its_out_dir(finetuned, base, records, tmp_path):
    assert (finetuned / "adapter" / "adapter.safetensors").is_file() and (finetuned / "ckpt").is_dir()
    both, helped = groundup_many(
        ["finetune", f"--model={base}", f"--data.path={records}", f"--train.out_dir={finetuned}",
         f"--out_dir={tmp_path / 'other'}", *FAST],
        ["finetune", "--help"])
    assert "give only --out_dir" in refused(both) and not (tmp_path / "other").exists()
    assert helped["rc"] == 0 and "--out_dir=" in helped["stdout"] and "--train.out_dir" not in helped["stdout"]
    config = tmp_path / "run.yaml"
    config.write_text("train: {out_dir: from-yaml, max_steps: 3}\n")
    assert parse_job(FinetuneJob, ["--config", str(config)]).out_dir == "from-yaml"
    assert parse_job(FinetuneJob, ["--config", str(config), "--out_dir=flag"]).out_dir == "flag"  # a flag wins


def test_finetune_errors_name_its_flags(finetuned, base, records, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1 + 1 ="}\n')
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "yo"}]}) + "\n")
    again, malformed, no_template = groundup_many(
        ["finetune", f"--model={base}", f"--data.path={records}", f"--out_dir={finetuned}", *FAST],
        ["finetune", f"--model={base}", f"--data.path={bad}", f"--out_dir={tmp_path / 'bad'}", *FAST],
        ["finetune", f"--model={base}", f"--data.path={chat}", f"--out_dir={tmp_path / 'chat'}", *FAST])
    err = refused(again)
    assert "set --train.resume=true to continue it, or choose another --out_dir" in err and "TrainConfig" not in err
    err = refused(malformed)
    assert "line 1: missing key 'completion'" in err and "pass --data.skip_bad=true" in err
    assert "skip_bad=True" not in err
    err = refused(no_template)
    assert "no chat template: pass --data.template=" in err and " template=" not in err


def test_finetune_chat_records_train_with_a_named_template(base, tmp_path):
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "yo"}]}) + "\n")
    done = groundup("finetune", f"--model={base}", f"--data.path={chat}", f"--out_dir={tmp_path / 'run'}",
                    "--data.template=chatml", "--data.val_fraction=0", *FAST)
    assert done.returncode == 0, done.stderr
    fmt = json.loads((tmp_path / "run" / "adapter" / "prompt_format.json").read_text())
    assert fmt["kind"] == "chat" and "<|im_start|>" in fmt["template"]


def test_pretrain_and_quickstart_config_errors_name_the_flags(tmp_path):
    heads, lrs, steps = groundup_many(
        ["pretrain", "--model.preset=gpt-tiny", "--model.d_model=100", "--model.n_head=3",
         f"--train.out_dir={tmp_path / 'a'}"],
        ["pretrain", "--train.lr=1e-3", "--train.min_lr=1e-2", f"--train.out_dir={tmp_path / 'b'}"],
        ["quickstart", "--max_steps=0", f"--out_dir={tmp_path / 'c'}"])
    err = refused(heads)
    assert "--model.d_model=100 is not divisible by --model.n_head=3" in err and "ModelConfig" not in err
    err = refused(lrs)
    assert "--train.min_lr=0.01 exceeds --train.lr=0.001" in err and "TrainConfig" not in err
    assert "--max_steps=0 must be a positive integer" in refused(steps)
    assert not any((tmp_path / d).exists() for d in "abc")


# --- B1: a broken YAML file ------------------------------------------------------------------------------------
def test_malformed_yaml_points_at_file_line_and_column(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("train:\n  lr: 0.01\n   max_steps: 2\n")  # line 3: a key indented under a scalar
    err = refused(groundup("pretrain", f"--config={config}"))
    assert f"{config}:3:" in err and "mapping values are not allowed here" in err
    assert "<unicode string>" not in err


# --- B2: list options ------------------------------------------------------------------------------------------
def test_list_items_are_plain_text_with_quotes_for_commas():
    assert parse_list("[+, -, *]", "--ops") == ["+", "-", "*"]
    assert parse_list("[yes, 1, null, '*', \"a, b\", &x]", "--stop") == ["yes", "1", "null", "*", "a, b", "&x"]
    assert parse_list('["\\n\\n", ###]', "--stop") == ["\n\n", "###"]
    assert parse_list("KING", "--stop") == ["KING"] and parse_list("[]", "--stop") == []
    assert parse_job(GenerateJob, ["--stop", "[*, !]"]).stop == ["*", "!"]
    for bad, why in (("[+, -", r"starts with \[ and ends with \]"), ("[a, 'b]", "not closed"), ("[a, , b]", "empty")):
        with pytest.raises(CLIError, match=why):
            parse_list(bad, "--ops")


def test_arithmetic_ops_with_yaml_special_characters(tmp_path):
    done = groundup("data", "arithmetic", "--ops", "[+, -, *]", "--n_train=30", "--n_test=5",
                    "--styles=[equation]", f"--out_dir={tmp_path / 'data'}")
    assert done.returncode == 0, done.stderr
    prompts = [json.loads(line)["prompt"] for line in (tmp_path / "data" / "train.jsonl").read_text().splitlines()]
    assert {p.split()[1] for p in prompts} == {"+", "-", "*"}
    unclosed, unknown = groundup_many(["data", "arithmetic", "--ops", "[+, -", f"--out_dir={tmp_path / 'x'}"],
                                      ["data", "arithmetic", "--ops", "[+, %]", f"--out_dir={tmp_path / 'y'}"])
    assert "--ops='[+, -': a list starts with [ and ends with ]" in refused(unclosed)
    assert "%" in refused(unknown)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


# --- B3, B4: a malformed JSONL line, an empty file ---------------------------------------------------------------
def test_json_error_column_is_the_decoders_in_the_line(tmp_path):
    line = '{"prompt": "1 + 1 =", "completion": "2"'  # the closing brace missing: the decoder stops at its end
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n" + line + "\n")
    column = f"line 2: not valid JSON (Expecting ',' delimiter at column {len(line) + 1})"
    results = groundup_many(["finetune", f"--data.path={bad}", f"--out_dir={tmp_path / 'ft'}"],
                            ["data", "clean", f"--input={bad}", f"--out={tmp_path / 'c.jsonl'}"],
                            ["data", "augment", f"--input={bad}", f"--out={tmp_path / 'a.jsonl'}"])
    for result in results:
        assert column in refused(result)


def test_an_empty_data_file_is_named_as_empty(tmp_path, records):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    results = groundup_many(
        ["finetune", f"--data.path={empty}", f"--out_dir={tmp_path / 'ft'}"],
        ["finetune", f"--data.path={records}", f"--eval_data={empty}", f"--out_dir={tmp_path / 'ft'}"],
        ["fewshot", f"--shots={empty}", f"--data={records}"],
        ["fewshot", f"--shots={records}", f"--data={empty}"],
        ["data", "clean", f"--input={empty}", f"--out={tmp_path / 'c.jsonl'}"],
        ["data", "augment", f"--input={empty}", f"--out={tmp_path / 'a.jsonl'}"])
    for result in results:
        err = refused(result)
        assert f"{empty} is empty" in err and "Example" not in err
    assert not any((tmp_path / name).exists() for name in ("ft", "c.jsonl", "a.jsonl"))  # refused before writing


# --- B5: bf16 ----------------------------------------------------------------------------------------------------
def _bf16_runs(base: Path, records: Path, tmp_path: Path) -> dict[str, list[str]]:
    corpus = tmp_path / "text.txt"
    corpus.write_text("To be, or not to be, that is the question.\n" * 40)
    return {
        "generate": ["generate", f"--model={base}", "--prompt=To be", "--max_new_tokens=4", "--dtype=bf16"],
        "eval": ["eval", f"--model={base}", f"--data={corpus}", "--dtype=bf16"],
        "pretrain": ["pretrain", "--model.preset=gpt-tiny", "--model.n_layer=1", "--model.d_model=32",
                     "--model.block_size=32", f"--data.corpus={corpus}", f"--train.out_dir={tmp_path / 'pt'}",
                     "--train.dtype=bf16", *FAST],
        "finetune": ["finetune", f"--model={base}", f"--data.path={records}", f"--out_dir={tmp_path / 'ft'}",
                     "--train.dtype=bf16", *FAST],
    }


def test_bf16_runs_on_this_machine(base, records, tmp_path):
    runs = _bf16_runs(base, records, tmp_path)
    for name, result in zip(runs, groundup_many(*runs.values()), strict=True):
        assert result["rc"] == 0 and "Traceback" not in result["stderr"], (name, result["stderr"])


@pytest.mark.parametrize("name", ["generate", "eval", "pretrain", "finetune"])
def test_bf16_where_emulated_runs_with_a_one_line_warning_naming_the_flag(base, records, tmp_path, name):
    argv = _bf16_runs(base, records, tmp_path)[name]
    done = subprocess.run([sys.executable, "-c", ON_AVX2, str(TESTS), *argv], capture_output=True, text=True,
                          env=_env(), timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    flag = "--train.dtype=bf16" if name in ("pretrain", "finetune") else "--dtype=bf16"
    warned = [line for line in done.stderr.splitlines() if "emulated" in line]
    assert len(warned) == 1 and warned[0].startswith(f"groundup {name}: {flag} on CPU AVX2, no native bf16"), warned
    assert "TrainConfig" not in done.stderr
