"""Retention and Hyena as the decoder's token mixer: retention's three forms against the formula computed directly,
decoding through their caches against the full forward, causality (logits and gradients), padding, PEFT,
quantization, checkpoints, the serving engine and the errors of configs that cannot work."""

from __future__ import annotations

import math

import pytest
import torch
from cli_helpers import groundup
from serve_helpers import chat_tokenizer, perturbed

from groundup import peft as P
from groundup.config import ConfigError, preset
from groundup.generate import GenerationConfig, generate, generate_text
from groundup.interop.hf_config import hf_family
from groundup.loading import load_pretrained
from groundup.models import build_model
from groundup.nn.hyena import causal_conv
from groundup.nn.retention import (
    retention_chunkwise,
    retention_decay,
    retention_parallel,
    retention_recurrent,
)
from groundup.quant import quantize
from groundup.train import load_checkpoint, save_checkpoint

MIXERS = ("retention", "hyena")


def tiny(mixer: str, **kw):
    torch.manual_seed(0)
    cfg = dict(vocab_size=40, n_layer=2, d_model=32, n_head=4, n_kv_head=4, d_ff=64, block_size=64, mixer=mixer)
    model = build_model(preset("llama-tiny", **{**cfg, **kw})).eval()
    with torch.no_grad():  # livelier than the 0.02 init, so outputs differ clearly between positions
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.dim() == 2:
                p.mul_(8.0)
    return model


# --- retention's forms ---------------------------------------------------------------------------------------
def retention_by_formula(q, k, v, gammas) -> torch.Tensor:
    """o_n = sum over m <= n of gamma^(n - m) (q_n . k_m) v_m, in float64, one position pair at a time."""
    B, H, T, _ = q.shape
    out = torch.zeros(B, H, T, v.shape[-1], dtype=torch.float64)
    for h in range(H):
        for n in range(T):
            for m in range(n + 1):
                w = gammas[h] ** (n - m) * (q[:, h, n].double() * k[:, h, m].double()).sum(-1)  # (B,)
                out[:, h, n] += w[:, None] * v[:, h, m].double()
    return out


def normed(o: torch.Tensor) -> torch.Tensor:
    """The per-head group norm with epsilon 0, which every form's output passes through."""
    return torch.nn.functional.layer_norm(o.double(), (o.shape[-1],), eps=0.0)


def test_decay_per_head_is_one_minus_two_to_the_minus_five_minus_h() -> None:
    assert torch.allclose(retention_decay(4).exp(), torch.tensor([1 - 1 / 32, 1 - 1 / 64, 1 - 1 / 128, 1 - 1 / 256]))


def test_parallel_recurrent_and_chunkwise_forms_compute_the_formula() -> None:
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 19, 8).unbind(0)
    log_gamma = retention_decay(4)
    want = retention_by_formula(q, k, v, [1 - 2.0 ** (-5 - h) for h in range(4)])
    forms = {"parallel": retention_parallel(q, k, v, log_gamma),
             "recurrent": retention_recurrent(q, k, v, log_gamma)[0]}
    for chunk in (1, 3, 8, 19, 32):
        forms[f"chunkwise {chunk}"] = retention_chunkwise(q, k, v, log_gamma, chunk)[0]
    for name, got in forms.items():
        assert (normed(got) - normed(want)).abs().max() < 1e-5, name
        assert torch.allclose(got.double(), want, rtol=1e-4, atol=1e-4), name


def test_chunkwise_state_equals_the_recurrent_state() -> None:
    """The state each form hands on (what a prefill leaves for decoding) is the same."""
    torch.manual_seed(1)
    q, k, v = torch.randn(3, 1, 4, 13, 8).unbind(0)
    lg = retention_decay(4)
    _, s_rec = retention_recurrent(q, k, v, lg)
    for chunk in (2, 5, 13):
        assert torch.allclose(retention_chunkwise(q, k, v, lg, chunk)[1], s_rec, atol=1e-4)


def test_hyena_fft_convolution_is_the_causal_sum() -> None:
    torch.manual_seed(0)
    u, h = torch.randn(2, 3, 11), torch.randn(3, 11)
    want = torch.stack([sum(h[:, t - s] * u[:, :, s] for s in range(t + 1)) for t in range(11)], dim=-1)
    assert torch.allclose(causal_conv(u, h), want, atol=1e-5)


# --- the decoder with each mixer -----------------------------------------------------------------------------
@pytest.mark.parametrize("mixer", MIXERS)
@pytest.mark.parametrize("prefill", [1, 9])
def test_decoding_through_the_cache_equals_the_full_forward_at_every_position(mixer: str, prefill: int) -> None:
    model = tiny(mixer, retention_chunk=4)  # a 9-token prefill runs chunkwise; single tokens run recurrently
    ids = torch.randint(0, 40, (2, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(2, 30)
        steps = [model(ids[:, :prefill], cache=cache)]
        steps += [model(ids[:, t : t + 1], cache=cache, start=t) for t in range(prefill, 30)]
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-4)
    assert full[:, 1:].std(1).mean() > 0.1  # the positions' outputs really differ


@pytest.mark.parametrize("mixer", MIXERS)
def test_no_future_token_changes_an_earlier_output(mixer: str) -> None:
    model = tiny(mixer)
    ids = torch.randint(0, 40, (1, 24), generator=torch.Generator().manual_seed(2))
    changed = ids.clone()
    changed[0, 15:] = (changed[0, 15:] + 1) % 40
    with torch.no_grad():
        a, b = model(ids), model(changed)
    # Hyena's FFT sums over every position, so a later token moves earlier outputs by rounding error alone
    assert torch.allclose(a[:, :15], b[:, :15], atol=1e-5)
    assert (a[:, 15:] - b[:, 15:]).abs().max() > 0.1
    x = model.embed(ids).detach().requires_grad_(True)
    out = model.lm_head(model.norm(_blocks(model, x)))
    out[0, 10].sum().backward()
    grad = x.grad[0].abs().sum(-1)  # (T,)
    assert (grad[11:] < 1e-6 * grad[:11].min()).all() and (grad[:11] > 0).all()


def _blocks(model, x):
    rope = model.rotary(torch.arange(x.shape[1])[None], x.shape[1])
    for block in model.blocks:
        x = block(x, None, True, rope)
    return x


@pytest.mark.parametrize("mixer", MIXERS)
def test_batched_prompts_of_different_lengths_generate_what_each_does_alone(mixer: str) -> None:
    model = tiny(mixer)
    prompts = [[1, 2, 3, 4, 5, 6, 7], [9], [4, 4, 8]]
    cfg = GenerationConfig(max_new_tokens=12, temperature=0)
    batched = generate(model, prompts, cfg)
    assert batched == [generate(model, p, cfg)[0] for p in prompts]
    assert len({tuple(r) for r in batched}) == 3


def test_retention_state_does_not_grow_with_the_context() -> None:
    model = tiny("retention")
    assert model.new_cache(1, 64).nbytes() == model.new_cache(1, 4096).nbytes() == 2 * 4 * 8 * 8 * 4


@pytest.mark.parametrize("mixer,targets", [("retention", ["q_proj", "v_proj", "g_proj"]),
                                           ("hyena", ["in_proj", "out_proj"])])
def test_lora_and_quantization_apply_to_the_mixer_projections(mixer: str, targets: list[str]) -> None:
    model = tiny(mixer)
    ids = torch.randint(0, 40, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        base = model(ids)
    lora = P.inject(tiny(mixer), P.LoraConfig(r=4, alpha=8, target_modules=targets))
    wrapped = {n.rsplit(".", 1)[-1] for n, m in lora.named_modules() if type(m).__name__ == "LoraLinear"}
    assert wrapped == set(targets)
    with torch.no_grad():
        assert torch.allclose(lora(ids), base, atol=1e-5)  # B starts at zero
        moved = perturbed(lora, 0)(ids)
    assert (moved - base).abs().max() > 1e-2
    quantize(model, "int8")
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__ == "QuantLinear"}
    assert set(targets) <= names
    with torch.no_grad():
        err = (model(ids) - base).norm() / base.norm()
    assert err < 0.05


@pytest.mark.parametrize("mixer", MIXERS)
def test_checkpoint_round_trip_keeps_the_mixer_and_its_outputs(mixer: str, tmp_path) -> None:
    model = tiny(mixer, hyena_filter_dim=16)
    save_checkpoint(tmp_path / "ckpt", model)
    loaded = load_checkpoint(tmp_path / "ckpt").model.eval()
    assert loaded.config.mixer == mixer and loaded.config.hyena_filter_dim == 16
    ids = torch.randint(0, 40, (1, 20), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))


def test_hyena_filters_keep_their_own_initialisation() -> None:
    """The model's N(0, 0.02) would flatten the filter network's sines; its layers keep PyTorch's init."""
    model = build_model(preset("llama-tiny", vocab_size=40, n_layer=1, mixer="hyena"))
    first = model.blocks[0].attn.filter.mlp[0].weight
    assert first.std() > 0.1
    assert math.isclose(model.blocks[0].attn.in_proj.weight.std().item(), 0.02, rel_tol=0.1)


# --- the command line -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("mixer", MIXERS)
def test_pretrain_and_generate_from_the_command_line(mixer: str, tmp_path) -> None:
    """`--model.mixer` trains through the one loop; `generate` decodes the checkpoint through the mixer's cache
    exactly as the library does on the loaded model."""
    out = tmp_path / mixer
    run = groundup("pretrain", "--model.preset=llama-tiny", f"--model.mixer={mixer}", "--model.n_layer=1",
                   "--model.d_model=32", "--model.n_head=2", "--model.n_kv_head=2", "--model.block_size=32",
                   "--train.batch_size=4", "--train.max_steps=4", "--train.eval_every=0", "--train.progress=false",
                   f"--train.out_dir={out}")
    assert run.returncode == 0, run.stderr
    model, tok = load_pretrained(out / "ckpt")
    assert model.config.mixer == mixer
    shown = groundup("generate", f"--model={out / 'ckpt'}", "--prompt=ROMEO:", "--max_new_tokens=20",
                     "--temperature=0", "--dtype=fp32")
    assert shown.returncode == 0, shown.stderr
    want = generate_text(model, tok, "ROMEO:", GenerationConfig(max_new_tokens=20, temperature=0))
    assert shown.stdout.strip() == ("ROMEO:" + want).strip()


def test_pretrain_refuses_a_retention_model_without_rotation(tmp_path) -> None:
    run = groundup("pretrain", "--model.preset=gpt-tiny", "--model.mixer=retention", "--train.max_steps=1",
                   f"--train.out_dir={tmp_path / 'r'}")
    assert run.returncode != 0 and "set --model.pos='rope'" in run.stderr and not (tmp_path / "r").exists()


# --- serving -------------------------------------------------------------------------------------------------
def test_the_engine_serves_a_retention_model_with_a_state_per_slot() -> None:
    from test_serve_engine import PROMPTS, Collect, run, sampling

    from groundup.serve.engine import Engine, EngineConfig
    from groundup.serve.requests import GenerationRequest

    tok = chat_tokenizer()
    torch.manual_seed(0)
    model = build_model(preset("llama-tiny", vocab_size=tok.vocab_size, n_layer=2, d_model=32, n_head=4, d_ff=48,
                               block_size=64, mixer="retention")).eval()
    perturbed_weights(model)
    engine = Engine(model, tok, EngineConfig(max_batch=3, cache_columns=100, max_prefill_tokens=8))
    assert engine.cache.k == [] and len(engine.cache.state.s) == 2  # no key/value columns are held
    reqs = [GenerationRequest(tok.encode(p), sampling(i, tok), Collect()) for i, p in enumerate(PROMPTS)]
    run(engine, reqs)
    for i, (prompt, req) in enumerate(zip(PROMPTS, reqs, strict=True)):
        assert req.emit.text == generate_text(model, tok, prompt, sampling(i, tok)), f"request {i}"


def perturbed_weights(model) -> None:
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))


def test_the_engine_refuses_a_hyena_model_by_name() -> None:
    from groundup.serve.engine import Engine

    with pytest.raises(ValueError, match="Hyena model.*groundup generate"):
        Engine(tiny("hyena"), chat_tokenizer())


# --- configs that cannot work ---------------------------------------------------------------------------------
@pytest.mark.parametrize("fields,message", [
    (dict(mixer="mamba"), r"ModelConfig.mixer='mamba' is unknown"),
    (dict(mixer="retention", pos="learned"), r"set pos='rope'"),
    (dict(mixer="hyena", pos="alibi"), r"Hyena has none"),
    (dict(mixer="retention", arch="encoder"), r"set mixer='attention'"),
    (dict(mixer="retention", retention_chunk=0), r"retention_chunk=0 must be a positive integer"),
])
def test_bad_mixer_configs_name_the_field(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        preset("llama-tiny", **fields)


def test_prefix_tuning_and_hf_export_refuse_a_model_without_attention() -> None:
    with pytest.raises(P.PeftError, match="mixer is 'retention'.*PromptTuningConfig"):
        P.inject(tiny("retention"), P.PrefixTuningConfig(n_virtual_tokens=2))
    with pytest.raises(ConfigError, match="mixer='hyena'.*save_checkpoint"):
        hf_family(tiny("hyena").config)
