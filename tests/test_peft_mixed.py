"""Mixed batches (each row its own adapter or none, in one forward pass), generation with soft prompts and
prefixes through the KV cache, and reading a text-initialised prompt back with nearest_tokens."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from groundup import peft as P
from groundup.config import preset
from groundup.generate import ContextLimitWarning, GenerationConfig, generate
from groundup.models import DecoderLM, EncoderForPreTraining
from groundup.tokenizer import train_bpe

V, T = 64, 9
SMALL = dict(vocab_size=V, n_layer=2, d_model=32, n_head=4, block_size=64)
ROWS = ["a", None, "b", "a"]



def build(kind: str) -> nn.Module:
    torch.manual_seed(0)
    model = {
        "llama": lambda: DecoderLM(preset("llama-tiny", **SMALL, n_kv_head=2, d_ff=48)),
        "gpt2": lambda: DecoderLM(preset("gpt-tiny", **SMALL)),
        "bert": lambda: EncoderForPreTraining(preset("bert-tiny", **SMALL, d_ff=48)),
    }[kind]()
    with torch.no_grad():  # non-zero biases, so BitFit's deltas and IA3's bias scaling are exercised
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    return model.eval()


def ids(batch: int = len(ROWS), length: int = T, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (batch, length), generator=torch.Generator().manual_seed(seed))


def logits(model: nn.Module, x: torch.Tensor, mask: torch.Tensor | None = None, **segments) -> torch.Tensor:
    out = model(x, attention_mask=mask, **segments)  # segments: token_type_ids for BERT
    return out if isinstance(out, torch.Tensor) else torch.cat([out.mlm_logits.flatten(1), out.nsp_logits], 1)


def perturb_(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in P.trainable_parameters(model).values():
            p.add_(0.2 * torch.randn(p.shape, generator=g))


def two_adapters(kind: str, make) -> nn.Module:
    model = build(kind)
    for seed, name in enumerate(("a", "b")):
        model = P.inject(model, make(seed), name)
        perturb_(model, seed)
    return model


def alone(model: nn.Module, name: str | None, x: torch.Tensor, mask: torch.Tensor | None = None,
          **segments) -> torch.Tensor:
    if name is None:
        with P.disable(model):
            return logits(model, x, mask, **segments)
    P.set_adapter(model, name)
    return logits(model, x, mask, **segments)


SWAPS = {
    "lora": lambda seed: P.LoraConfig(r=2 + seed, alpha=4, target_modules=["q_proj", "v_proj", "up_proj"]),
    "ia3": lambda seed: P.IA3Config(),
    "bitfit": lambda seed: P.BitFitConfig(),
}
PROMPTS = lambda seed: P.PromptTuningConfig(n_virtual_tokens=3 + 2 * seed)  # noqa: E731  ("a": 3, "b": 5 tokens)


# --- module-swap methods ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("method,kind", [(m, k) for m in SWAPS for k in ("llama", "gpt2", "bert")
                                         if (m, k) != ("bitfit", "llama")])  # llama-style models have no biases
def test_mixed_rows_equal_each_row_alone(method: str, kind: str) -> None:
    model = two_adapters(kind, SWAPS[method])
    x = ids()
    with P.adapter_rows(model, ROWS):
        mixed = logits(model, x)
    for row, name in enumerate(ROWS):
        assert_close(mixed[row: row + 1], alone(model, name, x[row: row + 1]), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(mixed[0], alone(model, None, x[:1])[0])  # the adapters do act


def test_mixed_lora_runs_one_matmul_pair_per_adapter(monkeypatch) -> None:
    model = two_adapters("llama", SWAPS["lora"])
    calls = []
    original = P.LoraLinear._delta
    def counted(self, name, x):
        calls.append(x.shape[0])
        return original(self, name, x)

    monkeypatch.setattr(P.LoraLinear, "_delta", counted)
    rows = ["a", "b", None, "a", "b", "b", "a", None]
    with P.adapter_rows(model, rows):
        logits(model, ids(batch=len(rows)))
    n_layers = sum(isinstance(m, P.LoraLinear) for m in model.modules())
    assert len(calls) == 2 * n_layers  # one grouped call per adapter per layer, not one per row
    assert sorted(set(calls)) == [3]  # each call carries all 3 rows of its adapter


def test_mixed_rows_train_both_adapters_at_once() -> None:
    model = two_adapters("gpt2", SWAPS["lora"])
    for name in ("a", "b"):
        for p in P.api.adapter_params(model, name).values():
            p.requires_grad_(True)
    with P.adapter_rows(model, ["a", "b"]):
        logits(model, ids(batch=2)).square().mean().backward()
    for name in ("a", "b"):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in P.api.adapter_params(model, name).values())


def test_adapter_rows_errors_are_clear() -> None:
    model = two_adapters("llama", SWAPS["lora"])
    with pytest.raises(P.PeftError, match=r"unknown adapters \['c'\]"):
        with P.adapter_rows(model, ["a", "c"]):
            pass
    with pytest.raises(P.PeftError, match="the batch has 4 rows but adapter_rows names 2"):
        with P.adapter_rows(model, ["a", "b"]):
            logits(model, ids())
    P.merge(model)
    with pytest.raises(P.PeftError, match="unmerge"):
        with P.adapter_rows(model, ["a", None]):
            pass
    assert all(m.rows is None for m in model.modules() if isinstance(m, P.LoraLinear))  # the context cleaned up


# --- soft prompts ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["llama", "gpt2", "bert"])
def test_mixed_soft_prompts_equal_each_row_alone(kind: str) -> None:
    model = two_adapters(kind, PROMPTS)  # prompts of 3 and 5 virtual tokens
    x = ids()
    mask = torch.ones_like(x)
    mask[1, -2:] = 0  # a right-padded row
    seg = {"token_type_ids": (torch.arange(T) >= T // 2).long().expand_as(x)} if kind == "bert" else {}
    with P.adapter_rows(model, ROWS):
        mixed = logits(model, x, mask, **seg)
    for row, name in enumerate(ROWS):
        solo = alone(model, name, x[row: row + 1], mask[row: row + 1], **{k: v[row: row + 1] for k, v in seg.items()})
        assert_close(mixed[row: row + 1], solo, atol=1e-5, rtol=1e-4)


def greedy_by_recompute(model: nn.Module, prompt: list[int], steps: int) -> list[int]:
    """Generation without a cache: the whole sequence re-run for every new token."""
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(prompt):]


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_generation_with_soft_prompts_mixed_and_alone(kind: str) -> None:
    model = two_adapters(kind, PROMPTS)
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13], [14]]  # left-padded by generate: padding + ragged prompts
    cfg = GenerationConfig(max_new_tokens=6, temperature=0)
    with P.adapter_rows(model, ROWS):
        mixed = generate(model, prompts, cfg)
    for prompt, name, got in zip(prompts, ROWS, mixed, strict=True):
        if name is None:
            with P.disable(model):
                solo, recomputed = generate(model, prompt, cfg)[0], greedy_by_recompute(model, prompt, 6)
        else:
            P.set_adapter(model, name)
            solo, recomputed = generate(model, prompt, cfg)[0], greedy_by_recompute(model, prompt, 6)
        assert got == solo == recomputed


# --- prefix tuning ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("hidden", [16, None])
def test_prefix_kv_cache_generation_equals_full_recompute(kind: str, hidden: int | None) -> None:
    model = P.inject(build(kind), P.PrefixTuningConfig(n_virtual_tokens=4, reparam_hidden=hidden))
    perturb_(model, 0)
    prompt = [3, 1, 4, 1, 5]
    tokens = generate(model, prompt, GenerationConfig(max_new_tokens=8, temperature=0))[0]
    assert tokens == greedy_by_recompute(model, prompt, 8)
    # logits too: incremental decoding through the prefixed cache == one full forward
    seq = torch.tensor([prompt + tokens])
    with torch.no_grad():
        full = model(seq)
        cache = model.new_cache(1, seq.shape[1])
        steps = [model(seq[:, :5], cache=cache)]
        steps += [model(seq[:, t: t + 1], cache=cache, start=t) for t in range(5, seq.shape[1])]
    assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-4)
    with P.disable(model):
        assert generate(model, prompt, GenerationConfig(max_new_tokens=8, temperature=0))[0] == \
            greedy_by_recompute(model, prompt, 8)


def test_prefix_batched_generation_with_padding() -> None:
    model = P.inject(build("llama"), P.PrefixTuningConfig(n_virtual_tokens=3, reparam_hidden=None))
    perturb_(model, 1)
    prompts = [[5, 6, 7, 8], [9, 10]]
    cfg = GenerationConfig(max_new_tokens=5, temperature=0)
    assert generate(model, prompts, cfg) == [generate(model, p, cfg)[0] for p in prompts]


def test_prefix_fold_keeps_outputs() -> None:
    model = P.inject(build("gpt2"), P.PrefixTuningConfig(n_virtual_tokens=3, reparam_hidden=16))
    perturb_(model, 2)
    x = ids(batch=2)
    before = logits(model, x)
    model.fold()
    assert model.prefixes["default"].mlp is None
    assert_close(logits(model, x), before)


# --- reading a prompt ------------------------------------------------------------------------------------------
def test_nearest_tokens_of_a_text_initialised_prompt() -> None:
    text = "the quick brown fox jumps over the lazy dog and then the fox sleeps. " * 30
    tok = train_bpe([text], 280)
    torch.manual_seed(0)
    model = DecoderLM(preset("llama-tiny", **{**SMALL, "vocab_size": tok.vocab_size}, n_kv_head=2, d_ff=48))
    model = P.inject(model, P.PromptTuningConfig(n_virtual_tokens=5, init="text", init_text="quick brown fox"),
                     tokenizer=tok)
    init_ids = tok.encode("quick brown fox")
    expected = [tok.decode([i]) for i in (init_ids * 5)[:5]]  # repeated to fill 5 virtual tokens
    found = P.nearest_tokens(model.prompts["default"], model.token_embedding(), tok, k=1)
    assert [row[0] for row in found] == expected
    assert P.nearest_tokens(model.prompts["default"], model.token_embedding(), k=2)[0][0] == init_ids[0]
    with pytest.raises(P.PeftError, match="needs the tokenizer"):
        P.inject(copy.deepcopy(model), P.PromptTuningConfig(init="text", init_text="fox"), "b")


@pytest.mark.parametrize("cfg", [P.PromptTuningConfig(n_virtual_tokens=5), P.PrefixTuningConfig(4, None)])
def test_generation_budgets_the_virtual_tokens_in_front(cfg):
    """Learned positions end at block_size: generation must stop where prompt + virtual + new tokens fill it."""
    model = P.inject(build("gpt2"), cfg)
    room = SMALL["block_size"] - cfg.n_virtual_tokens
    prompt = list(range(1, 51))
    with pytest.warns(ContextLimitWarning, match=f"stopped after {room - len(prompt)} of 100 tokens"):
        out = generate(model, [prompt], GenerationConfig(max_new_tokens=100, temperature=0.0))
    assert len(out[0]) == room - len(prompt)
    with pytest.raises(ValueError, match=f"{room} positions"):
        generate(model, [list(range(1, room + 1))], GenerationConfig(max_new_tokens=1))
