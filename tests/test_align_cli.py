"""`groundup align reward|dpo|ppo|grpo` and `groundup data preferences` through a real subprocess, as a user runs
them: what they write (metrics with the method's columns, a reward model PPO reads, adapters the library reloads
to the same numbers) and their answers to bad input (exit code 2, the file, line or flag named)."""

from __future__ import annotations

import csv
import json
import string
from pathlib import Path

import pytest
import torch
from cli_helpers import char_checkpoint, groundup

from groundup.align import DPOObjective, precompute_reference
from groundup.align.evaluate import pair_metrics
from groundup.config import preset
from groundup.data.preference import PreferenceData, load_preferences
from groundup.finetune import attach_adapter
from groundup.loading import load_pretrained
from groundup.models import build_model
from groundup.tokenizer import char_tokenizer
from groundup.train import save_checkpoint

FAST = ["--train.dtype=fp32", "--train.progress=false", "--train.warmup_steps=0", "--lora.r=4"]
GOOD, BAD = ["great fun", "a joy", "so good", "loved it"], ["dull mess", "a bore", "so bad", "hated it"]


def write_pairs(path: Path, n: int = 24, **override) -> Path:
    rows = [{"prompt": "", "chosen": GOOD[i % 4], "rejected": BAD[(i + 1) % 4], "margin": 1.0} for i in range(n)]
    rows[1].update(override)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return char_checkpoint(tmp_path_factory.mktemp("base") / "ckpt", n_layer=2, scale=3.0)


@pytest.fixture(scope="module")
def rm(tmp_path_factory, base) -> Path:
    root = tmp_path_factory.mktemp("rm")
    pairs = write_pairs(root / "pairs.jsonl")
    done = groundup("align", "reward", f"--model={base}", f"--data={pairs}", f"--eval_data={pairs}",
                    f"--out_dir={root / 'run'}", "--train.max_steps=30", "--train.lr=1e-2", *FAST)
    assert done.returncode == 0, done.stderr
    return root / "run"


def rows(csv_path: Path) -> list[dict[str, str]]:
    with csv_path.open() as f:
        return list(csv.DictReader(f))


def test_reward_cli_separates_the_pairs_and_logs_its_accuracy(rm):
    logged = rows(rm / "metrics.csv")
    assert "accuracy" in logged[0] and float(logged[-1]["accuracy"]) > float(logged[0]["accuracy"])
    assert (rm / "reward_model" / "reward_head.safetensors").is_file() and (rm / "loss.png").is_file()


def test_ppo_cli_reads_the_reward_model_and_logs_score_and_kl(rm, base, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("it was", "the film", "we saw")))
    done = groundup("align", "ppo", f"--model={base}", f"--prompts={prompts}", f"--reward_model={rm / 'reward_model'}",
                    f"--out_dir={tmp_path / 'ppo'}", "--rollout_size=8", "--epochs=2", "--train.batch_size=4",
                    "--train.max_steps=8", "--train.log_every=2", "--rl.max_new_tokens=6", *FAST)
    assert done.returncode == 0, done.stderr
    assert "rollout score" in done.stdout
    logged = rows(tmp_path / "ppo" / "metrics.csv")
    assert {"score", "kl", "clip_fraction"} <= set(logged[0]) and len(logged) == 4
    assert (tmp_path / "ppo" / "adapter" / "adapter.safetensors").is_file()


def test_dpo_cli_adapter_reloads_to_the_accuracy_it_printed(base, tmp_path):
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    done = groundup("align", "dpo", f"--model={base}", f"--data={pairs}", f"--eval_data={pairs}", "--beta=0.5",
                    f"--out_dir={tmp_path / 'dpo'}", "--train.max_steps=20", "--train.lr=2e-2", *FAST)
    assert done.returncode == 0, done.stderr
    printed = float(done.stdout.split("implicit-reward accuracy on")[1].split(":")[1].split(",")[0])
    model, tok = load_pretrained(base)
    data = PreferenceData(load_preferences(pairs), tok, model.config.block_size)
    precompute_reference(model, data)  # the base is the reference
    model = attach_adapter(model, tmp_path / "dpo" / "adapter")
    again = pair_metrics(DPOObjective(beta=0.5), model, data)
    assert again["reward_accuracy"] == pytest.approx(printed, abs=1e-3) and printed > 0.5
    assert "reward_margin" in rows(tmp_path / "dpo" / "metrics.csv")[0]


def test_grpo_cli_writes_an_adapter_formatted_like_fine_tuning(base, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}+1", "completion": str(i + 1)}) + "\n" for i in range(8)))
    done = groundup("align", "grpo", f"--model={base}", f"--data={data}", f"--eval_data={data}", "--group_size=4",
                    "--train.batch_size=8", "--train.max_steps=2", f"--out_dir={tmp_path / 'grpo'}", *FAST)
    assert done.returncode == 0, done.stderr
    assert "exact match on" in done.stdout
    fmt = json.loads((tmp_path / "grpo" / "adapter" / "prompt_format.json").read_text())
    assert fmt["kind"] == "prompt_completion" and fmt["separator"]
    assert {"reward", "kl"} <= set(rows(tmp_path / "grpo" / "metrics.csv")[0])


@pytest.mark.parametrize(("override", "named"), [
    ({"rejected": BAD[2], "chosen": BAD[2]}, "line 2: 'chosen' equals 'rejected'"),
    ({"rejected": None}, "line 2: 'rejected' must be a non-empty string"),
    ({"chosen": "x" * 80}, "line 2: prompt + response take"),  # the context holds 65 tokens
])
def test_dpo_cli_names_the_file_and_line_of_a_bad_pair(base, tmp_path, override, named):
    pairs = write_pairs(tmp_path / "pairs.jsonl", **override)
    done = groundup("align", "dpo", f"--model={base}", f"--data={pairs}", f"--out_dir={tmp_path / 'o'}", *FAST)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"--data={pairs}: {named}" in done.stderr


def test_ppo_cli_refuses_a_prompt_longer_than_the_context(rm, base, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "ok"}) + "\n" + json.dumps({"prompt": "y" * 60}) + "\n")
    done = groundup("align", "ppo", f"--model={base}", f"--prompts={prompts}", f"--reward_model={rm / 'reward_model'}",
                    f"--out_dir={tmp_path / 'o'}", *FAST)
    assert done.returncode == 2 and f"{prompts} line 2: the prompt takes 60 tokens" in done.stderr


def test_ppo_cli_refuses_a_reward_model_of_another_tokenizer(rm, tmp_path):
    tok = char_tokenizer(string.ascii_lowercase + " ", special_tokens=["<|endoftext|>"])
    torch.manual_seed(0)
    other = save_checkpoint(tmp_path / "other", build_model(preset("gpt-tiny", vocab_size=tok.vocab_size, n_layer=1,
                                                                  d_model=32, n_head=4, block_size=64)), tokenizer=tok)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "it was"}) + "\n")
    done = groundup("align", "ppo", f"--model={other}", f"--prompts={prompts}",
                    f"--reward_model={rm / 'reward_model'}", f"--out_dir={tmp_path / 'o'}", *FAST)
    assert done.returncode == 2 and "has another tokenizer than --model" in done.stderr
    assert "groundup align reward --model" in done.stderr


def test_data_preferences_writes_disjoint_rated_pairs_and_prompts(tmp_path):
    done = groundup("data", "preferences", f"--out_dir={tmp_path}", "--n_train=300", "--n_test=50", "--n_prompts=20")
    assert done.returncode == 0, done.stderr
    train, test = (load_preferences(tmp_path / f"{s}.jsonl") for s in ("train", "test"))
    assert (len(train), len(test)) == (300, 50) and all(p.margin >= 1.0 for p in train + test)
    snippets = lambda pairs: {s for p in pairs for s in (p.chosen, p.rejected)}  # noqa: E731
    assert not snippets(train) & snippets(test)
    prompts = [json.loads(line)["prompt"] for line in (tmp_path / "prompts.jsonl").read_text().splitlines()]
    assert len(prompts) == 20 and all(len(p.split()) == 4 for p in prompts)
