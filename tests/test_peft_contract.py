"""One contract suite, run for every PEFT method on every small model it applies to (peft's TEST_CASES idea).

Each case is (method, model). Shared checks: a fresh adapter is a no-op (methods that add virtual tokens
instead change the output), only adapter parameters get gradients and their number follows the method's
formula, save -> load round-trips, merge == unmerged and unmerge restores the base weights bit for bit
(mergeable methods), disable == base model, a few optimizer steps change the output and nothing else, and
an adapter loaded into a model of another architecture fails naming the mismatch.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from groundup import peft as P
from groundup.config import preset
from groundup.models import DecoderLM, EncoderForClassification, EncoderForPreTraining

V, B, T = 64, 3, 10



def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random everything, biases and norm gains included, so a bias-only or scaling adapter really has work."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.1 * noise if p.dim() == 1 and "norm" in name and name.endswith("weight") else 0.1 * noise)
    return model.eval()


SMALL = dict(vocab_size=V, n_layer=2, d_model=32, n_head=4, block_size=64)
MODELS: dict[str, Callable[..., nn.Module]] = {
    "llama": lambda **o: DecoderLM(preset("llama-tiny", **{**SMALL, "n_kv_head": 2, "d_ff": 48, **o})),  # no biases
    "gpt2": lambda **o: DecoderLM(preset("gpt-tiny", **{**SMALL, **o})),  # biases, learned positions
    "bert": lambda **o: EncoderForPreTraining(preset("bert-tiny", **{**SMALL, "d_ff": 48, **o})),  # MLM + NSP heads
    "bert_cls": lambda **o: EncoderForClassification(preset("bert-tiny", **{**SMALL, "d_ff": 48, "n_class": 3, **o})),
}
OTHER = {"llama": "gpt2", "gpt2": "llama", "bert": "bert_cls", "bert_cls": "bert"}  # for the wrong-model check


@functools.cache
def _built(kind: str) -> nn.Module:
    torch.manual_seed(0)
    return randomize_(MODELS[kind]())


def fresh(kind: str) -> nn.Module:
    return copy.deepcopy(_built(kind))


def batch(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, -3:] = 0  # one right-padded row
    return {"input_ids": torch.randint(0, V, (B, T), generator=g), "attention_mask": mask}


def run(model: nn.Module, data: dict[str, torch.Tensor]) -> torch.Tensor:
    out = model(data["input_ids"], attention_mask=data["attention_mask"])
    if isinstance(out, torch.Tensor):
        return out
    return torch.cat([out.mlm_logits.flatten(), out.nsp_logits.flatten()])  # EncoderForPreTraining


# --- expected trainable-parameter counts, from the method's definition and the base model alone ------------------
def _linears(model: nn.Module, patterns) -> list[tuple[str, nn.Linear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and any(P.config.matches(p, n)
                                                                                       for p in patterns)]


def lora_count(cfg: P.LoraConfig, model: nn.Module) -> int:  # r * (in + out) per target
    return sum(cfg.rank_for(n) * (m.in_features + m.out_features) for n, m in _linears(model, cfg.target_modules))


def ia3_count(cfg: P.IA3Config, model: nn.Module) -> int:  # out per target, in per feedforward target
    return sum(m.in_features if any(P.config.matches(p, n) for p in cfg.feedforward_modules) else m.out_features
               for n, m in _linears(model, cfg.target_modules))


def bitfit_count(cfg: P.BitFitConfig, model: nn.Module) -> int:  # every bias
    return sum(p.numel() for n, p in model.named_parameters() if n.endswith("bias"))


def prompt_count(cfg: P.PromptTuningConfig, model: nn.Module) -> int:  # n x d
    return cfg.n_virtual_tokens * model.config.d_model


def prefix_count(cfg: P.PrefixTuningConfig, model: nn.Module) -> int:
    c = model.config
    kv = c.n_layer * 2 * c.n_kv_head * c.head_dim  # per virtual token
    h = cfg.reparam_hidden
    if h is None:
        return cfg.n_virtual_tokens * kv
    return cfg.n_virtual_tokens * c.d_model + (c.d_model * h + h) + (h * kv + kv)  # embedding + MLP


@dataclass(frozen=True)
class Method:
    make: Callable[[], P.PeftConfig]
    count: Callable[[P.PeftConfig, nn.Module], int]
    noop: bool = True  # a fresh adapter leaves the output unchanged
    mergeable: bool = True
    models: tuple[str, ...] = tuple(MODELS)


METHODS = {
    "lora": Method(lambda: P.LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]), lora_count),
    "lora_regex": Method(
        lambda: P.LoraConfig(r=2, alpha=4, target_modules=[r"(.*\.)?blocks\.0\.attn\.(q|k)_proj", "up_proj"],
                             rank_pattern={"up_proj": 3}, alpha_pattern={"up_proj": 1.5}, rslora=True), lora_count),
    "ia3": Method(P.IA3Config, ia3_count),
    "bitfit": Method(P.BitFitConfig, bitfit_count, models=("gpt2", "bert", "bert_cls")),  # llama has no biases
    "prompt": Method(lambda: P.PromptTuningConfig(n_virtual_tokens=4), prompt_count, noop=False, mergeable=False),
    "prefix": Method(lambda: P.PrefixTuningConfig(n_virtual_tokens=3, reparam_hidden=16), prefix_count, noop=False,
                     mergeable=False, models=("llama", "gpt2")),  # enters through the KV cache: decoders
    "prefix_plain": Method(lambda: P.PrefixTuningConfig(n_virtual_tokens=3, reparam_hidden=None), prefix_count,
                           noop=False, mergeable=False, models=("llama", "gpt2")),
}
TEST_CASES = [pytest.param(m, k, id=f"{m}-{k}") for m, spec in METHODS.items() for k in spec.models]


def injected(method: str, kind: str, perturb: bool = True) -> tuple[nn.Module, nn.Module]:
    """(base model, a copy with the method's adapter; perturbed so it is not a no-op)."""
    base = fresh(kind)
    model = P.inject(copy.deepcopy(base), METHODS[method].make())
    if perturb:
        g = torch.Generator().manual_seed(2)
        with torch.no_grad():
            for p in P.trainable_parameters(model).values():
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return base, model


def train_steps(model: nn.Module, data: dict[str, torch.Tensor], steps: int = 3) -> None:
    target = torch.randn_like(run(model, data), generator=torch.Generator().manual_seed(3))
    opt = torch.optim.AdamW(P.trainable_parameters(model).values(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = ((run(model, data) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


# --- the contract ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method,kind", TEST_CASES)
def test_fresh_adapter_is_noop(method: str, kind: str) -> None:
    base, model = injected(method, kind, perturb=False)
    data = batch()
    if METHODS[method].noop:
        assert_close(run(model, data), run(base, data), atol=0, rtol=0)
    else:  # virtual tokens / prefixes are attended from the start: the output moves, the shape does not
        out, ref = run(model, data), run(base, data)
        assert out.shape == ref.shape and not torch.allclose(out, ref)


@pytest.mark.parametrize("method,kind", TEST_CASES)
def test_only_adapter_parameters_get_gradients(method: str, kind: str) -> None:
    base, model = injected(method, kind)
    trainable = P.trainable_parameters(model)
    expected = METHODS[method].count(P.peft_state(model).configs["default"], base)
    assert sum(p.numel() for p in trainable.values()) == expected == P.count_parameters(model)[0]
    assert f"trainable params: {expected:,}" in P.summary(model)
    run(model, batch()).square().mean().backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == (name in trainable), name
    assert any(p.grad.abs().sum() > 0 for p in trainable.values())


@pytest.mark.parametrize("method,kind", TEST_CASES)
def test_save_load_round_trips(method: str, kind: str, tmp_path) -> None:
    base, model = injected(method, kind)
    data = batch()
    P.save_adapter(model, tmp_path / "adapter")
    loaded = P.load_adapter(copy.deepcopy(base), tmp_path / "adapter")
    assert_close(run(loaded, data), run(model, data))
    assert P.adapter_names(loaded) == ["default"]


@pytest.mark.parametrize("method,kind", TEST_CASES)
def test_merge_equals_unmerged_and_unmerge_restores(method: str, kind: str) -> None:
    base, model = injected(method, kind)
    data = batch()
    if not METHODS[method].mergeable:
        with pytest.raises(P.PeftError, match="cannot be merged"):
            P.merge(model)
        return
    before = {k: v.clone() for k, v in model.state_dict().items()}
    unmerged = run(model, data)
    P.merge(model)
    assert_close(run(model, data), unmerged, atol=1e-5, rtol=1e-4)
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the weights did change
    with P.disable(model):  # a merged adapter is taken out for the block
        assert_close(run(model, data), run(base, data), atol=0, rtol=0)
    P.unmerge(model)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert_close(run(model, data), unmerged, atol=0, rtol=0)


@pytest.mark.parametrize("method,kind", TEST_CASES)
def test_disable_gives_the_base_model(method: str, kind: str) -> None:
    base, model = injected(method, kind)
    data = batch()
    adapted = run(model, data)
    assert not torch.allclose(adapted, run(base, data))
    with P.disable(model):
        assert_close(run(model, data), run(base, data), atol=0, rtol=0)
    assert_close(run(model, data), adapted, atol=0, rtol=0)


@pytest.mark.parametrize("method,kind", TEST_CASES)
def test_optimizer_steps_change_outputs_and_nothing_else(method: str, kind: str) -> None:
    base, model = injected(method, kind, perturb=False)
    data = batch()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = run(model, data).detach()
    train_steps(model, data)
    assert not torch.allclose(run(model, data), before)
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    with P.disable(model):
        assert_close(run(model, data), run(base, data), atol=0, rtol=0)


@pytest.mark.parametrize("method,kind", TEST_CASES)
def test_adapter_for_another_model_fails_clearly(method: str, kind: str, tmp_path) -> None:
    _, model = injected(method, kind)
    P.save_adapter(model, tmp_path / "adapter")
    other = fresh(OTHER[kind])
    with pytest.raises(P.PeftError, match=re.escape("was trained for another model")) as err:
        P.load_adapter(other, tmp_path / "adapter")
    message = str(err.value)
    same_class = type(other) is type(P.api.base_model(model))
    assert "mismatched fields" in message and ("class:" in message) != same_class
    assert not any(isinstance(m, P.api.SWAP_LAYERS) for m in other.modules())  # nothing was half-injected
    with pytest.raises(P.PeftError, match="d_model: adapter 32 vs model 48"):
        P.load_adapter(MODELS[kind](d_model=48), tmp_path / "adapter")
