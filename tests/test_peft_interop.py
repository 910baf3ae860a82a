"""Hugging Face PEFT layout: adapters cross between groundup and `peft` with identical outputs.

export: groundup base -> save_hf; groundup adapter (a few training steps on random data) -> save_peft;
        transformers from_pretrained + peft PeftModel.from_pretrained == groundup's output.
import: a peft adapter with random non-zero weights on that transformers model -> save_pretrained -> load_peft
        into the groundup base == peft's output.
For LoRA, IA3, prompt and prefix tuning on a tiny Llama-style (grouped-query) and GPT-2-style model (GPT-2 fuses
q, k, v in c_attn), plus a headless BERT encoder for LoRA.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import peft  # noqa: E402
import pytest
import torch
import transformers  # noqa: E402
from torch import nn
from torch.testing import assert_close

from groundup import peft as P
from groundup.config import preset
from groundup.interop import save_hf
from groundup.interop.peft_format import load_peft, save_peft
from groundup.models import DecoderLM, Encoder

pytestmark = pytest.mark.filterwarnings("ignore")  # peft/transformers deprecation chatter

transformers.logging.set_verbosity_error()

V, T = 64, 11
SMALL = dict(vocab_size=V, n_layer=2, d_model=32, n_head=4, block_size=64)
TOL = dict(atol=1e-5, rtol=1e-4)



def randomize_(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.1 * noise if p.dim() == 1 and "norm" in name and name.endswith("weight") else 0.1 * noise)
    return model.eval()


BUILD = {
    "llama": lambda: DecoderLM(preset("llama-tiny", **SMALL, n_kv_head=2, d_ff=48)),
    "gpt2": lambda: DecoderLM(preset("gpt-tiny", **SMALL)),
}
# groundup configs (exported) and peft configs (imported), per family and method
OURS = {
    "lora": lambda: P.LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                 rank_pattern={"down_proj": 2}),
    "ia3": P.IA3Config,
    "prompt": lambda: P.PromptTuningConfig(n_virtual_tokens=4),
    "prefix": lambda: P.PrefixTuningConfig(n_virtual_tokens=3, reparam_hidden=16),  # the MLP folds on export
}
THEIRS = {
    ("llama", "lora"): lambda: peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "down_proj"],
                                               rank_pattern={"down_proj": 3}, task_type="CAUSAL_LM"),
    ("gpt2", "lora"): lambda: peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"],
                                              use_rslora=True, task_type="CAUSAL_LM"),
    ("llama", "ia3"): lambda: peft.IA3Config(target_modules=["k_proj", "v_proj", "down_proj"],
                                             feedforward_modules=["down_proj"], task_type="CAUSAL_LM"),
    ("gpt2", "ia3"): lambda: peft.IA3Config(target_modules=["c_attn", "mlp.c_proj"], feedforward_modules=["mlp.c_proj"],
                                            task_type="CAUSAL_LM"),
    ("llama", "prompt"): lambda: peft.PromptTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM"),
    ("gpt2", "prompt"): lambda: peft.PromptTuningConfig(num_virtual_tokens=5, task_type="CAUSAL_LM"),
    ("llama", "prefix"): lambda: peft.PrefixTuningConfig(num_virtual_tokens=3, prefix_projection=True,
                                                         encoder_hidden_size=16, task_type="CAUSAL_LM"),
    ("gpt2", "prefix"): lambda: peft.PrefixTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM"),
}
CASES = [pytest.param(f, m, id=f"{f}-{m}") for f in BUILD for m in OURS]


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, tuple[nn.Module, Path]]:
    """family -> (groundup base model, its save_hf directory)."""
    out = {}
    for family, build in BUILD.items():
        torch.manual_seed(0)
        model = randomize_(build())
        out[family] = (model, save_hf(model, None, tmp_path_factory.mktemp(family) / "base"))
    return out


def ids(batch: int = 2) -> torch.Tensor:
    return torch.randint(0, V, (batch, T), generator=torch.Generator().manual_seed(1))


def hf_logits(hf_dir: Path, adapter_dir: Path | None = None, x: torch.Tensor | None = None) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    if adapter_dir is not None:
        model = peft.PeftModel.from_pretrained(model, adapter_dir).eval()
    with torch.no_grad():
        logits = model(input_ids=x).logits
    return logits[:, -x.shape[1]:]  # prompt tuning returns the virtual positions too


def train_a_little(model: nn.Module, steps: int = 3) -> None:
    """A few AdamW steps of next-token loss on random tokens: the adapter moves away from its init (B != 0)."""
    x = torch.randint(0, V, (4, T), generator=torch.Generator().manual_seed(5))
    opt = torch.optim.AdamW(P.trainable_parameters(model).values(), lr=3e-2)
    for _ in range(steps):
        logits = model(x[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, V), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


@pytest.mark.parametrize("family,method", CASES)
def test_groundup_adapter_loads_in_peft(family: str, method: str, bases, tmp_path) -> None:
    base, hf_dir = bases[family]
    model = P.inject(copy.deepcopy(base), OURS[method]())
    train_a_little(model)
    if method != "prompt":
        assert any(not torch.allclose(p, torch.ones_like(p)) and p.abs().sum() > 0
                   for p in P.trainable_parameters(model).values())
    save_peft(model, tmp_path / "adapter")
    x = ids()
    with torch.no_grad():
        ours = model(x)
    theirs = hf_logits(hf_dir, tmp_path / "adapter", x)
    assert_close(theirs, ours, **TOL)
    assert not torch.allclose(hf_logits(hf_dir, None, x), ours)  # the adapter matters


@pytest.mark.parametrize("family,method", CASES)
def test_peft_adapter_loads_in_groundup(family: str, method: str, bases, tmp_path) -> None:
    base, hf_dir = bases[family]
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    pm = peft.get_peft_model(hf, THEIRS[family, method]())
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in (p for p in pm.parameters() if p.requires_grad):  # random, non-zero adapter weights
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    pm.save_pretrained(tmp_path / "adapter")
    x = ids()
    theirs = hf_logits(hf_dir, tmp_path / "adapter", x)
    model = load_peft(copy.deepcopy(base), tmp_path / "adapter")
    with torch.no_grad():
        assert_close(model(x), theirs, **TOL)
    # and back out again: groundup's export of the imported adapter is what peft computes
    save_peft(model, tmp_path / "again")
    assert_close(hf_logits(hf_dir, tmp_path / "again", x), theirs, **TOL)


def test_encoder_lora_round_trips_through_peft(tmp_path) -> None:
    torch.manual_seed(0)
    base = randomize_(Encoder(preset("bert-tiny", **SMALL, d_ff=48)))
    save_hf(base, None, tmp_path / "base")
    model = P.inject(copy.deepcopy(base), P.LoraConfig(r=4, target_modules=["q_proj", "v_proj", "up_proj"]))
    with torch.no_grad():
        for p in P.trainable_parameters(model).values():
            p.add_(0.1 * torch.randn_like(p))
    save_peft(model, tmp_path / "adapter")
    hf = peft.PeftModel.from_pretrained(transformers.AutoModel.from_pretrained(tmp_path / "base"), tmp_path / "adapter")
    x, mask = ids(), torch.ones(2, T, dtype=torch.long)
    with torch.no_grad():
        theirs = hf.eval()(input_ids=x, attention_mask=mask).last_hidden_state
        assert_close(model(x, attention_mask=mask), theirs, **TOL)
        assert_close(load_peft(copy.deepcopy(base), tmp_path / "adapter")(x, attention_mask=mask), theirs, **TOL)


def test_adapter_for_another_architecture_fails_clearly(bases, tmp_path) -> None:
    llama, _ = bases["llama"]
    gpt2, _ = bases["gpt2"]
    save_peft(P.inject(copy.deepcopy(llama), OURS["lora"]()), tmp_path / "llama_lora")
    with pytest.raises(P.PeftError, match=r"targets HF module 'model\.layers\..*another architecture"):
        load_peft(copy.deepcopy(gpt2), tmp_path / "llama_lora")
    save_peft(P.inject(copy.deepcopy(llama), OURS["prompt"]()), tmp_path / "llama_prompt")
    wide = DecoderLM(preset("llama-tiny", **{**SMALL, "d_model": 48}, n_kv_head=2, d_ff=48))
    with pytest.raises(P.PeftError, match=r"d_model=48"):
        load_peft(wide, tmp_path / "llama_prompt")


def test_unsupported_peft_options_are_refused(bases, tmp_path) -> None:
    llama, _ = bases["llama"]
    out = save_peft(P.inject(copy.deepcopy(llama), OURS["lora"]()), tmp_path / "dora")
    config = json.loads((out / "adapter_config.json").read_text())
    (out / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(P.PeftError, match=r"uses \['use_dora'\]"):
        load_peft(copy.deepcopy(llama), out)
    gpt2, _ = bases["gpt2"]  # BitFit needs biases; peft has no BitFit layout
    with pytest.raises(P.PeftError, match="HF PEFT layout covers"):
        save_peft(P.inject(copy.deepcopy(gpt2), P.BitFitConfig()), tmp_path / "bitfit")
