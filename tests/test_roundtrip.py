"""Fine-tune, then use what was written, as a new user does: `groundup finetune` on a handful of pairs, then
`generate`, `chat` and `serve` with the bare prompt give the trained answer, because the run recorded how it
formatted its prompts (prompt_format.json). Also chat's --template and Ctrl-C, and embed's one row per line."""

from __future__ import annotations

import builtins
import json
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from cli_helpers import char_checkpoint, groundup
from serve_helpers import running_server

import groundup.chat as chat_module
from groundup.chat import CHAT_TEMPLATES, apply_chat_template
from groundup.cli import main
from groundup.data import DEFAULT_SEPARATOR
from groundup.data.instruct_jsonl import ALPACA_PROMPT_NO_INPUT
from groundup.data.prompt_format import PromptFormat, prompt_format_for, read_prompt_format, save_prompt_format
from groundup.embed import embed_texts
from groundup.loading import load_pretrained
from groundup.serve.app import create_app
from groundup.serve.engine import EngineConfig
from groundup.serve.server import ServeJob, build_engine, load_cascade

PAIRS = {"cat": "chat", "dog": "chien", "house": "maison", "water": "eau"}
ASK = "Translate to French: {}"


@pytest.fixture(scope="module", autouse=True)
def one_thread_for_the_module():
    """conftest's one_thread, for the module fixtures too (they train before any test's own fixture runs)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny random GPT with a character tokenizer and no chat template; lively enough to memorise PAIRS."""
    return char_checkpoint(tmp_path_factory.mktemp("base") / "ckpt", n_layer=2, scale=3.0)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "fr.jsonl"
    path.write_text("".join(json.dumps({"prompt": ASK.format(k), "completion": v}) + "\n" for k, v in PAIRS.items()))
    return path


def train_flags(steps: int) -> list[str]:
    return [f"--train.max_steps={steps}", "--train.batch_size=8", "--train.warmup_steps=0", "--train.eval_every=0",
            "--train.dtype=fp32", "--train.progress=false", "--train.log_every=10", "--data.val_fraction=0"]


@pytest.fixture(scope="module")
def lora(tmp_path_factory, base, pairs) -> Path:
    """`groundup finetune --method lora` on PAIRS, the run a new user makes (in this process: it is the use of
    its result, in a fresh one, that these tests are about)."""
    out = tmp_path_factory.mktemp("lora")
    assert main(["finetune", f"--model={base}", "--method=lora", f"--data.path={pairs}", f"--out_dir={out}",
                 "--train.lr=3e-2", "--peft.r=8", *train_flags(40)]) == 0
    return out


@pytest.fixture(scope="module")
def full(tmp_path_factory, base, pairs) -> Path:
    out = tmp_path_factory.mktemp("full")
    assert main(["finetune", f"--model={base}", "--method=full", f"--data.path={pairs}", f"--out_dir={out}",
                 "--train.lr=3e-3", *train_flags(30)]) == 0
    return out / "model"


# --- 1. fine-tune -> generate / serve ---------------------------------------------------------------------------
def test_finetune_records_its_prompt_format_beside_every_result(lora, full):
    expected = PromptFormat("prompt_completion", separator=DEFAULT_SEPARATOR)
    for folder in (lora / "adapter", lora / "adapter_hf", full):
        assert read_prompt_format(folder) == expected
        assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]  # the atomic write left no temp file


def test_generate_with_the_adapter_answers_the_bare_prompt_as_trained(base, lora):
    prompt = ASK.format("cat")
    done = groundup("generate", f"--model={base}", f"--adapter={lora / 'adapter'}", f"--prompt={prompt}",
                    "--temperature=0", "--max_new_tokens=10")
    assert done.returncode == 0, done.stderr
    assert done.stdout == prompt + DEFAULT_SEPARATOR + "chat\n"  # the separator is shown: it is what the model saw
    assert "--raw_prompt" in done.stderr


def test_raw_prompt_turns_the_format_off_and_a_formatted_prompt_is_not_formatted_twice(base, lora, capsys):
    prompt = ASK.format("cat")
    assert main(["generate", f"--model={base}", f"--adapter={lora / 'adapter'}", f"--prompt={prompt}",
                 "--temperature=0", "--max_new_tokens=10", "--raw_prompt"]) == 0
    raw = capsys.readouterr().out
    assert raw.startswith(prompt) and DEFAULT_SEPARATOR + "chat" not in raw
    assert main(["generate", f"--model={base}", f"--adapter={lora / 'adapter'}",
                 f"--prompt={prompt}{DEFAULT_SEPARATOR}", "--temperature=0", "--max_new_tokens=10"]) == 0
    assert capsys.readouterr().out == prompt + DEFAULT_SEPARATOR + "chat\n"


def test_a_fully_fine_tuned_model_folder_formats_its_prompts_too(full, capsys):
    assert main(["generate", f"--model={full}", f"--prompt={ASK.format('dog')}", "--temperature=0",
                 "--max_new_tokens=10"]) == 0
    assert capsys.readouterr().out == ASK.format("dog") + DEFAULT_SEPARATOR + "chien\n"


def test_a_converted_quantized_or_merged_result_keeps_the_prompt_format(base, lora, full, tmp_path, capsys):
    written = {"convert": tmp_path / "hf", "quantize": tmp_path / "int8", "merge": tmp_path / "merged"}
    assert main(["convert", f"--model={full}", f"--out={written['convert']}", "--to=hf"]) == 0
    assert main(["quantize", f"--model={full}", f"--out={written['quantize']}", "--to=int8", "--dtype=fp32"]) == 0
    assert main(["merge", f"--model={base}", f"--adapter={lora / 'adapter'}", f"--out={written['merge']}"]) == 0
    capsys.readouterr()
    for command, folder in written.items():
        assert read_prompt_format(folder) == read_prompt_format(full), command
    assert main(["generate", f"--model={written['convert']}", f"--prompt={ASK.format('dog')}", "--temperature=0",
                 "--max_new_tokens=10"]) == 0
    assert capsys.readouterr().out == ASK.format("dog") + DEFAULT_SEPARATOR + "chien\n"  # as the model it came from


def test_serve_formats_prompts_to_the_adapter_and_leaves_the_base_alone(base, lora):
    job = ServeJob(model=str(base), name="base", adapter=[f"fr={lora / 'adapter'}"],
                   engine=EngineConfig(max_batch=2, max_seq_len=64))
    engine, models = build_engine(job)
    assert set(models.prompt_formats) == {"fr"}
    with running_server(create_app(engine, models)) as (_, url):
        def complete(model: str, prompt: str) -> str:
            r = httpx.post(f"{url}/v1/completions", json={"model": model, "prompt": prompt, "max_tokens": 10,
                                                           "temperature": 0}, timeout=60)
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]["text"]

        assert complete("fr", ASK.format("water")) == "eau"
        assert complete("base", ASK.format("water")) != "eau"
        r = httpx.post(f"{url}/v1/chat/completions", json={"model": "fr", "max_tokens": 10, "temperature": 0,
                       "messages": [{"role": "user", "content": ASK.format("house")}]}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == "maison"
    assert build_engine(ServeJob(model=str(base), adapter=[f"fr={lora / 'adapter'}"], raw_prompt=True,
                                 engine=EngineConfig(max_batch=2, max_seq_len=64)))[1].prompt_formats == {}


def test_a_cascade_member_with_an_adapter_is_prompted_as_it_was_fine_tuned(base, lora):
    spec = {"members": [{"name": "small", "model": "base", "cost": {"per_parameter": True}, "max_new_tokens": 10},
                        {"name": "fr", "model": "base", "adapter": str(lora / "adapter"),
                         "cost": {"per_parameter": True}, "max_new_tokens": 10}], "thresholds": [0.0]}
    small, fr = load_cascade(spec, ServeJob(model=str(base))).members
    assert (small.template, fr.template) == ("{query}", "{query}" + DEFAULT_SEPARATOR)
    assert fr.answer([ASK.format("water")])[0].text == "eau"
    assert load_cascade(spec, ServeJob(model=str(base), raw_prompt=True)).members[1].template == "{query}"


def test_alpaca_and_chat_data_record_their_templates_and_a_bad_record_is_named(tmp_path):
    chatml = CHAT_TEMPLATES["chatml"]
    chat = prompt_format_for({"chat": 3, "prompt_completion": 1}, DEFAULT_SEPARATOR, chatml)
    assert chat == PromptFormat("chat", template=chatml)
    assert chat.apply("hi") == apply_chat_template(chatml, [{"role": "user", "content": "hi"}], True)
    alpaca = prompt_format_for({"alpaca": 2}, DEFAULT_SEPARATOR, None)
    assert alpaca.apply("Add 2 and 3.") == ALPACA_PROMPT_NO_INPUT.format(instruction="Add 2 and 3.")
    assert apply_chat_template(alpaca.chat_template(), [{"role": "user", "content": "x"}]) == alpaca.apply("x")
    assert read_prompt_format(save_prompt_format(alpaca, tmp_path).parent) == alpaca
    (tmp_path / "prompt_format.json").write_text('{"kind": "poem"}')
    with pytest.raises(ValueError, match=r"prompt_format.json is unreadable .*kind='poem'"):
        read_prompt_format(tmp_path)


# --- 2. chat: --adapter, --template, Ctrl-C ---------------------------------------------------------------------
def test_chat_with_an_adapter_gives_the_adapter_answer(base, lora):
    done = groundup("chat", f"--model={base}", f"--adapter={lora / 'adapter_hf'}", f"--message={ASK.format('house')}",
                    "--max_new_tokens=10")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "maison\n"


def test_chat_template_from_a_jinja_file(base, lora, tmp_path, capsys):
    file = tmp_path / "sep.jinja"
    file.write_text("{% for m in messages %}{{ m['content'] }}{% if m['role'] == 'user' %}{{ '\\n\\n###\\n\\n' }}"
                    "{% endif %}{% endfor %}")  # the separator, written by hand
    args = ["chat", f"--model={base}", f"--adapter={lora / 'adapter'}", f"--message={ASK.format('dog')}",
            "--max_new_tokens=10", "--raw_prompt"]
    assert main(args) == 2  # the raw model has no chat template of its own
    assert "--template" in capsys.readouterr().err
    assert main([*args, f"--template={file}"]) == 0
    assert capsys.readouterr().out == "chien\n"


def test_chat_unknown_template_is_a_one_line_error_naming_the_flag(base, capsys):
    assert main(["chat", f"--model={base}", "--template=nosuch", "--message=hi"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--template 'nosuch'" in err and "chatml" in err


def interrupt_first_reply(monkeypatch) -> None:
    """Ctrl-C after the first piece of the first reply (as the terminal delivers it: inside the decoding loop)."""
    real, calls = chat_module.stream_text, []

    def stream(*args):
        calls.append(1)
        for i, piece in enumerate(real(*args)):
            if len(calls) == 1 and i == 1:
                raise KeyboardInterrupt
            yield piece

    monkeypatch.setattr(chat_module, "stream_text", stream)


def test_ctrl_c_stops_the_reply_then_quits_at_the_prompt(base, lora, monkeypatch, capsys):
    interrupt_first_reply(monkeypatch)
    typed = iter([ASK.format("cat"), ASK.format("dog")])

    def prompt(_: str) -> str:
        line = next(typed, None)
        if line is None:
            raise KeyboardInterrupt  # Ctrl-C at the prompt
        return line

    monkeypatch.setattr(sys, "stdin", type("Tty", (), {"isatty": staticmethod(lambda: True)})())
    monkeypatch.setattr(builtins, "input", prompt)
    assert main(["chat", f"--model={base}", f"--adapter={lora / 'adapter'}", "--max_new_tokens=10"]) == 0
    out = capsys.readouterr()
    assert out.out.endswith("\nc\nchien\n\n") and "Traceback" not in out.err  # cut, next answered, clean exit


def test_ctrl_c_in_a_one_message_chat_exits_130_without_a_traceback(base, lora, monkeypatch, capsys):
    interrupt_first_reply(monkeypatch)
    assert main(["chat", f"--model={base}", f"--adapter={lora / 'adapter'}", f"--message={ASK.format('cat')}",
                 "--max_new_tokens=10"]) == 130
    out = capsys.readouterr()
    assert out.out == "c\n" and "Traceback" not in out.err


# --- 3. embed: one row per line ---------------------------------------------------------------------------------
@pytest.mark.real_weights
def test_embed_keeps_blank_lines_as_rows_of_the_empty_string(tmp_path):
    lines = ["A man is eating food.", "", "The stock market fell sharply.", "Someone eats."]
    src, out = tmp_path / "lines.txt", tmp_path / "e.npy"
    src.write_text("\n".join(lines) + "\n")
    done = groundup("embed", f"--input={src}", f"--out={out}")
    assert done.returncode == 0, done.stderr
    rows = np.load(out)
    assert rows.shape == (4, 384)
    model, tok = load_pretrained("all-minilm-l6-v2")
    assert tok.encode("", add_special_tokens=True) == [tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")]
    for row, line in zip(rows, lines, strict=True):
        np.testing.assert_allclose(row, embed_texts(model, tok, [line])[0].numpy(), atol=1e-5)
    assert not np.allclose(rows[1], rows[0], atol=1e-3)
