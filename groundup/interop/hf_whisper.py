"""Hugging Face WhisperForConditionalGeneration <-> groundup Whisper: config mapping and the key table.

    HF (a fresh save_pretrained's names)                              groundup Whisper
    model.encoder.conv1 / conv2                                        encoder.conv1 / conv2
    model.encoder.embed_positions.weight (sinusoids, saved)           encoder.positions (a buffer, saved)
    model.{encoder,decoder}.layers.i.self_attn.{q,v}_proj             {encoder,decoder}.blocks.i.attn.{q,v}_proj
        .self_attn.k_proj (weight only: HF's key has no bias)          .attn.k_proj (its bias: zeros on import)
        .self_attn.out_proj / .self_attn_layer_norm                   .attn.o_proj / .attn_norm
        .fc1 / .fc2 / .final_layer_norm                               .mlp.up_proj / .mlp.down_proj / .mlp_norm
    model.decoder.layers.i.encoder_attn.{q,k,v,out}_proj              decoder.blocks.i.cross_attn.{q,k,v,o}_proj
        .encoder_attn_layer_norm                                       .cross_norm
    model.{encoder,decoder}.layer_norm                                {encoder,decoder}.norm
    model.decoder.embed_tokens / embed_positions                      decoder.embed.tok_emb / pos_emb
    proj_out.weight (tied; files may leave it out)                    lm_head.weight (tied to tok_emb)

A headless WhisperModel file has the same names without "model.". A key bias adds the same q·b to every score of
a query, which softmax ignores: dropping groundup's k_proj biases on export is exact, whatever their values.

    save_hf_whisper(model, folder)   config.json + generation_config.json + preprocessor_config.json +
                                     model.safetensors (+ the tokenizer files of tokenizer_dir)
    load_hf_whisper(folder)          -> Whisper (eval mode); `transformers` is not needed for either
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..config import ConfigError
from ..models.whisper import Whisper, WhisperConfig
from .hf_keys import KeyRule, _wb, groundup_to_hf, hf_to_groundup

CONFIG, GENERATION, PREPROCESSOR, WEIGHTS = ("config.json", "generation_config.json", "preprocessor_config.json",
                                             "model.safetensors")
ARCHITECTURES = ("WhisperForConditionalGeneration", "WhisperModel")
# transformers' WhisperConfig defaults, for the keys a config.json leaves out (transformers reads them so too)
HF_DEFAULTS: dict[str, Any] = dict(
    vocab_size=51865, num_mel_bins=80, encoder_layers=4, encoder_attention_heads=6, decoder_layers=4,
    decoder_attention_heads=6, encoder_ffn_dim=1536, decoder_ffn_dim=1536, d_model=384, max_source_positions=1500,
    max_target_positions=448, activation_function="gelu", scale_embedding=False, tie_word_embeddings=True,
    decoder_start_token_id=50257, bos_token_id=50256, eos_token_id=50256, pad_token_id=50256, suppress_tokens=None,
    begin_suppress_tokens=[220, 50256], use_weighted_layer_sum=False)
ID_KEYS = ("decoder_start_token_id", "bos_token_id", "eos_token_id", "pad_token_id")
# generation_config.json keys groundup's WhisperConfig holds itself; the rest is carried in extra["hf_generation"]
OWN_GENERATION_KEYS = ("suppress_tokens", "begin_suppress_tokens", "alignment_heads", *ID_KEYS, "max_length",
                       "transformers_version", "_from_model_config")
# tensors transformers' own files may carry that are not weights
IGNORED_WHISPER: tuple[str, ...] = ()


def special_ids(cfg: WhisperConfig) -> dict[str, int]:
    """config.json's token ids: the ones an imported checkpoint declared, else Whisper's own for the vocabulary
    (English-only: <|endoftext|> 50256, <|startoftranscript|> 50257; multilingual: 50257, 50258), with bos, eos and
    pad all <|endoftext|> as HF's Whisper tokenizer has them."""
    if cfg.multilingual:
        ids = dict(decoder_start_token_id=50258, bos_token_id=50257, eos_token_id=50257, pad_token_id=50257)
    else:
        ids = dict(decoder_start_token_id=50257, bos_token_id=50256, eos_token_id=50256, pad_token_id=50256)
    return {**ids, **cfg.extra.get("hf_ids", {})}


def whisper_config_from_hf(hf: dict[str, Any], generation: dict[str, Any] | None = None) -> WhisperConfig:
    """The WhisperConfig of a Whisper folder's config.json (and its generation_config.json, which holds the
    alignment heads and, in newer saves, the suppression lists). Raises ConfigError for what it cannot hold."""
    if hf.get("model_type", "whisper") != "whisper":
        raise ConfigError(f"whisper: config.json model_type={hf.get('model_type')!r}; load_hf_whisper reads "
                          "model_type 'whisper' (load other models with groundup.interop.load_hf)")
    archs = [a for a in hf.get("architectures") or [] if a not in ARCHITECTURES]
    if archs:
        raise ConfigError(f"whisper: config.json architectures={archs} are not supported; groundup imports "
                          f"{list(ARCHITECTURES)} (save that with WhisperForConditionalGeneration.save_pretrained)")
    c = {**HF_DEFAULTS, **hf}
    gen = generation or {}
    sizes = ("num_mel_bins", "max_source_positions", "encoder_layers", "max_target_positions", "decoder_layers",
             "d_model", "encoder_attention_heads", "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim",
             "vocab_size")
    wrong = [f"{k}={c[k]!r}" for k in sizes if not isinstance(c[k], int) or isinstance(c[k], bool) or c[k] <= 0]
    if wrong:
        raise ConfigError(f"whisper: config.json {', '.join(wrong)} must be positive integers; fix config.json")
    d = c["d_model"]
    fixes = [
        ("encoder_attention_heads", c["encoder_attention_heads"] == c["decoder_attention_heads"],
         f"{c['encoder_attention_heads']} differs from decoder_attention_heads={c['decoder_attention_heads']}; "
         "groundup's Whisper has one head count for both"),
        ("encoder_ffn_dim", c["encoder_ffn_dim"] == 4 * d, f"{c['encoder_ffn_dim']} must be 4 * d_model = {4 * d}"),
        ("decoder_ffn_dim", c["decoder_ffn_dim"] == 4 * d, f"{c['decoder_ffn_dim']} must be 4 * d_model = {4 * d}"),
        ("activation_function", c["activation_function"] == "gelu",
         f"{c['activation_function']!r} is not supported; Whisper's MLP is exact 'gelu'"),
        ("scale_embedding", c["scale_embedding"] is False,
         f"{c['scale_embedding']!r} is not supported; groundup's Whisper does not scale its token embeddings "
         "by sqrt(d_model)"),
        ("tie_word_embeddings", c["tie_word_embeddings"] is True,
         f"{c['tie_word_embeddings']!r} is not supported; groundup's Whisper ties proj_out to embed_tokens"),
        ("use_weighted_layer_sum", c["use_weighted_layer_sum"] is False,
         f"{c['use_weighted_layer_sum']!r} is not supported (an audio-classification option)"),
    ]
    bad = [f"{name}={why}" for name, ok, why in fixes if not ok]
    if bad:
        raise ConfigError(f"whisper: config.json {'; '.join(bad)}: groundup's Whisper cannot hold this model")
    for name in ("suppress_tokens", "begin_suppress_tokens"):
        value = gen.get(name, c[name])
        if value is not None and not (isinstance(value, list) and all(isinstance(t, int) for t in value)):
            raise ConfigError(f"whisper: {name}={value!r} must be a list of token ids (or null)")
    heads = gen.get("alignment_heads") or []
    if not all(isinstance(h, (list, tuple)) and len(h) == 2 for h in heads):
        raise ConfigError(f"whisper: generation_config.json alignment_heads={heads!r} must be [layer, head] pairs")
    extra: dict[str, Any] = {"hf_model_type": "whisper", "hf_ids": {k: c[k] for k in ID_KEYS}}
    carried = {k: v for k, v in gen.items() if k not in OWN_GENERATION_KEYS}
    if carried:  # lang_to_id, task_to_id, no_timestamps_token_id...: written back on export
        extra["hf_generation"] = carried
    return WhisperConfig(
        n_mels=c["num_mel_bins"], n_audio_ctx=c["max_source_positions"], n_audio_layer=c["encoder_layers"],
        n_text_ctx=c["max_target_positions"], n_text_layer=c["decoder_layers"], d_model=d,
        n_head=c["encoder_attention_heads"], n_vocab=c["vocab_size"],
        suppress_tokens=list(gen.get("suppress_tokens", c["suppress_tokens"]) or []),
        begin_suppress_tokens=list(gen.get("begin_suppress_tokens", c["begin_suppress_tokens"]) or []),
        alignment_heads=[[int(a), int(b)] for a, b in heads], extra=extra)


def whisper_config_to_hf(cfg: WhisperConfig) -> dict[str, Any]:
    """config.json of a WhisperForConditionalGeneration that computes what this Whisper computes."""
    return {
        "model_type": "whisper", "architectures": ["WhisperForConditionalGeneration"], "vocab_size": cfg.n_vocab,
        "num_mel_bins": cfg.n_mels, "d_model": cfg.d_model, "encoder_layers": cfg.n_audio_layer,
        "decoder_layers": cfg.n_text_layer, "encoder_attention_heads": cfg.n_head,
        "decoder_attention_heads": cfg.n_head, "encoder_ffn_dim": 4 * cfg.d_model, "decoder_ffn_dim": 4 * cfg.d_model,
        "max_source_positions": cfg.n_audio_ctx, "max_target_positions": cfg.n_text_ctx,
        "activation_function": "gelu", "scale_embedding": False, "tie_word_embeddings": True,
        "is_encoder_decoder": True, "use_cache": True, "dropout": 0.0, "attention_dropout": 0.0,
        "activation_dropout": 0.0, "encoder_layerdrop": 0.0, "decoder_layerdrop": 0.0, **special_ids(cfg),
        "suppress_tokens": list(cfg.suppress_tokens), "begin_suppress_tokens": list(cfg.begin_suppress_tokens),
    }


def vocabulary_layout(cfg: WhisperConfig) -> dict[str, Any]:
    """What WhisperForConditionalGeneration.generate needs to know of the special tokens (timestamps, previous-text
    prompts, tasks, languages), for OpenAI's vocabulary layout: <|endoftext|> <|startoftranscript|>, one token per
    language, translate, transcribe, startoflm, startofprev, nospeech, notimestamps, then 1501 timestamps. {} for
    another vocabulary (its generation_config.json has to come from elsewhere)."""
    from ..tokenizer_whisper import LANGUAGES, N_TIMESTAMPS

    sot = 50257 + cfg.multilingual
    n_lang = cfg.n_vocab - N_TIMESTAMPS - 7 - sot
    if not 0 < n_lang <= len(LANGUAGES):
        return {}
    no_timestamps = cfg.n_vocab - N_TIMESTAMPS - 1
    out: dict[str, Any] = {"is_multilingual": cfg.multilingual, "no_timestamps_token_id": no_timestamps,
                           "prev_sot_token_id": no_timestamps - 2, "max_initial_timestamp_index": 50}
    if cfg.multilingual:
        out["lang_to_id"] = {f"<|{code}|>": sot + 1 + j for j, code in enumerate(list(LANGUAGES)[:n_lang])}
        out["task_to_id"] = {"translate": no_timestamps - 5, "transcribe": no_timestamps - 4}
    return out


def whisper_generation_config(cfg: WhisperConfig) -> dict[str, Any]:
    """generation_config.json: the suppression lists, the alignment heads (word timestamps), the ids and the
    special-token layout; what an imported checkpoint's file held besides is written back as it was."""
    out = {**vocabulary_layout(cfg), **cfg.extra.get("hf_generation", {}), **special_ids(cfg),
           "max_length": cfg.n_text_ctx, "suppress_tokens": list(cfg.suppress_tokens),
           "begin_suppress_tokens": list(cfg.begin_suppress_tokens)}
    if cfg.alignment_heads:
        out["alignment_heads"] = [list(h) for h in cfg.alignment_heads]
    return out


def _layer_rules(h: str, b: str, cross: bool) -> list[KeyRule]:
    rows = []
    for hf_attn, ours_attn, hf_norm, ours_norm in (("self_attn", "attn", "self_attn_layer_norm", "attn_norm"),
                                                   ("encoder_attn", "cross_attn", "encoder_attn_layer_norm",
                                                    "cross_norm"))[: 2 if cross else 1]:
        rows += _wb(f"{h}.{hf_attn}.q_proj", f"{b}.{ours_attn}.q_proj", True)
        rows += _wb(f"{h}.{hf_attn}.k_proj", f"{b}.{ours_attn}.k_proj", False)  # no bias: ZERO_BIASES
        rows += _wb(f"{h}.{hf_attn}.v_proj", f"{b}.{ours_attn}.v_proj", True)
        rows += _wb(f"{h}.{hf_attn}.out_proj", f"{b}.{ours_attn}.o_proj", True)
        rows += _wb(f"{h}.{hf_norm}", f"{b}.{ours_norm}", True)
    rows += _wb(f"{h}.fc1", f"{b}.mlp.up_proj", True) + _wb(f"{h}.fc2", f"{b}.mlp.down_proj", True)
    return rows + _wb(f"{h}.final_layer_norm", f"{b}.mlp_norm", True)


def whisper_rules(cfg: WhisperConfig, prefix: str = "model.") -> list[KeyRule]:
    """Every HF tensor of WhisperForConditionalGeneration (prefix 'model.') or WhisperModel (prefix '') and the
    groundup tensor it is; groundup's k_proj biases have no row (zero_biases)."""
    p = prefix
    rows = _wb(f"{p}encoder.conv1", "encoder.conv1", True) + _wb(f"{p}encoder.conv2", "encoder.conv2", True)
    rows.append(KeyRule(f"{p}encoder.embed_positions.weight", ("encoder.positions",)))
    for i in range(cfg.n_audio_layer):
        rows += _layer_rules(f"{p}encoder.layers.{i}", f"encoder.blocks.{i}", cross=False)
    rows += _wb(f"{p}encoder.layer_norm", "encoder.norm", True)
    rows += [KeyRule(f"{p}decoder.embed_tokens.weight", ("decoder.embed.tok_emb.weight",)),
             KeyRule(f"{p}decoder.embed_positions.weight", ("decoder.embed.pos_emb.weight",))]
    for i in range(cfg.n_text_layer):
        rows += _layer_rules(f"{p}decoder.layers.{i}", f"decoder.blocks.{i}", cross=True)
    rows += _wb(f"{p}decoder.layer_norm", "decoder.norm", True)
    if p:  # the head of WhisperForConditionalGeneration, tied: transformers may store it or not
        rows.append(KeyRule("proj_out.weight", ("lm_head.weight",), optional=True))
    return rows


def zero_biases(cfg: WhisperConfig) -> list[str]:
    """groundup's key biases, which HF's Whisper does not have: zeros on import, dropped (exactly) on export."""
    names = [f"encoder.blocks.{i}.attn.k_proj.bias" for i in range(cfg.n_audio_layer)]
    for i in range(cfg.n_text_layer):
        names += [f"decoder.blocks.{i}.attn.k_proj.bias", f"decoder.blocks.{i}.cross_attn.k_proj.bias"]
    return names


def hf_prefix(tensors: dict[str, torch.Tensor]) -> str:
    return "" if "encoder.conv1.weight" in tensors and "model.encoder.conv1.weight" not in tensors else "model."


def hf_state_to_ours(cfg: WhisperConfig, tensors: dict[str, torch.Tensor], where: str = "checkpoint"
                     ) -> dict[str, torch.Tensor]:
    """HF names -> groundup names (the tied lm_head.weight only where the file stores proj_out). Raises
    HFFormatError naming every missing and every unexpected tensor."""
    state = hf_to_groundup(whisper_rules(cfg, hf_prefix(tensors)), tensors, IGNORED_WHISPER, where=where)
    like = state["encoder.conv1.bias"]
    for name in zero_biases(cfg):
        state[name] = torch.zeros(cfg.d_model, dtype=like.dtype, device=like.device)
    return state


def ours_state_to_hf(cfg: WhisperConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """groundup names -> HF names (WhisperForConditionalGeneration's; proj_out left out, as transformers saves a
    tied head). Raises ConfigError if the state holds a tensor the table has no HF name for."""
    rules = whisper_rules(cfg)
    covered = {n for rule in rules for n in rule.ours} | set(zero_biases(cfg))
    lost = sorted(set(state) - covered)
    if lost:
        raise ConfigError(f"save_hf_whisper: no HF name for groundup tensors {lost[:8]}; "
                          "WhisperForConditionalGeneration cannot hold this model (is it quantized or adapted? "
                          "dequantize / merge it first)")
    return groundup_to_hf(rules, state)


def whisper_to_hf_state(model: Whisper) -> dict[str, torch.Tensor]:
    """The model's tensors under WhisperForConditionalGeneration's names."""
    return ours_state_to_hf(model.config, model.state_dict())


def whisper_from_hf_state(cfg: WhisperConfig, state: dict[str, torch.Tensor], where: str = "checkpoint") -> Whisper:
    """A Whisper (eval mode, float32 unless the tensors are another dtype) holding HF-named tensors; every tensor
    is accounted for and every shape checked. A stored proj_out must equal embed_tokens (the two are tied)."""
    from .hf import load_into  # hf.py may import this module

    ours = hf_state_to_ours(cfg, state, where)
    dtype = ours["encoder.conv1.weight"].dtype
    model = Whisper(cfg)
    load_into(model, ours, where)  # lm_head.weight: filled from tok_emb when absent, checked equal when present
    return model.to(dtype).eval()


def load_hf_whisper(folder: str | os.PathLike, dtype: torch.dtype | None = None) -> Whisper:
    """Whisper from a Hugging Face folder (config.json, generation_config.json if present, model.safetensors or
    shards), in eval mode; float32 unless dtype is given."""
    from .hf import read_safetensors

    folder = Path(folder)
    if not (folder / CONFIG).is_file():
        raise FileNotFoundError(f"load_hf_whisper({str(folder)!r}): no {CONFIG} there; pass a Hugging Face Whisper "
                                "folder (WhisperForConditionalGeneration.save_pretrained writes one)")
    hf = _read_json(folder / CONFIG)
    generation = _read_json(folder / GENERATION) if (folder / GENERATION).is_file() else None
    cfg = whisper_config_from_hf(hf, generation)
    cfg.extra["source"] = str(folder)
    return whisper_from_hf_state(cfg, read_safetensors(folder, dtype or torch.float32), str(folder))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e}); download or re-save it") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path} holds a {type(data).__name__}, not a JSON object; download or re-save it")
    return data


# files of a tokenizer folder that transformers' WhisperTokenizer / WhisperProcessor read
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "added_tokens.json",
                   "special_tokens_map.json", "normalizer.json", PREPROCESSOR)


def preprocessor_config(cfg: WhisperConfig) -> dict[str, Any]:
    """WhisperFeatureExtractor's settings: 16 kHz, 25 ms windows, 10 ms hops, 30 s windows of n_mels bands."""
    return {"feature_extractor_type": "WhisperFeatureExtractor", "processor_class": "WhisperProcessor",
            "feature_size": cfg.n_mels, "sampling_rate": 16000, "n_fft": 400, "hop_length": 160, "chunk_length": 30,
            "n_samples": 480000, "nb_max_frames": 2 * cfg.n_audio_ctx, "padding_side": "right", "padding_value": 0.0,
            "return_attention_mask": False}


def _replace_atomically(path: Path, write) -> None:
    """write(tmp) to a temporary name beside path, give it a plain file's mode, then rename it over path."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        os.close(os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o666))  # the umask's usual mode
        mode = tmp.stat().st_mode & 0o777
        write(tmp)
        os.chmod(tmp, mode)  # safetensors writes owner-only files
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_json(path: Path, data: dict[str, Any]) -> None:
    _replace_atomically(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))


def save_hf_whisper(model: Whisper, folder: str | os.PathLike, tokenizer_dir: str | os.PathLike | None = None
                    ) -> Path:
    """A folder transformers' WhisperForConditionalGeneration.from_pretrained loads with identical logits:
    model.safetensors (the model's dtype), config.json, generation_config.json, preprocessor_config.json, and the
    tokenizer files found in tokenizer_dir (e.g. a CTranslate2 folder's tokenizer.json). Each file is written to
    a temporary name and renamed into place, the weights first."""
    if not isinstance(model, Whisper):
        raise ConfigError(f"save_hf_whisper exports a groundup Whisper, not a {type(model).__name__} (use save_hf)")
    cfg = model.config
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"save_hf_whisper(folder={str(folder)!r}): a file is in the way; pass a directory path")
    copies: list[Path] = []
    if tokenizer_dir is not None:
        src = Path(tokenizer_dir)
        copies = [src / n for n in TOKENIZER_FILES if (src / n).is_file()]
        if not any(p.name in ("tokenizer.json", "vocab.json") for p in copies):
            raise FileNotFoundError(f"save_hf_whisper(tokenizer_dir={str(src)!r}): no tokenizer.json or vocab.json "
                                    f"there; pass the folder the model's tokenizer files are in, or None")
    hf_cfg = whisper_config_to_hf(cfg)
    tensors = {k: v.detach().cpu().contiguous() for k, v in whisper_to_hf_state(model).items()}
    hf_cfg["torch_dtype"] = str(tensors["model.encoder.conv1.weight"].dtype).removeprefix("torch.")
    folder.mkdir(parents=True, exist_ok=True)
    _replace_atomically(folder / WEIGHTS, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    _write_json(folder / CONFIG, hf_cfg)
    _write_json(folder / GENERATION, whisper_generation_config(cfg))
    for path in copies:
        _replace_atomically(folder / path.name, lambda tmp, path=path: shutil.copyfile(path, tmp))
    if not (folder / PREPROCESSOR).is_file():
        _write_json(folder / PREPROCESSOR, preprocessor_config(cfg))
    return folder


__all__ = ["hf_state_to_ours", "load_hf_whisper", "ours_state_to_hf", "save_hf_whisper",
           "whisper_config_from_hf", "whisper_config_to_hf", "whisper_from_hf_state", "whisper_generation_config",
           "whisper_rules", "whisper_to_hf_state", "zero_biases"]
