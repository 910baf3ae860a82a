"""The training loop and its parts: objectives, optimizer groups, schedule, checkpoints, metrics, resume."""

from __future__ import annotations

import importlib.util
import itertools
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from groundup.config import preset
from groundup.models import build_model
from groundup.train import (
    CheckpointError,
    TrainConfig,
    TrainConfigError,
    build_optimizer,
    causal_lm,
    load_checkpoint,
    lr_at,
    mlm_nsp,
    param_groups,
    read_metrics,
    save_checkpoint,
    seq2seq,
    train,
)
from groundup.train import checkpoint as ckpt_mod

_spec = importlib.util.spec_from_file_location("ddp_worker", Path(__file__).resolve().parent / "ddp_worker.py")
W = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(W)



def cfg_for(tmp_path: Path, **overrides) -> TrainConfig:
    base = dict(
        out_dir=str(tmp_path / "run"), max_steps=6, batch_size=4, grad_accum=1, lr=3e-3, min_lr=3e-4,
        warmup_steps=2, eval_every=0, eval_batches=2, ckpt_every=0, dtype="fp32", progress=False, log_every=2,
    )
    return TrainConfig(**{**base, **overrides})


class OneBatch:
    """Always the same batch: a model that learns must drive its loss toward zero."""

    def __init__(self) -> None:
        self.batch = W.LMStream().get_batch("train", 4, torch.Generator().manual_seed(0))

    def get_batch(self, split: str, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {k: v[:batch_size].clone() for k, v in self.batch.items()}


class CrashAfter:
    """Wraps data and raises on the (n+1)-th training batch, like a preempted job."""

    def __init__(self, data, n: int) -> None:
        self.data, self.n, self.train_calls = data, n, 0

    def get_batch(self, split: str, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        if split == "train":
            self.train_calls += 1
            if self.train_calls > self.n:
                raise KeyboardInterrupt("simulated crash")
        return self.data.get_batch(split, batch_size, generator)


# ---------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (dict(batch_size=6, grad_accum=4), "batch_size"),
        (dict(dtype="fp8"), "dtype"),
        (dict(lr=-1.0), "lr"),
        (dict(min_lr=1.0, lr=0.1), "min_lr"),
        (dict(beta2=1.0), "beta2"),
        (dict(max_steps=0), "max_steps"),
        (dict(eval_every=5, eval_batches=0), "eval_batches"),
    ],
)
def test_train_config_errors_name_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(TrainConfigError, match=rf"TrainConfig\.{field}"):
        TrainConfig(**overrides)


def test_fp16_is_refused_on_cpu() -> None:
    if torch.cuda.is_available():
        TrainConfig(dtype="fp16")  # allowed on CUDA
        with pytest.raises(TrainConfigError, match="fp16"):
            TrainConfig(dtype="fp16", device="cpu")
    else:
        with pytest.raises(TrainConfigError, match="fp16.*CUDA"):
            TrainConfig(dtype="fp16")
    assert TrainConfig().dtype == "auto"  # resolved per machine: tests/test_runtime.py


# ---------------------------------------------------------------------------------------------- objectives
def test_objectives_ignore_minus_100_and_match_plain_cross_entropy() -> None:
    torch.manual_seed(0)
    lm = W.tiny_lm()
    batch = W.LMStream().get_batch("train", 3, torch.Generator().manual_seed(1))
    batch["labels"][0, :4] = -100
    loss, metrics = causal_lm(lm, batch)
    logits = lm(batch["input_ids"])
    keep = batch["labels"] != -100
    ref = F.cross_entropy(logits[keep], batch["labels"][keep])
    torch.testing.assert_close(loss, ref)
    assert metrics["loss"].requires_grad is False

    bert = W.tiny_bert()
    mb = W.MLMRandom().get_batch("train", 4, torch.Generator().manual_seed(2))
    loss, metrics = mlm_nsp(bert, mb)
    torch.testing.assert_close(loss, metrics["mlm_loss"] + metrics["nsp_loss"])

    s2s = build_model(preset("transformer-tiny", vocab_size=W.VOCAB, n_layer=1, d_model=32, d_ff=64))
    sb = {"src_ids": batch["input_ids"], "src_mask": torch.ones_like(batch["input_ids"], dtype=torch.bool),
          "tgt_in": batch["input_ids"], "labels": batch["labels"]}
    loss, _ = seq2seq(s2s, sb)
    assert loss.isfinite()
    with pytest.raises(KeyError, match="nsp_labels"):
        mlm_nsp(bert, {k: v for k, v in mb.items() if k != "nsp_labels"})


def test_grad_accum_gives_the_same_losses_with_uneven_target_counts(tmp_path: Path) -> None:
    # MLM rows hold different numbers of masked targets: the loss must be normalized by the
    # global count, not averaged per micro-batch, for accumulation to be exact.
    runs = [
        train(W.tiny_bert(), "mlm_nsp", W.MLMRandom(), cfg_for(tmp_path / f"ga{ga}", grad_accum=ga, max_steps=3))
        for ga in (1, 4)
    ]
    torch.testing.assert_close(torch.tensor(runs[0].losses), torch.tensor(runs[1].losses), rtol=1e-5, atol=1e-5)


def test_seq2seq_trains_through_the_same_loop(tmp_path: Path) -> None:
    class Copy:  # target = source: learnable
        def get_batch(self, split, batch_size, generator):
            src = torch.randint(1, W.VOCAB, (batch_size, 6), generator=generator)
            tgt_in = torch.cat([torch.zeros(batch_size, 1, dtype=torch.long), src[:, :-1]], 1)
            return {"src_ids": src, "src_mask": torch.ones_like(src, dtype=torch.bool), "tgt_in": tgt_in,
                    "labels": src}

    torch.manual_seed(0)
    model = build_model(preset("transformer-tiny", vocab_size=W.VOCAB, n_layer=1, d_model=32, d_ff=64))
    result = train(model, "seq2seq", Copy(), cfg_for(tmp_path, max_steps=4, eval_every=4))
    assert len(result.losses) == 4 and all(math.isfinite(x) for x in result.losses)
    assert result.val_loss is not None


# ---------------------------------------------------------------------------------------------- optimizer
def test_weight_decay_only_on_matrices_and_embeddings() -> None:
    model = W.tiny_lm()
    model.blocks[0].mlp.requires_grad_(False)  # frozen parameters stay out of the optimizer
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decay_names = {names[id(p)] for p in decay["params"]}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert decay_names | no_decay_names == trainable and not decay_names & no_decay_names
    assert all(dict(model.named_parameters())[n].dim() >= 2 for n in decay_names)
    assert all(dict(model.named_parameters())[n].dim() < 2 for n in no_decay_names)
    assert "embed.tok_emb.weight" in decay_names  # the tied embedding / lm_head, once
    assert any(n.endswith("bias") for n in no_decay_names) and any("norm" in n for n in no_decay_names)

    # Behaviour: with zero gradients Adam's update is 0, so only decayed tensors shrink, by lr * wd.
    opt = build_optimizer(model, cfg_for(Path("."), lr=0.5, weight_decay=0.1))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in decay["params"] + no_decay["params"]:
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_parameters():
        expected = before[n] * (1 - 0.5 * 0.1) if n in decay_names else before[n]
        torch.testing.assert_close(p.detach(), expected)


def test_schedule_warmup_then_cosine() -> None:
    cfg = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)
    assert lr_at(0, cfg) == pytest.approx(0.1)  # linear warmup: lr * (step + 1) / warmup
    assert lr_at(4, cfg) == pytest.approx(0.5)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)  # cosine starts at the peak
    assert lr_at(60, cfg) == pytest.approx(0.55)  # midpoint: (lr + min_lr) / 2
    assert lr_at(35, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_at(110, cfg) == pytest.approx(0.1) and lr_at(500, cfg) == pytest.approx(0.1)
    values = [lr_at(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(values))


# ---------------------------------------------------------------------------------------------- training
def test_tiny_model_overfits_one_batch_in_bf16(tmp_path: Path) -> None:
    cfg = cfg_for(tmp_path, max_steps=80, lr=1e-2, min_lr=1e-3, warmup_steps=5, dtype="bf16", log_every=20)
    result = train(W.tiny_lm(), "causal_lm", OneBatch(), cfg)
    assert result.losses[0] > 3.0  # ~ln(32) = 3.47 at init
    assert result.train_loss < 0.3, f"did not overfit one batch: {result.losses[::10]}"


def test_exact_resume_reproduces_the_uninterrupted_run(tmp_path: Path) -> None:
    n, k = 8, 4
    common = dict(max_steps=n, grad_accum=2, ckpt_every=k)
    torch.manual_seed(0)
    full = train(W.tiny_lm(dropout=0.1), "causal_lm", W.LMStream(), cfg_for(tmp_path / "full", **common))

    # Same run with evals (they must not disturb training randomness), crashing after step k.
    cfg = cfg_for(tmp_path / "crash", eval_every=3, **common)
    crashing = CrashAfter(W.LMStream(), k)
    with pytest.raises(KeyboardInterrupt):
        train(W.tiny_lm(dropout=0.1), "causal_lm", crashing, cfg)
    with pytest.raises(FileExistsError, match="resume=True"):
        train(W.tiny_lm(dropout=0.1), "causal_lm", W.LMStream(), cfg)

    resumed_data = W.LMStream()
    torch.manual_seed(123)  # a different global RNG state: the checkpoint's must win
    resumed = train(W.tiny_lm(dropout=0.1, seed=99), "causal_lm", resumed_data, cfg_for(
        tmp_path / "crash", eval_every=3, resume=True, **common))
    assert resumed_data.calls["train"] == n - k  # it really continued from step k
    assert resumed.step == n
    assert resumed.losses == full.losses  # bitwise, fp32, with dropout
    rows = read_metrics(resumed.metrics_csv)
    assert [r["step"] for r in rows] == [2, 3, 4, 6, 8]  # crashed run's rows kept up to step k, no duplicates


def test_metrics_csv_and_png(tmp_path: Path) -> None:
    cfg = cfg_for(tmp_path, max_steps=6, log_every=2, eval_every=3)
    result = train(W.tiny_lm(), "causal_lm", W.LMStream(), cfg)
    rows = read_metrics(result.metrics_csv)
    assert [r["step"] for r in rows] == [2, 3, 4, 6]
    l = result.losses
    expected_loss = [(l[0] + l[1]) / 2, l[2], l[3], (l[4] + l[5]) / 2]  # mean since the previous row
    assert [r["loss"] for r in rows] == pytest.approx(expected_loss)
    assert [r["lr"] for r in rows] == pytest.approx([lr_at(s - 1, cfg) for s in (2, 3, 4, 6)])
    assert all(r["tokens_per_s"] > 0 for r in rows)
    assert [r["val_loss"] is not None for r in rows] == [False, True, False, True]
    for r in rows:
        if r["val_loss"] is not None:
            assert r["val_ppl"] == pytest.approx(math.exp(r["val_loss"]))
    assert result.val_loss == pytest.approx(rows[-1]["val_loss"])
    assert result.loss_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {p.name for p in result.checkpoint.iterdir()} == {"model.safetensors", "config.json", "optimizer.pt",
                                                             "state.json"}


# ---------------------------------------------------------------------------------------------- checkpoints
class FakeTokenizer:
    def save(self, directory: str) -> None:
        Path(directory, "tokenizer.json").write_text('{"model": "fake"}')


def test_checkpoint_round_trip_keeps_tied_weights(tmp_path: Path) -> None:
    model = W.tiny_lm()
    opt = build_optimizer(model, cfg_for(tmp_path))
    model(torch.zeros(1, 4, dtype=torch.long)).sum().backward()
    opt.step()
    path = save_checkpoint(tmp_path / "ck", model, opt, {"step": 3}, tokenizer=FakeTokenizer())
    assert (path / "tokenizer.json").is_file()

    fresh = W.tiny_lm(seed=5)
    fresh_opt = build_optimizer(fresh, cfg_for(tmp_path))
    ck = load_checkpoint(path, fresh, fresh_opt)
    assert ck.state == {"step": 3}
    for (n, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=n)
    assert fresh.lm_head.weight is fresh.embed.tok_emb.weight  # still tied after load
    assert fresh_opt.state_dict()["state"].keys() == opt.state_dict()["state"].keys()

    rebuilt = load_checkpoint(path).model  # no model given: built from config.json
    assert rebuilt.config.to_dict() == model.config.to_dict()
    assert rebuilt.lm_head.weight is rebuilt.embed.tok_emb.weight


def test_mismatched_architecture_and_missing_files_are_clear_errors(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "ck", W.tiny_lm(), None, {"step": 1})
    other = build_model(preset("gpt-tiny", vocab_size=W.VOCAB, block_size=16, n_layer=3, n_head=2, d_model=48))
    with pytest.raises(CheckpointError, match=r"d_model: checkpoint=32 model=48.*n_layer: checkpoint=2 model=3"):
        load_checkpoint(path, other)
    load_checkpoint(path, W.tiny_lm(dropout=0.2))  # dropout is not architecture
    with pytest.raises(FileNotFoundError, match="optimizer.pt"):
        load_checkpoint(path, W.tiny_lm(), build_optimizer(W.tiny_lm(), cfg_for(tmp_path)))
    (path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_checkpoint(path, W.tiny_lm())
    with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
        load_checkpoint(tmp_path / "nowhere", W.tiny_lm())


def test_resume_from_a_checkpoint_without_run_state_is_refused(tmp_path: Path) -> None:
    cfg = cfg_for(tmp_path, resume=True)
    model = W.tiny_lm()
    save_checkpoint(Path(cfg.out_dir) / "ckpt", model, build_optimizer(model, cfg), {"step": 1})
    with pytest.raises(CheckpointError, match=r"lacks \['losses', 'data_generator', 'torch_rng'\]"):
        train(W.tiny_lm(), "causal_lm", W.LMStream(), cfg)


def test_ddp_unused_parameter_failure_is_explained() -> None:
    from groundup.train.distributed import explain_ddp_error

    raw = RuntimeError("Expected to have finished reduction in the prior iteration before starting a new one.")
    assert "TrainConfig.find_unused_parameters=True" in str(explain_ddp_error(raw))
    assert explain_ddp_error(RuntimeError("something else")) is None


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_failed_save_leaves_previous_checkpoint_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = W.tiny_lm()
    opt = build_optimizer(model, cfg_for(tmp_path))
    path = save_checkpoint(tmp_path / "ck", model, opt, {"step": 1})
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)

    def boom(*args, **kwargs):  # the crash hits after model.safetensors and config.json were written
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, opt, {"step": 2})
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert _leftovers(tmp_path) == []

    # A failure at the final rename: the old checkpoint is moved back.
    real_replace, calls = os.replace, []

    def flaky_replace(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise OSError("rename failed")
        real_replace(src, dst)

    monkeypatch.setattr(ckpt_mod.os, "replace", flaky_replace)
    with pytest.raises(OSError, match="rename failed"):
        save_checkpoint(path, model, opt, {"step": 2})
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert _leftovers(tmp_path) == []

    # A hard kill between the two renames (no except clause ran): load puts the old one back.
    os.replace(path, tmp_path / ".ck.old")
    (tmp_path / ".ck.tmp-dead").mkdir()
    assert load_checkpoint(path, W.tiny_lm()).state == {"step": 1}
    assert _leftovers(tmp_path) == []

    save_checkpoint(path, model, opt, {"step": 2})  # and a normal save replaces it
    assert load_checkpoint(path, W.tiny_lm()).state == {"step": 2}
    assert _leftovers(tmp_path) == []


def test_trainable_only_checkpoint_holds_the_trainable_parameters_and_needs_the_same_frozen_base(
        tmp_path: Path) -> None:
    def partly_frozen() -> torch.nn.Module:
        torch.manual_seed(0)
        m = W.tiny_lm()
        for name, p in m.named_parameters():
            p.requires_grad_(name.startswith("lm_head") or ".mlp." in name)
        return m

    model = partly_frozen()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # frozen and trainable alike differ from a fresh build now
    path = save_checkpoint(tmp_path / "ck", model, trainable_only=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(load_file(str(path / "model.safetensors"))) == trainable

    again = load_checkpoint(path, partly_frozen()).model
    fresh = partly_frozen()
    for (name, a), b, f in zip(again.named_parameters(), model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b if name in trainable else f), name  # trainable from the file, frozen from the base
    with pytest.raises(CheckpointError, match="holds only trainable parameters.*same base"):
        load_checkpoint(path, W.tiny_lm())  # every parameter trainable: the frozen ones are missing
