"""The PEFT API beyond the per-method contract: config validation, named adapters, deleting, tied weights,
one method per model, merge_and_unload, clear errors, and the real packaged models."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.testing import assert_close

import groundup
from groundup import peft as P
from groundup.config import preset
from groundup.generate import GenerationConfig, generate
from groundup.models import DecoderLM

V, T = 64, 8
SMALL = dict(vocab_size=V, n_layer=2, d_model=32, n_head=4, block_size=64)



def llama() -> DecoderLM:
    torch.manual_seed(0)
    return DecoderLM(preset("llama-tiny", **SMALL, n_kv_head=2, d_ff=48)).eval()


def ids(batch: int = 2) -> torch.Tensor:
    return torch.randint(0, V, (batch, T), generator=torch.Generator().manual_seed(1))


def perturb_(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in P.trainable_parameters(model).values():
            p.add_(0.2 * torch.randn(p.shape, generator=g))


# --- configs ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make,field", [
    (lambda: P.LoraConfig(r=0), "LoraConfig.r=0"),
    (lambda: P.LoraConfig(alpha=-1), "LoraConfig.alpha=-1"),
    (lambda: P.LoraConfig(dropout=1.5), "LoraConfig.dropout=1.5"),
    (lambda: P.LoraConfig(target_modules=[]), "LoraConfig.target_modules is empty"),
    (lambda: P.LoraConfig(rank_pattern={"q_proj": 0}), "LoraConfig.rank_pattern['q_proj']=0"),
    (lambda: P.IA3Config(target_modules="k_proj", feedforward_modules=[3]), "IA3Config.feedforward_modules"),
    (lambda: P.PromptTuningConfig(n_virtual_tokens=0), "PromptTuningConfig.n_virtual_tokens=0"),
    (lambda: P.PromptTuningConfig(init="text"), "PromptTuningConfig.init='text' needs init_text"),
    (lambda: P.PromptTuningConfig(init="vocab"), "PromptTuningConfig.init='vocab' is unknown"),
    (lambda: P.PrefixTuningConfig(reparam_hidden=0), "PrefixTuningConfig.reparam_hidden=0"),
])
def test_bad_config_names_the_field(make, field: str) -> None:
    with pytest.raises(P.PeftError) as err:
        make()
    assert field in str(err.value)


def test_target_patterns_are_checked_against_the_model() -> None:
    model = llama()
    with pytest.raises(P.PeftError, match=r"target_modules \['qkv'\] match no module .*'blocks\.0\.attn\.q_proj'"):
        P.inject(model, P.LoraConfig(target_modules=["q_proj", "qkv"]))
    assert not any(isinstance(m, P.LoraLinear) for m in model.modules())  # checked before anything was swapped
    with pytest.raises(P.PeftError, match="feedforward_modules .* must also be in target_modules"):
        P.inject(model, P.IA3Config(target_modules=["k_proj"], feedforward_modules=["down_proj"]))
    with pytest.raises(P.PeftError, match="has no biases .* Use LoraConfig or IA3Config"):
        P.inject(model, P.BitFitConfig())
    with pytest.raises(P.PeftError, match="takes none .* use it on a DecoderLM"):
        P.inject(groundup.build_model("bert-tiny", vocab_size=V), P.PrefixTuningConfig())


# --- named adapters --------------------------------------------------------------------------------------------
def test_named_adapters_switch_train_alone_and_delete() -> None:
    base = llama()
    ref = base(ids())
    model = P.inject(copy.deepcopy(base), P.LoraConfig(r=2), "a")
    perturb_(model, 0)
    model = P.inject(model, P.LoraConfig(r=4, target_modules=["q_proj", "o_proj"]), "b")
    perturb_(model, 1)
    assert P.adapter_names(model) == ["a", "b"] and P.peft_state(model).active == "b"
    assert all(".b." in n for n in P.trainable_parameters(model))  # only the active adapter trains
    out_b = model(ids())
    P.set_adapter(model, "a")
    out_a = model(ids())
    assert all(".a." in n for n in P.trainable_parameters(model))
    assert not torch.allclose(out_a, out_b) and not torch.allclose(out_a, ref)
    model = P.delete_adapter(model, "a")
    assert P.peft_state(model).active == "b"
    assert_close(model(ids()), out_b, atol=0, rtol=0)
    assert isinstance(model.blocks[0].attn.o_proj, P.LoraLinear)
    assert isinstance(model.blocks[0].attn.v_proj, nn.Linear)  # only "a" had it: unwrapped again
    plain = P.delete_adapter(model, "b")
    assert not any(isinstance(m, P.api.SWAP_LAYERS) for m in plain.modules()) and not hasattr(plain, "peft_state")
    assert all(p.requires_grad for p in plain.parameters())  # the base's own flags are back
    assert_close(plain(ids()), ref, atol=0, rtol=0)
    assert plain.state_dict().keys() == base.state_dict().keys()


def test_prompt_adapters_delete_back_to_the_base_model() -> None:
    base = llama()
    model = P.inject(base, P.PromptTuningConfig(n_virtual_tokens=2))
    assert isinstance(model, P.PromptModel) and model.base_model is base
    assert P.delete_adapter(model, "default") is base


def test_one_method_per_model_and_unique_names() -> None:
    model = P.inject(llama(), P.LoraConfig())
    with pytest.raises(P.PeftError, match="already carries lora adapters"):
        P.inject(model, P.IA3Config())
    with pytest.raises(P.PeftError, match="'default' already exists"):
        P.inject(model, P.LoraConfig())
    with pytest.raises(P.PeftError, match="no adapter 'nope'"):
        P.set_adapter(model, "nope")
    with pytest.raises(P.PeftError, match="carries no adapters"):
        P.merge(llama())


# --- merging ---------------------------------------------------------------------------------------------------
def test_merge_refuses_tied_weights() -> None:
    model = P.inject(llama(), P.LoraConfig(target_modules=["q_proj", "lm_head"]))
    perturb_(model)
    out = model(ids())
    with pytest.raises(P.PeftError, match=r"cannot merge into lm_head: its weight is shared with .*embed\.tok_emb"):
        P.merge(model)
    assert_close(model(ids()), out, atol=0, rtol=0)  # nothing was merged halfway


def test_merge_and_unload_gives_a_plain_model() -> None:
    model = P.inject(llama(), P.IA3Config())
    perturb_(model)
    out = model(ids())
    plain = P.merge_and_unload(model)
    assert not any(isinstance(m, P.api.SWAP_LAYERS) for m in plain.modules())
    assert plain.state_dict().keys() == llama().state_dict().keys()
    assert_close(plain(ids()), out, atol=1e-5, rtol=1e-4)


def test_merge_without_keeping_originals_unmerges_approximately() -> None:
    base = llama()
    model = P.inject(copy.deepcopy(base), P.LoraConfig())
    perturb_(model)
    P.merge(model, keep_original=False)
    P.unmerge(model)
    with P.disable(model):
        assert_close(model(ids()), base(ids()), atol=1e-5, rtol=1e-4)


def test_merged_adapter_blocks_adding_deleting_switching() -> None:
    model = P.inject(llama(), P.LoraConfig(), "a")
    model = P.inject(model, P.LoraConfig(), "b")
    P.merge(model)
    for action in (lambda: P.inject(model, P.LoraConfig(), "c"), lambda: P.delete_adapter(model, "a"),
                   lambda: P.set_adapter(model, "a")):
        with pytest.raises(P.PeftError, match="'b' is merged into the weights; unmerge"):
            action()
    assert P.adapter_names(model) == ["a", "b"]


@pytest.mark.parametrize("cfg", [P.PromptTuningConfig(n_virtual_tokens=2), P.PrefixTuningConfig(2, None)])
def test_wrappers_refuse_a_cache_without_their_tokens(cfg) -> None:
    model = P.inject(llama(), cfg)
    with pytest.raises(P.PeftError, match="its own new_cache"):
        model(ids(), cache=model.base_model.new_cache(2, 20))


def test_load_adapter_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="not a groundup adapter directory"):
        P.load_adapter(llama(), tmp_path)
    model = P.inject(llama(), P.LoraConfig())
    with pytest.raises(P.PeftError, match="no adapter 'x' to save"):
        P.save_adapter(model, tmp_path / "a", "x")


# --- real packaged models --------------------------------------------------------------------------------------
def packaged(name: str):
    try:
        return groundup.load_pretrained(name)
    except FileNotFoundError as e:  # a packaged asset is missing: `make test` installs it
        pytest.fail(str(e))


@pytest.fixture(scope="module")
def smollm2():
    return packaged("smollm2-135m-instruct")


@pytest.mark.real_weights
def test_smollm2_lora_and_prompt(smollm2) -> None:
    base, tok = smollm2
    with pytest.raises(P.PeftError, match="has no biases"):
        P.inject(base, P.BitFitConfig())
    prompt = tok.encode("The capital of France is")
    cfg = GenerationConfig(max_new_tokens=4, temperature=0)
    expected = generate(base, prompt, cfg)
    model = P.inject(base, P.LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    c = base.config
    assert P.count_parameters(model)[0] == c.n_layer * 8 * ((c.d_model + c.n_head * c.head_dim)
                                                             + (c.d_model + c.n_kv_head * c.head_dim))
    assert generate(model, prompt, cfg) == expected  # a fresh LoRA is a no-op on the real model too
    base = P.delete_adapter(model, "default")
    text = "Answer like a pirate"
    soft = P.inject(base, P.PromptTuningConfig(n_virtual_tokens=6, init="text", init_text=text), tokenizer=tok)
    words = P.nearest_tokens(soft.prompts["default"], soft.token_embedding(), tok)
    ids_ = tok.encode(text)
    assert [w[0] for w in words] == [tok.decode([i]) for i in (ids_ * 6)[:6]]
    assert len(generate(soft, prompt, cfg)[0]) == 4
    P.delete_adapter(soft, "default")


@pytest.mark.real_weights
def test_minilm_bitfit_and_ia3() -> None:
    base, tok = packaged("all-minilm-l6-v2")
    x = torch.tensor([tok.encode("parameter efficient fine tuning")])
    ref = base(x)
    model = P.inject(copy.deepcopy(base), P.BitFitConfig())
    assert P.count_parameters(model)[0] == sum(p.numel() for n, p in base.named_parameters() if n.endswith("bias"))
    assert_close(model(x), ref, atol=0, rtol=0)
    model = P.inject(copy.deepcopy(base), P.IA3Config())
    assert_close(model(x), ref, atol=0, rtol=0)


def test_second_adapter_with_a_broad_regex_wraps_no_wrapper_insides() -> None:
    model = P.inject(llama(), P.LoraConfig(target_modules=[r".*proj.*"]), "a")
    model = P.inject(model, P.LoraConfig(target_modules=[r".*proj.*"]), "b")
    n_proj = sum(isinstance(m, nn.Linear) and "proj" in n for n, m in llama().named_modules())
    assert sum(isinstance(m, P.LoraLinear) for m in model.modules()) == n_proj == 14
    assert all(sorted(m.adapter_names()) == ["a", "b"] for m in model.modules() if isinstance(m, P.LoraLinear))
