"""QLoRA: LoRA over a quantized base (gradients, training, merge), and the quantize / finetune --quantize CLI."""

from __future__ import annotations

import csv
import json
import string

import pytest
import torch

from groundup import build_model, load_pretrained, quantize
from groundup.cli import main
from groundup.config import preset
from groundup.data import make_arithmetic_splits
from groundup.finetune import FinetuneJob, attach_adapter
from groundup.peft import LoraConfig, PeftError, inject, merge, trainable_parameters
from groundup.quant import QuantLinear, dequantize
from groundup.tokenizer import char_tokenizer
from groundup.train import save_checkpoint

TARGETS = ["q_proj", "v_proj", "down_proj"]



def tiny(vocab: int = 65) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(preset("llama-tiny", vocab_size=vocab, n_layer=2, d_model=64, n_head=4, n_kv_head=2, d_ff=128,
                              block_size=64))


@pytest.mark.parametrize("fmt", ["nf4", "int4"])
def test_only_adapters_get_gradients_and_a_few_steps_lower_the_loss(fmt):
    model = tiny()
    quantize(model, fmt)
    model = inject(model, LoraConfig(r=4, alpha=8, target_modules=TARGETS))
    assert all(isinstance(m.base_layer, QuantLinear) for n, m in model.named_modules() if n.endswith("q_proj"))
    ids = torch.randint(0, 65, (4, 24), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(trainable_parameters(model).values(), lr=1e-2)
    losses = []
    for _ in range(8):
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the training loop's default: bf16 autocast
            logits = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, 65), ids[:, 1:].reshape(-1))
        loss.backward()
        with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
        assert with_grad == set(trainable_parameters(model))  # every adapter, and nothing else
        assert all(n.split(".")[-3] in ("lora_A", "lora_B") for n in with_grad)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05
    assert len(trainable_parameters(model)) == 2 * len(TARGETS) * 2


def test_merge_on_a_quantized_base_is_refused_until_dequantized():
    model = tiny()
    quantize(model, "nf4")
    model = inject(model, LoraConfig(r=4, target_modules=TARGETS))
    with torch.no_grad():
        for p in trainable_parameters(model).values():
            p.normal_(0, 0.1)  # a non-zero adapter, so merging changes the weights
    with pytest.raises(PeftError, match="cannot merge LoRA into QuantLinear.*quantized"):
        merge(model)
    ids = torch.randint(0, 65, (1, 10))
    with torch.no_grad():
        unmerged = model(ids)
        dequantize(model)  # the documented way: float weights (quantization error kept), then merge
        merge(model)
        assert torch.allclose(model(ids), unmerged, atol=1e-4)


# --- CLI -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base(tmp_path_factory):
    tok = char_tokenizer(string.printable, special_tokens=["<|endoftext|>"])
    model = tiny(tok.vocab_size)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)  # livelier than the 0.02-std init, so a few steps move the loss
    return save_checkpoint(tmp_path_factory.mktemp("base") / "ckpt", model, tokenizer=tok)


def test_quantize_cli_writes_a_checkpoint_equal_to_the_library_result(tmp_path, base, capsys):
    assert main(["quantize", f"--model={base}", "--to=int4", f"--out={tmp_path / 'q'}", "--dtype=fp32"]) == 0
    assert "int4: 14 linear layers" in capsys.readouterr().out
    loaded, tok = load_pretrained(tmp_path / "q")
    expected, _ = load_pretrained(base)
    quantize(expected, "int4", head="int8")  # the command's default head
    ids = torch.tensor([tok.encode("ROMEO: 3 + 4")])
    with torch.no_grad():
        assert torch.equal(loaded(ids), expected(ids))
    assert main(["quantize", f"--model={base}", "--to=int8", "--head=null", f"--out={tmp_path / 'plain'}"]) == 0
    assert type(load_pretrained(tmp_path / "plain")[0].lm_head) is torch.nn.Linear
    assert main(["quantize", f"--model={base}", "--to=fp8", f"--out={tmp_path / 'bad'}"]) == 2
    assert "format 'fp8' is unknown; use one of ['int8', 'int4', 'nf4']" in capsys.readouterr().err


def test_finetune_quantize_nf4_lora_trains_and_saves_a_peft_adapter(tmp_path, base, capsys):
    make_arithmetic_splits(60, 10, seed=0, ops=("+",), max_digits=1, styles=("equation",), out_dir=tmp_path / "d")
    argv = ["finetune", f"--model={base}", "--quantize=nf4", "--method=lora", f"--data.path={tmp_path}/d/train.jsonl",
            f"--out_dir={tmp_path / 'run'}", "--train.max_steps=16", "--train.batch_size=8", "--train.lr=3e-2",
            "--train.warmup_steps=0", "--train.eval_every=0", "--train.progress=false", "--train.log_every=4",
            "--peft.r=4", "--data.val_fraction=0"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "quantized the base: nf4" in out
    run = tmp_path / "run"
    assert json.loads((run / "adapter_hf" / "adapter_config.json").read_text())["peft_type"] == "LORA"
    losses = [float(r["loss"]) for r in csv.DictReader((run / "metrics.csv").open())]
    assert losses[-1] < losses[0] - 0.1
    model, _ = load_pretrained(base, torch.bfloat16)
    quantize(model, "nf4")
    tuned = attach_adapter(model, run / "adapter_hf")  # the PEFT layout loads back onto the NF4 base
    assert sum(isinstance(m, QuantLinear) for m in tuned.modules()) == 14
    assert json.loads((run / "finetune_job.json").read_text())["quantize"] == "nf4"


def test_finetune_refuses_full_over_a_quantized_base(base):
    with pytest.raises(ValueError, match="method='full' has nothing to train; use --method lora"):
        FinetuneJob(model=str(base), method="full", quantize="nf4")
    with pytest.raises(ValueError, match=r"quantize='q3' is unknown; use one of \['int8', 'int4', 'nf4'\]"):
        FinetuneJob(model=str(base), quantize="q3")
