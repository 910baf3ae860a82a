"""Fine-tuning through the library: every method lowers the loss and saves a result that reloads to the trained
model, merge == unmerged, exact resume of PEFT-wrapped runs, batched exact-match evaluation, clear errors."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.testing import assert_close

from groundup.apps.commands import generate_cli
from groundup.config import preset
from groundup.data import InstructData, InstructFormatError, load_instructions, make_arithmetic_splits
from groundup.finetune import (
    METHOD_LR,
    METHODS,
    DataOptions,
    FinetuneJob,
    MergeJob,
    PeftOptions,
    attach_adapter,
    evaluate_exact_match,
    finetune,
    greedy_completions,
    merge_adapter,
    merge_for_inference,
    prepare_model,
    train_config,
)
from groundup.jobs import GenerateJob
from groundup.jobs.train import VISION_METHODS
from groundup.loading import load_pretrained
from groundup.models import build_model
from groundup.peft import LoraLinear
from groundup.tokenizer import char_tokenizer
from groundup.train import TrainConfig, causal_lm, save_checkpoint

# Learning rates that move a tiny random model within a few dozen steps (not the methods' real defaults).
TEST_LR = {"full": 3e-3, "lora": 3e-2, "prompt": 1.0, "prefix": 3e-2, "ia3": 1e-1, "bitfit": 3e-2}



@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny GPT checkpoint with a char tokenizer; weights random at a scale where every method has work."""
    path = tmp_path_factory.mktemp("base") / "ckpt"
    tok = char_tokenizer(string.printable, special_tokens=["<|endoftext|>"])
    torch.manual_seed(0)
    model = build_model(preset("gpt-tiny", vocab_size=tok.vocab_size, n_layer=2, d_model=32, n_head=4, block_size=64))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            gain = "norm" in name and p.dim() == 1 and name.endswith("weight")
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.1 * noise if gain else 0.3 * noise / (p.shape[-1] ** 0.5 if p.dim() == 2 else 1.0))
    return save_checkpoint(path, model, tokenizer=tok)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("arith")
    make_arithmetic_splits(60, 10, seed=0, ops=("+",), max_digits=1, styles=("equation",), out_dir=out)
    return out


def job_for(base: Path, data: Path, out: Path, method: str, steps: int = 30, **train) -> FinetuneJob:
    cfg = dict(max_steps=steps, batch_size=8, lr=TEST_LR[method], warmup_steps=0, eval_every=0, progress=False,
               dtype="fp32", log_every=5, **train)
    return FinetuneJob(model=str(base), method=method, out_dir=str(out), train=TrainConfig(**cfg),
                       peft=PeftOptions(n_virtual_tokens=8, prefix_hidden=32, r=4),
                       data=DataOptions(path=str(data / "train.jsonl"), val_fraction=0.0))


def fixed_batch(tok, data: Path) -> dict[str, torch.Tensor]:
    examples, _ = load_instructions(data / "train.jsonl")
    return InstructData(examples, tok, 56, val_fraction=0.0).get_batch("train", 64, torch.Generator().manual_seed(0))


def loss_of(model, batch) -> float:
    with torch.no_grad():
        return causal_lm(model.eval(), batch)[0].item()


def reload(base: Path, result) -> torch.nn.Module:
    """The fine-tuned model rebuilt from the files the run wrote."""
    if result.model_dir is not None:
        return load_pretrained(result.model_dir)[0]
    return attach_adapter(load_pretrained(base)[0], result.adapter)


@pytest.mark.parametrize("method", [m for m in METHODS if m not in VISION_METHODS])  # vision: test_vlm_data
def test_each_method_lowers_the_loss_and_its_saved_result_reloads(base, data, tmp_path, method):
    result = finetune(job_for(base, data, tmp_path, method))
    assert result.step == 30 and len(result.losses) == 30
    plain, tok = load_pretrained(base)
    batch = fixed_batch(tok, data)
    before, after = loss_of(plain, batch), loss_of(reload(base, result), batch)
    margin = {"full": 1.0, "prompt": 0.02}.get(method, 0.2)  # a frozen random model leaves a soft prompt little
    assert after < before - margin, (method, before, after)
    files = {p.name for p in tmp_path.iterdir()}
    if method == "full":
        assert result.adapter is None and {"model", "ckpt"} <= files
    else:
        assert {p.name for p in result.adapter.iterdir()} == {"adapter_config.json", "adapter.safetensors",
                                                              "prompt_format.json"}
        hf = {"adapter_config.json", "adapter_model.safetensors", "prompt_format.json"}
        assert (result.adapter_hf is not None) == (method in ("lora", "ia3", "prompt", "prefix"))  # peft has no BitFit
        if result.adapter_hf is not None:
            assert {p.name for p in result.adapter_hf.iterdir()} == hf


def test_hf_peft_copy_gives_the_same_model_as_the_groundup_adapter(base, data, tmp_path):
    result = finetune(job_for(base, data, tmp_path, "lora", steps=5))
    plain, tok = load_pretrained(base)
    ours = attach_adapter(load_pretrained(base)[0], result.adapter)
    theirs = attach_adapter(plain, result.adapter_hf)
    ids = fixed_batch(tok, data)["input_ids"][:4]
    with torch.no_grad():
        assert_close(theirs(ids), ours(ids))


@pytest.mark.parametrize("method", ["lora", "ia3", "bitfit"])
def test_merged_checkpoint_equals_the_unmerged_adapter(base, data, tmp_path, method):
    result = finetune(job_for(base, data, tmp_path / "run", method, steps=5))
    merged_dir = merge_adapter(MergeJob(model=str(base), adapter=str(result.adapter), out=str(tmp_path / "merged"),
                                        dtype="fp32"))
    merged, tok = load_pretrained(merged_dir)
    unmerged = reload(base, result).eval()
    ids = fixed_batch(tok, data)["input_ids"][:4]
    with torch.no_grad():
        assert_close(merged(ids), unmerged(ids), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(merged(ids), load_pretrained(base)[0](ids))  # the adapter really changed it


def test_prompt_adapters_cannot_be_merged(base, data, tmp_path):
    result = finetune(job_for(base, data, tmp_path / "run", "prompt", steps=2))
    with pytest.raises(ValueError, match="cannot be merged"):
        merge_adapter(MergeJob(model=str(base), adapter=str(result.adapter), out=str(tmp_path / "merged")))


class Stop(KeyboardInterrupt):
    pass


@pytest.mark.parametrize("method", ["lora", "prompt", "prefix"])
def test_resume_after_a_stop_reproduces_the_uninterrupted_run(base, data, tmp_path, monkeypatch, method):
    n, k = 8, 4

    def job(out: str, **kw) -> FinetuneJob:
        j = job_for(base, data, tmp_path / out, method, steps=n, ckpt_every=k, **kw)
        j.peft.dropout = 0.2  # LoRA dropout draws from the global RNG, which the checkpoint restores
        return j

    full = finetune(job("full"))

    real = InstructData.get_batch
    calls = {"train": 0}

    def stopping(self, split, batch_size, generator):
        calls[split] = calls.get(split, 0) + 1
        if split == "train" and calls["train"] > k:
            raise Stop
        return real(self, split, batch_size, generator)

    monkeypatch.setattr(InstructData, "get_batch", stopping)
    with pytest.raises(Stop):
        finetune(job("stopped"))
    saved = load_file(str(tmp_path / "stopped" / "ckpt" / "model.safetensors"))
    wrapped_key = {"lora": "lora_A.default.weight", "prompt": "prompts.default.weight", "prefix": "prefixes.default."}
    assert any(wrapped_key[method] in key for key in saved)
    assert all(".default." in key for key in saved)  # only the adapter: the frozen base is rebuilt on resume
    monkeypatch.setattr(InstructData, "get_batch", real)

    torch.manual_seed(123)  # another global RNG state: the checkpoint's must win
    resumed = finetune(job("stopped", resume=True))
    assert resumed.losses == full.losses  # bitwise (fp32)
    a = load_file(str(full.adapter / "adapter.safetensors"))
    b = load_file(str(resumed.adapter / "adapter.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def test_greedy_batches_match_one_by_one_and_exact_match_counts(base, data):
    model, tok = load_pretrained(base)
    for method in ("lora", "prompt"):  # a swap and a wrapper
        model = prepare_model(load_pretrained(base)[0], method, PeftOptions(n_virtual_tokens=4), tok).eval()
        pairs = [(p, c) for p, c in InstructData(load_instructions(data / "test.jsonl")[0], tok, 56, 0.0)
                 .eval_examples("train")]
        prompts = [p for p, _ in pairs]
        batched = greedy_completions(model, tok, prompts, max_new_tokens=4, batch_size=16)
        single = [greedy_completions(model, tok, [p], max_new_tokens=4)[0] for p in prompts]
        assert batched == single
        half = [(p, y if i % 2 == 0 else y + "x") for i, (p, y) in enumerate(zip(prompts, batched, strict=True))]
        assert evaluate_exact_match(model, tok, half, max_new_tokens=4) == pytest.approx(0.5)
        room = 64 - (4 if method == "prompt" else 0) - max(len(tok.encode(p)) for p in prompts)
        long = greedy_completions(model, tok, prompts, max_new_tokens=500)  # stops at the context's end
        assert max(len(tok.encode(x)) for x in long) <= room


def test_learning_rate_defaults_per_method_and_out_dir(base, data, tmp_path):
    job = FinetuneJob(method="prompt", out_dir=str(tmp_path))
    cfg = train_config(job)
    assert cfg.lr == METHOD_LR["prompt"] and cfg.min_lr == pytest.approx(METHOD_LR["prompt"] / 10)
    assert cfg.out_dir == str(tmp_path)
    assert train_config(FinetuneJob(method="full", train=TrainConfig(lr=1e-5, min_lr=0.0))).lr == 1e-5
    with pytest.raises(ValueError, match="set out_dir instead"):
        train_config(FinetuneJob(train=TrainConfig(out_dir="elsewhere")))


def test_clear_errors(base, data, tmp_path):
    with pytest.raises(ValueError, match=r"method='dora' is unknown; use one of \['full', 'lora'"):
        FinetuneJob(method="dora")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1 + 1 =", "completion": "2"}\n{"prompt": "2 + 2 =", "completion": \n')
    job = job_for(base, data, tmp_path / "run", "lora", steps=1)
    job.data.path = str(bad)
    with pytest.raises(InstructFormatError, match="line 2: not valid JSON"):
        finetune(job)
    job.data.path = ""
    with pytest.raises(ValueError, match="data.path is missing"):
        finetune(job)
    job = job_for(base, data, tmp_path / "run2", "prompt", steps=1)
    job.data.block_size = 60  # 64 positions, 8 of them virtual tokens
    with pytest.raises(ValueError, match="8 of them virtual tokens; use 1..56"):
        finetune(job)
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors"):
        attach_adapter(load_pretrained(base)[0], tmp_path)


def test_merge_for_inference_folds_what_it_can(base, data, tmp_path):
    plain, tok = load_pretrained(base)
    ids = fixed_batch(tok, data)["input_ids"][:2]
    model = prepare_model(load_pretrained(base)[0], "lora", PeftOptions(r=2))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
        expected = model(ids)
        merged = merge_for_inference(model)
        assert not hasattr(merged, "peft_state") and not any(isinstance(m, LoraLinear) for m in merged.modules())
        assert_close(merged(ids), expected, atol=1e-5, rtol=1e-5)
        tied = prepare_model(load_pretrained(base)[0], "lora", PeftOptions(r=2, target_modules=["lm_head"]))
        assert merge_for_inference(tied) is tied and hasattr(tied, "peft_state")  # tied to the embedding: unmerged
        assert_close(tied(ids), plain(ids))


@pytest.mark.parametrize("method", ["lora", "prompt"])
def test_generate_cli_with_an_adapter_in_bf16(base, data, tmp_path, capsys, method):
    result = finetune(job_for(base, data, tmp_path, method, steps=2))
    capsys.readouterr()
    generate_cli(GenerateJob(model=str(base), adapter=str(result.adapter), prompt="3 + 4 =", temperature=0.0,
                             max_new_tokens=4, dtype="bf16"))
    assert capsys.readouterr().out.startswith("3 + 4 =")


def test_resume_with_other_peft_options_is_refused_by_name(base, data, tmp_path):
    finetune(job_for(base, data, tmp_path, "lora", steps=2))
    again = job_for(base, data, tmp_path, "lora", steps=4, resume=True)
    again.peft.r = 8
    with pytest.raises(ValueError, match=r"other settings \(peft: checkpoint .*'r': 4.* vs now .*'r': 8"):
        finetune(again)
    with pytest.raises(FileExistsError, match="resume=True"):
        finetune(job_for(base, data, tmp_path, "prompt", steps=2))
    assert '"method": "lora"' in (tmp_path / "finetune_job.json").read_text()  # the refused run left it alone
    assert finetune(job_for(base, data, tmp_path, "lora", steps=4, resume=True)).step == 4
