"""Writing models out: `groundup convert` and `groundup merge` from the command line (a real subprocess, as a user
meets them), with transformers as the oracle wherever a written folder must load there.

    modes     folders and files get the umask's modes (0755 / 0644 under 022), not mkdtemp's / safetensors' 0600s
    config    floats stay the decimals they were (a GGUF's float32 1e-05 is written as 1e-05)
    pooler    a BertModel's pooler survives import and export (MiniLM round trip: no missing keys, same output)
    quantized convert refuses a quantized checkpoint for --to hf, naming --dequantize, and converts it with it
    dtype     --dtype auto|bf16|fp32 is the dtype of the written weights (convert and merge)
    --out     an existing, non-empty --out is replaced only with --overwrite (convert and merge)
    tokenizer a Hugging Face folder without tokenizer files loads as (model, None), as a checkpoint does, and the
              commands that need a tokenizer say so in one line naming the folder
"""

from __future__ import annotations

import json
import os
import stat
import string
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from hf_helpers import randomize_
from safetensors import safe_open
from torch.testing import assert_close

from groundup import runtime
from groundup.config import preset
from groundup.interop import load_hf, save_hf
from groundup.loading import load_pretrained, packaged_path
from groundup.models import DecoderLM, Encoder
from groundup.peft import LoraConfig, inject, merge_and_unload, save_adapter
from groundup.quant import QuantLinear, dequantize
from groundup.tokenizer import char_tokenizer
from groundup.train import save_checkpoint

transformers.logging.set_verbosity_error()


def groundup(*args: str, umask: int = 0o022) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "groundup", *args], capture_output=True, text=True, env=env,
                          timeout=600, preexec_fn=lambda: os.umask(umask))


def refused(done: subprocess.CompletedProcess, *words: str) -> str:
    """The one-line error of a refused command (exit 2, no traceback), checked to contain `words`."""
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("groundup ") and all(w in line for w in words), done.stderr
    return line


def hf_load(path: Path, auto=transformers.AutoModelForCausalLM, **kwargs):
    """transformers' from_pretrained, asserting every tensor came from the file (none newly initialised)."""
    model, info = auto.from_pretrained(path, output_loading_info=True, **kwargs)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def file_dtypes(path: Path) -> set[torch.dtype]:
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        return {f.get_tensor(k).dtype for k in f.keys()}


def ids(vocab: int, n: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (2, n), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    """A tiny Llama checkpoint (tied embeddings, random weights everywhere) with a tokenizer."""
    tok = char_tokenizer(string.printable, special_tokens=["<|endoftext|>"])
    cfg = preset("llama-tiny", vocab_size=tok.vocab_size, n_layer=2, d_model=64, n_head=4, n_kv_head=2, d_ff=128,
                 block_size=64)
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("llama") / "ckpt", randomize_(DecoderLM(cfg)), tokenizer=tok)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, llama) -> Path:
    """A LoRA adapter on `llama` whose B matrices are non-zero, so merging it changes the weights."""
    model = inject(load_pretrained(llama)[0], LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return save_adapter(model, tmp_path_factory.mktemp("adapter") / "lora")


# --- 1. modes and config floats ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("to", "umask"), [("hf", 0o022), ("groundup", 0o027)])
def test_convert_gives_the_folder_and_its_files_the_umask_modes(llama, tmp_path, to, umask):
    out = tmp_path / "out"
    done = groundup("convert", f"--model={llama}", f"--out={out}", f"--to={to}", "--dtype=fp32", umask=umask)
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask  # 0755 under 022, 0750 under 027
    files = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert "model.safetensors" in files and "config.json" in files and "tokenizer.json" in files
    assert files == dict.fromkeys(files, 0o666 & ~umask)  # 0644 / 0640: safetensors' own 0600 is not kept
    assert not any(p.name.startswith(f".{out.name}.") for p in tmp_path.iterdir())  # no temp folder left behind


def test_convert_writes_config_floats_as_the_decimals_they_were(tmp_path):
    """A GGUF stores rms_norm_eps as float32; the written configs hold 1e-05, not 9.999999747378752e-06."""
    from test_gguf import tiny_model, write_gguf

    model = tiny_model(tied=True)
    assert model.config.norm_eps == 1e-5 and float(torch.tensor(1e-5).item()) != 1e-5  # float32-inexact
    gguf = write_gguf(tmp_path / "tiny.gguf", model)
    for to in ("hf", "groundup"):
        done = groundup("convert", f"--model={gguf}", f"--out={tmp_path / to}", f"--to={to}", "--dtype=fp32")
        assert done.returncode == 0, done.stderr
    text = (tmp_path / "hf" / "config.json").read_text()
    assert '"rms_norm_eps": 1e-05' in text and '"rope_theta": 10000.0' in text
    assert transformers.AutoConfig.from_pretrained(tmp_path / "hf").rms_norm_eps == 1e-5
    assert json.loads((tmp_path / "groundup" / "config.json").read_text())["norm_eps"] == 1e-5


# --- 2. the BERT pooler -------------------------------------------------------------------------------------------
def tiny_bert_hf() -> transformers.BertModel:
    cfg = transformers.BertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=48, max_position_embeddings=32, hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    return randomize_(transformers.BertModel(cfg))


def test_bert_model_pooler_is_imported_and_exported(tmp_path):
    hf = tiny_bert_hf()
    hf.save_pretrained(tmp_path / "src")
    ours, _ = load_hf(tmp_path / "src", with_tokenizer=False)
    assert isinstance(ours, Encoder) and ours.pooler is not None
    save_hf(ours, None, tmp_path / "out")
    back = hf_load(tmp_path / "out", transformers.AutoModel, dtype=torch.float32)
    x = ids(96)
    with torch.no_grad():
        ref = hf(input_ids=x).pooler_output
        assert_close(ours.pooler(ours(x)), ref, atol=1e-5, rtol=1e-4)
        assert_close(back(input_ids=x).pooler_output, ref, atol=1e-5, rtol=1e-4)


@pytest.mark.real_weights
def test_minilm_round_trip_through_a_checkpoint_loads_in_transformers_with_its_pooler(tmp_path):
    """all-MiniLM-L6-v2 -> groundup checkpoint -> Hugging Face folder, both by the CLI: every tensor is there and the
    pooler output equals transformers' on the packaged original."""
    ckpt, out = tmp_path / "minilm-ckpt", tmp_path / "minilm-hf"
    done = groundup("convert", "--model=all-minilm-l6-v2", f"--out={ckpt}", "--to=groundup", "--dtype=fp32")
    assert done.returncode == 0, done.stderr
    ours, tok = load_pretrained(ckpt)
    assert isinstance(ours, Encoder) and ours.pooler is not None and tok is not None
    done = groundup("convert", f"--model={ckpt}", f"--out={out}", "--to=hf", "--dtype=fp32")
    assert done.returncode == 0, done.stderr
    exported = hf_load(out, transformers.AutoModel, dtype=torch.float32)
    original = transformers.AutoModel.from_pretrained(packaged_path("all-minilm-l6-v2"), dtype=torch.float32).eval()
    x = torch.tensor([tok.encode("A man is eating food.", add_special_tokens=True)])
    with torch.no_grad():
        ref = original(input_ids=x)
        got = exported(input_ids=x)
        assert_close(got.last_hidden_state, ref.last_hidden_state, atol=1e-5, rtol=1e-4)
        assert_close(got.pooler_output, ref.pooler_output, atol=1e-5, rtol=1e-4)
        assert_close(ours.pooler(ours(x)), ref.pooler_output, atol=1e-5, rtol=1e-4)


# --- 3. quantized checkpoints -------------------------------------------------------------------------------------
def test_convert_refuses_a_quantized_checkpoint_naming_dequantize_and_dequantizes_with_it(llama, tmp_path):
    q, out = tmp_path / "q", tmp_path / "q-hf"
    done = groundup("quantize", f"--model={llama}", "--to=int8", f"--out={q}", "--dtype=fp32")  # head: int8 copy
    assert done.returncode == 0, done.stderr
    refused(groundup("convert", f"--model={q}", f"--out={out}", "--to=hf"), "quantized (int8)", "--dequantize")
    assert not out.exists()
    done = groundup("convert", f"--model={q}", f"--out={out}", "--to=hf", "--dequantize", "--dtype=fp32")
    assert done.returncode == 0, done.stderr
    theirs = hf_load(out, dtype=torch.float32)
    assert theirs.config.tie_word_embeddings  # the head's int8 copy went back to the tie it was made from
    ours = dequantize(load_pretrained(q)[0])
    assert not any(isinstance(m, QuantLinear) for m in ours.modules())
    x = ids(ours.config.vocab_size)
    with torch.no_grad():
        assert_close(theirs(x).logits, ours(x), atol=1e-5, rtol=1e-4)
        assert not torch.allclose(ours(x), load_pretrained(llama)[0](x), atol=1e-5)  # int8's error stays
    done = groundup("convert", f"--model={q}", f"--out={tmp_path / 'q-float'}", "--to=groundup", "--dequantize",
                    "--dtype=fp32")
    assert done.returncode == 0, done.stderr
    plain = load_pretrained(tmp_path / "q-float")[0]
    assert not any(isinstance(m, QuantLinear) for m in plain.modules()) and "quantization" not in plain.config.extra
    with torch.no_grad():
        assert_close(plain(x), ours(x), atol=1e-6, rtol=1e-6)


# --- 4. --dtype and --overwrite -----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["bf16", "fp32", "auto"])
def test_convert_writes_the_dtype_asked_for(llama, tmp_path, dtype):
    out = tmp_path / "hf"
    done = groundup("convert", f"--model={llama}", f"--out={out}", "--to=hf", f"--dtype={dtype}")
    assert done.returncode == 0, done.stderr
    want = runtime.DTYPES[runtime.resolve_dtype(dtype, "cpu", "infer")]  # auto: what inference here runs fastest in
    assert file_dtypes(out) == {want}
    theirs = hf_load(out)  # transformers' default dtype follows the config's torch_dtype
    assert theirs.dtype == want
    ours = load_pretrained(llama)[0].to(want)
    x = ids(ours.config.vocab_size)
    with torch.no_grad():
        assert_close(theirs(x).logits.float(), ours(x).float(), atol=1e-5 if want == torch.float32 else 2e-2,
                     rtol=1e-4 if want == torch.float32 else 2e-2)


def test_merge_writes_the_dtype_asked_for_and_replaces_out_only_with_overwrite(llama, adapter, tmp_path):
    out = tmp_path / "merged"
    done = groundup("merge", f"--model={llama}", f"--adapter={adapter}", f"--out={out}", "--dtype=bf16")
    assert done.returncode == 0, done.stderr
    assert file_dtypes(out) == {torch.bfloat16}
    before = (out / "model.safetensors").read_bytes()
    refused(groundup("merge", f"--model={llama}", f"--adapter={adapter}", f"--out={out}", "--dtype=fp32"),
            f"--out={out}", "--overwrite")
    assert (out / "model.safetensors").read_bytes() == before  # untouched
    done = groundup("merge", f"--model={llama}", f"--adapter={adapter}", f"--out={out}", "--dtype=fp32",
                    "--overwrite", "--to=hf")
    assert done.returncode == 0, done.stderr
    theirs = hf_load(out, dtype=torch.float32)
    from groundup.finetune import attach_adapter

    merged = merge_and_unload(attach_adapter(load_pretrained(llama)[0], adapter))
    x = ids(merged.config.vocab_size)
    with torch.no_grad():
        assert_close(theirs(x).logits, merged(x), atol=1e-5, rtol=1e-4)
        assert not torch.allclose(merged(x), load_pretrained(llama)[0](x), atol=1e-4)  # the adapter changed it


def test_convert_replaces_out_only_with_overwrite(llama, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    refused(groundup("convert", f"--model={llama}", f"--out={out}", "--to=hf"), f"--out={out}", "--overwrite")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    done = groundup("convert", f"--model={llama}", f"--out={out}", "--to=hf", "--dtype=fp32", "--overwrite")
    assert done.returncode == 0, done.stderr
    assert (out / "model.safetensors").is_file() and not (out / "notes.txt").exists()
    empty = tmp_path / "empty"
    empty.mkdir()  # an empty folder (e.g. from mktemp -d) is no one's work: written without --overwrite
    assert groundup("convert", f"--model={llama}", f"--out={empty}", "--to=groundup").returncode == 0


# --- 5. folders without a tokenizer -------------------------------------------------------------------------------
def test_a_folder_without_tokenizer_loads_as_model_and_none_and_generate_names_it(llama, tmp_path):
    model = load_pretrained(llama)[0]
    hf_dir, ckpt = tmp_path / "hf-no-tok", tmp_path / "ckpt-no-tok"
    save_hf(model, None, hf_dir)
    save_checkpoint(ckpt, model)
    x = ids(model.config.vocab_size)
    for folder in (hf_dir, ckpt):
        loaded, tok = load_pretrained(folder)
        assert tok is None
        with torch.no_grad():
            assert_close(loaded(x), model(x), atol=1e-5, rtol=1e-4)
    for folder in (hf_dir, ckpt):
        refused(groundup("generate", f"--model={folder}", "--prompt=hi", "--max_new_tokens=2"),
                "generate needs a tokenizer", str(folder), "tokenizer.json")


def test_embed_on_a_bert_folder_without_tokenizer_names_it(tmp_path):
    tiny_bert_hf().save_pretrained(tmp_path / "bert")
    (tmp_path / "lines.txt").write_text("one\ntwo\n")
    refused(groundup("embed", f"--model={tmp_path / 'bert'}", f"--input={tmp_path / 'lines.txt'}",
                     f"--out={tmp_path / 'e.npy'}"), "embed needs a tokenizer", str(tmp_path / "bert"))
