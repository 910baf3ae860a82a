"""chat, convert and embed from the command line, on the real weights that ship in registry packages."""

import subprocess

import cli_helpers
import numpy as np
import pytest
import torch

from groundup.loading import load_pretrained, packaged_path

pytestmark = pytest.mark.real_weights


def groundup(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return cli_helpers.groundup(*args, stdin=stdin, timeout=600)


def test_chat_answers_paris_and_keeps_the_conversation():
    done = groundup("chat", "--max_new_tokens=40",
                    stdin="What is the capital of France?\nAnd what is the capital of Germany?\n")
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.strip().split("\n", 1)
    assert "Paris" in first and "Berlin" in second


def test_convert_gguf_to_hf_loads_in_transformers_with_identical_logits(tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "smollm2-hf"
    done = groundup("convert", "--model=smollm2-135m-instruct", f"--out={out}", "--to=hf", "--dtype=fp32")
    assert done.returncode == 0, done.stderr
    ours, tok = load_pretrained("smollm2-135m-instruct")
    theirs = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.tensor([tok.encode("To be, or not to be, that is the question.")])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), theirs(ids).logits, atol=1e-3, rtol=1e-4)


def test_embed_writes_normalised_embeddings_that_rank_paraphrases_first(tmp_path):
    lines = tmp_path / "lines.txt"
    lines.write_text("A man is eating food.\nA man is eating a piece of bread.\nThe stock market fell sharply.\n")
    out = tmp_path / "e.npy"
    done = groundup("embed", f"--input={lines}", f"--out={out}")
    assert done.returncode == 0, done.stderr
    e = np.load(out)
    assert e.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.3


def test_packaged_models_are_found_without_importing_their_packages():
    assert packaged_path("smollm2-135m-instruct").stat().st_size > 50_000_000
    assert (packaged_path("all-minilm-l6-v2") / "model.safetensors").is_file()
