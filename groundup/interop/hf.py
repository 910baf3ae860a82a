"""Hugging Face checkpoints: load a local HF directory, export one, or download one from the Hub.

    load_hf(dir)                  config.json + model.safetensors (or sharded, with its index) + tokenizer.json
                                  -> (groundup model, groundup Tokenizer)
    save_hf(model, tok, dir)      the reverse, loadable by transformers' from_pretrained with identical outputs
    from_hub(repo_id)             huggingface_hub.snapshot_download, then load_hf; fails fast when offline

Families: GPT-2, Llama (SmolLM2, Llama 3 with its rope scaling), Mistral, Mixtral (MoE) -> DecoderLM;
BertForPreTraining -> EncoderForPreTraining; a headless BertModel (e.g. all-MiniLM-L6-v2) -> Encoder; ViTModel and
Dinov2Model -> ViT, CLIPModel -> CLIP (no tokenizer: `(model, None)`). Key names live in hf_keys.py, hf_vision.py
and hf_clip.py.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ..config import ConfigError, ModelConfig
from ..models.clip import CLIP
from ..models.decoder import DecoderLM
from ..models.encoder import Encoder, EncoderForPreTraining
from ..models.vit import ViT
from ..tokenizer import SAVED_ROLES, Tokenizer, declared_id, load_tokenizer, wordpiece_from_vocab
from .hf_clip import clip_from_hf, write_clip_hf
from .hf_config import config_from_hf, config_to_hf, hf_family
from .hf_keys import (
    IGNORED,
    HFFormatError,
    KeyRule,
    bert_rules,
    gpt2_rules,
    groundup_to_hf,
    hf_to_groundup,
    legacy_renamed,
    llama_rules,
)
from .hf_vision import (
    IGNORED_VISION,
    VISION_TYPES,
    extra_export_tensors,
    vision_config_from_hf,
    vision_config_to_hf,
    vision_rules,
)

CONFIG, WEIGHTS, INDEX = "config.json", "model.safetensors", "model.safetensors.index.json"
TOKENIZER, TOKENIZER_CONFIG, VOCAB_TXT = "tokenizer.json", "tokenizer_config.json", "vocab.txt"
CHAT_TEMPLATE = "chat_template.jinja"
# HF classes each family imports from; anything else (e.g. a sequence-classification head) is refused.
ARCHITECTURES = {
    "gpt2": ("GPT2LMHeadModel", "GPT2Model"),
    "llama": ("LlamaForCausalLM", "LlamaModel"),
    "mistral": ("MistralForCausalLM", "MistralModel"),
    "mixtral": ("MixtralForCausalLM", "MixtralModel"),
    "bert": ("BertForPreTraining", "BertModel"),
}
# --- reading ------------------------------------------------------------------------------------------
def read_safetensors(path: str | os.PathLike, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """All tensors of a HF directory: model.safetensors, or the shards its model.safetensors.index.json
    lists. Raises FileNotFoundError naming a missing file and HFFormatError for a truncated/corrupt one."""
    path = Path(path)
    if (path / WEIGHTS).is_file():
        files, weight_map = [path / WEIGHTS], {}
    elif (path / INDEX).is_file():
        try:
            weight_map = json.loads((path / INDEX).read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise HFFormatError(f"{path / INDEX} is not a safetensors index (needs a 'weight_map'): {e}") from e
        files = [path / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{path}: shard file(s) {missing} listed in {INDEX} are missing; download them again "
                "(from_hub / `huggingface-cli download`) or re-save the model"
            )
    else:
        other = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt*"))
        fix = (f"found {other}: only safetensors is read (no pickle); convert with transformers: "
               "from_pretrained(dir).save_pretrained(dir, safe_serialization=True)") if other else "add the weights"
        raise FileNotFoundError(f"{path} has neither {WEIGHTS} nor {INDEX}; {fix}")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():
                    t = f.get_tensor(key)
                    tensors[key] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
        except (SafetensorError, OSError, RuntimeError) as e:
            raise HFFormatError(
                f"{file} is not a readable safetensors file ({e}); it is truncated or corrupt: download it again"
            ) from e
    absent = sorted(k for k, f in weight_map.items() if k not in tensors)
    if absent:
        raise HFFormatError(f"{path / INDEX} lists tensors no shard holds: {absent[:8]}; the shards are stale")
    return tensors


def _architecture(hf: dict[str, Any], tensors: dict[str, torch.Tensor]) -> str:
    family = hf["model_type"]
    supported = ARCHITECTURES[family]
    if family == "bert" and "cls.seq_relationship.weight" in tensors:
        # The full pre-training weights, whatever head class config.json names (bert-base-uncased's says
        # BertForMaskedLM): load them all.
        return "BertForPreTraining"
    archs = hf.get("architectures") or [supported[-1] if family == "bert" else supported[0]]
    unsupported = [a for a in archs if a not in supported]
    if unsupported:
        raise ConfigError(
            f"HF config.json architectures={archs}: groundup has no model for {unsupported}; supported "
            f"architectures: {[a for names in ARCHITECTURES.values() for a in names]}"
        )
    return archs[0]


def _plan(cfg: ModelConfig, hf: dict[str, Any], tensors: dict[str, torch.Tensor]) -> tuple[nn.Module, list, str]:
    """(fresh groundup model, key rules, ignore key) for an HF checkpoint."""
    arch = _architecture(hf, tensors)
    family = hf["model_type"]
    if family == "bert":
        heads = arch == "BertForPreTraining"
        prefix = "bert." if "bert.embeddings.word_embeddings.weight" in tensors else ""
        pooler = f"{prefix}pooler.dense.weight" in tensors  # a BertModel has one unless built without it
        model = EncoderForPreTraining(cfg) if heads else Encoder(cfg, pooler=pooler)
        return model, bert_rules(cfg, heads, prefix, pooler), "bert" if heads else "bert_body"
    model = DecoderLM(cfg)
    if family == "gpt2":
        prefix = "transformer." if "transformer.wte.weight" in tensors else ""
        return model, gpt2_rules(cfg, prefix), "gpt2"
    prefix = "model." if "model.embed_tokens.weight" in tensors else ""
    fused = any(k.endswith(".mlp.experts.gate_up_proj") for k in tensors)  # Mixtral as transformers 5 holds it
    return model, llama_rules(cfg, prefix, fused), "llama"


def _tied_names(model: nn.Module) -> dict[str, str]:
    """Second name of a shared parameter -> its first name (e.g. lm_head.weight -> embed.tok_emb.weight)."""
    first: dict[int, str] = {}
    alias = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            alias[name] = first[id(p)]
        else:
            first[id(p)] = name
    return alias


def load_into(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Strict load: every groundup tensor present with the right shape, nothing extra; tied pairs agree."""
    for name, source in _tied_names(model).items():
        if name not in state and source in state:
            state[name] = state[source]
        elif name in state and source in state and not torch.equal(state[name], state[source]):
            raise HFFormatError(
                f"{where}: {name} and {source} differ but the config ties them; set tie_word_embeddings=false "
                "in config.json (or re-save the checkpoint)"
            )
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        raise HFFormatError(
            f"{where} does not fit {type(model).__name__}: missing {missing[:8]}, unexpected {unexpected[:8]}, "
            f"shape mismatches {shapes[:8]}; config.json and the weights disagree"
        )
    model.load_state_dict(state, strict=True)


def _special_ids(path: Path, hf: dict[str, Any], tok: Tokenizer) -> None:
    """bos/eos as the checkpoint declares them: tokenizer_config.json's tokens, else config.json's ids."""
    tok_cfg = json.loads((path / TOKENIZER_CONFIG).read_text()) if (path / TOKENIZER_CONFIG).is_file() else {}
    for role in SAVED_ROLES:
        found = declared_id(tok, tok_cfg.get(f"{role}_token"))
        if found is None:
            ids = hf.get(f"{role}_token_id")
            found = ids[0] if isinstance(ids, list) and ids else ids
        if isinstance(found, int) and 0 <= found < tok.vocab_size:
            tok.set_role(role, found)  # the Tokenizer finds roles by token name; the checkpoint's word wins


def has_tokenizer(path: str | os.PathLike) -> bool:
    """Whether a Hugging Face folder holds tokenizer files load_hf reads (tokenizer.json, or BERT's vocab.txt)."""
    return (Path(path) / TOKENIZER).is_file() or (Path(path) / VOCAB_TXT).is_file()


def _load_tokenizer(path: Path, hf: dict[str, Any], cfg: ModelConfig) -> Tokenizer:
    if (path / TOKENIZER).is_file():
        tok = load_tokenizer(path / TOKENIZER)
    elif (path / VOCAB_TXT).is_file():
        tok_cfg = json.loads((path / TOKENIZER_CONFIG).read_text()) if (path / TOKENIZER_CONFIG).is_file() else {}
        tok = wordpiece_from_vocab(path / VOCAB_TXT, lowercase=bool(tok_cfg.get("do_lower_case", True)))
    else:
        raise FileNotFoundError(
            f"{path} has no {TOKENIZER} (or BERT {VOCAB_TXT}); add the tokenizer files, or call "
            "load_hf(path, with_tokenizer=False) to load the weights alone"
        )
    # transformers ignores padding/truncation saved in tokenizer.json (sentence-transformers saves them);
    # so does groundup: encode() returns exactly the text's ids, and batching pads explicitly.
    tok.backend.no_padding()
    tok.backend.no_truncation()
    if tok.vocab_size > cfg.vocab_size:
        raise HFFormatError(
            f"{path}: the tokenizer has {tok.vocab_size} ids but the model's vocab_size is {cfg.vocab_size}, so "
            "some token ids have no embedding row; the tokenizer belongs to another model: use the matching "
            "tokenizer.json (a model vocabulary padded beyond the tokenizer's is fine, the reverse is not)"
        )
    _special_ids(path, hf, tok)
    tok.chat_template = _chat_template(path)
    return tok


def _chat_template(path: Path) -> str | None:
    """transformers keeps the template in chat_template.jinja (new) or tokenizer_config.json (old)."""
    if (path / CHAT_TEMPLATE).is_file():
        return (path / CHAT_TEMPLATE).read_text()
    tok_cfg = json.loads((path / TOKENIZER_CONFIG).read_text()) if (path / TOKENIZER_CONFIG).is_file() else {}
    template = tok_cfg.get("chat_template")
    return template if isinstance(template, str) else None


def load_hf(
    path: str | os.PathLike, dtype: torch.dtype | None = None, with_tokenizer: bool = True
) -> tuple[nn.Module, Tokenizer | None]:
    """Load a local Hugging Face model directory as (groundup model in eval mode, Tokenizer).

    Weights are float32 unless `dtype` is given. Every tensor must map: missing or unknown tensors,
    a missing shard, a corrupt file or a tokenizer larger than the model's vocabulary raise with the fix."""
    path = Path(path)
    if not (path / CONFIG).is_file():
        what = "directory has no" if path.is_dir() else "path is not a directory with a"
        raise FileNotFoundError(f"load_hf({str(path)!r}): the {what} {CONFIG}; pass a Hugging Face model directory")
    try:
        hf = json.loads((path / CONFIG).read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path / CONFIG} is not valid JSON ({e}); download or re-save it") from e
    if hf.get("model_type") in VISION_TYPES:
        return _load_vision(path, hf, dtype), None
    if hf.get("model_type") == "clip":  # no tokenizer: groundup.tokenizer_clip.ClipTokenizer gives CLIP's ids
        model = clip_from_hf(hf, read_safetensors(path, dtype or torch.float32), str(path))
        return model.to(dtype or torch.float32).eval(), None
    if hf.get("model_type") == "whisper":  # its tokenizer: groundup.speech.load_whisper pairs the two
        from .hf_whisper import load_hf_whisper

        return load_hf_whisper(path, dtype), None
    cfg = config_from_hf(hf)
    cfg.extra.update(source=str(path))
    tokenizer = _load_tokenizer(path, hf, cfg) if with_tokenizer else None
    tensors = legacy_renamed(read_safetensors(path, dtype or torch.float32))
    model, rules, ignore = _plan(cfg, hf, tensors)
    state = hf_to_groundup(rules, tensors, IGNORED[ignore], where=str(path))
    load_into(model, state, str(path))
    if dtype is not None:
        model.to(dtype)
    return model.eval(), tokenizer


def _load_vision(path: Path, hf: dict[str, Any], dtype: torch.dtype | None) -> ViT:
    tensors = read_safetensors(path, dtype or torch.float32)
    cfg = vision_config_from_hf(hf, tensors)
    cfg.extra.update(source=str(path))
    model = ViT(cfg)
    state = hf_to_groundup(vision_rules(cfg, hf["model_type"]), tensors, IGNORED_VISION, where=str(path))
    load_into(model, state, str(path))
    return model.to(dtype or torch.float32).eval()


# --- writing ------------------------------------------------------------------------------------------
def _export_plan(model: nn.Module) -> tuple[ModelConfig, str, list[KeyRule]]:
    from ..quant import QuantLinear

    cfg = getattr(model, "config", None)
    if not isinstance(model, (DecoderLM, Encoder, EncoderForPreTraining)) or not isinstance(cfg, ModelConfig):
        raise ConfigError(
            f"save_hf cannot export a {type(model).__name__}; it exports DecoderLM (GPT-2 / Llama / Mixtral), "
            "EncoderForPreTraining (BertForPreTraining) and Encoder (BertModel)"
        )
    quantized = sorted({m.fmt for m in model.modules() if isinstance(m, QuantLinear)})
    if quantized:
        raise ConfigError(
            f"save_hf: the model is quantized ({', '.join(quantized)}) and a Hugging Face folder holds float weights; "
            "dequantize it first: groundup.quant.dequantize(model) (from the command line: groundup convert "
            "--dequantize)"
        )
    family = hf_family(cfg)
    if isinstance(model, DecoderLM):
        arch = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "mixtral": "MixtralForCausalLM"}[family]
        return cfg, arch, gpt2_rules(cfg) if family == "gpt2" else llama_rules(cfg)
    heads = isinstance(model, EncoderForPreTraining)
    pooler = heads or model.pooler is not None
    return cfg, "BertForPreTraining" if heads else "BertModel", bert_rules(cfg, heads, pooler=pooler)


def _special_tokens(tokenizer: Tokenizer) -> dict[str, Any]:
    roles = ("bos", "eos", "pad", "unk", "cls", "sep", "mask")
    ids = {role: getattr(tokenizer, f"{role}_id") for role in roles}
    tokens = {f"{r}_token": tokenizer.id_to_token(i) for r, i in ids.items() if i is not None}
    return {"ids": {f"{r}_token_id": i for r, i in ids.items() if i is not None and r in ("bos", "eos", "pad")},
            "tokens": tokens}


def _write_vision(tmp: Path, model: ViT) -> None:
    cfg = model.config
    hf_cfg = vision_config_to_hf(cfg)
    kind = hf_cfg["model_type"]
    state = model.state_dict()
    tensors = groundup_to_hf(vision_rules(cfg, kind), state)
    tensors.update(extra_export_tensors(cfg, kind, state["pos_embed"].dtype))
    hf_cfg["torch_dtype"] = str(state["pos_embed"].dtype).removeprefix("torch.")
    (tmp / CONFIG).write_text(json.dumps(hf_cfg, indent=2))
    save_file({k: v.cpu() for k, v in tensors.items()}, str(tmp / WEIGHTS), metadata={"format": "pt"})


def _write(tmp: Path, model: nn.Module, tokenizer: Tokenizer | None) -> None:
    if isinstance(model, ViT):
        return _write_vision(tmp, model)
    if isinstance(model, CLIP):
        return write_clip_hf(tmp, model, tokenizer)
    cfg, arch, rules = _export_plan(model)
    hf_cfg = config_to_hf(cfg, arch)
    state = model.state_dict()
    covered = {n for rule in rules for n in rule.ours} | set(_tied_names(model))
    lost = sorted(set(state) - covered)
    if lost:
        raise ConfigError(f"save_hf: no HF name for groundup tensors {lost[:8]}; {arch} cannot hold this model")
    tensors = groundup_to_hf(rules, state)
    if arch.startswith("Bert") and cfg.n_segment == 0:  # HF always adds a token-type row: a zero one is a no-op
        prefix = "bert." if arch == "BertForPreTraining" else ""
        dtype = state[rules[0].ours[0]].dtype
        tensors[f"{prefix}embeddings.token_type_embeddings.weight"] = torch.zeros(1, cfg.d_model, dtype=dtype)
    if tokenizer is not None:
        if tokenizer.vocab_size > cfg.vocab_size:
            raise HFFormatError(
                f"save_hf: the tokenizer has {tokenizer.vocab_size} ids but the model's vocab_size is "
                f"{cfg.vocab_size}; pass the tokenizer the model was trained with"
            )
        special = _special_tokens(tokenizer)
        hf_cfg.update(special["ids"])
        tokenizer.save(tmp / TOKENIZER)
        tok_cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": cfg.block_size,
                   **special["tokens"]}
        (tmp / TOKENIZER_CONFIG).write_text(json.dumps(tok_cfg, indent=2))
    floats = [t.dtype for t in tensors.values() if t.is_floating_point()]
    if floats:  # what from_pretrained(dtype="auto") loads them as (transformers 5 reads `dtype`, 4.x `torch_dtype`)
        hf_cfg["torch_dtype"] = str(max(set(floats), key=floats.count)).removeprefix("torch.")
    (tmp / CONFIG).write_text(json.dumps(hf_cfg, indent=2))
    save_file({k: v.cpu() for k, v in tensors.items()}, str(tmp / WEIGHTS), metadata={"format": "pt"})


def save_hf(model: nn.Module, tokenizer: Tokenizer | None, out_dir: str | os.PathLike) -> Path:
    """Export a groundup model (+ tokenizer) as a Hugging Face directory that transformers'
    AutoModelForCausalLM / AutoModelForPreTraining / AutoModel load with identical outputs.

    Written into a temp directory beside out_dir and renamed into place: on any error nothing is written,
    and an existing out_dir is replaced only once the new one is complete."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"save_hf(out_dir={str(out)!r}): a file is in the way; pass a directory path")
    from ..train.checkpoint import staging_dir, usual_modes

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_dir(out)
    old = out.parent / f".{out.name}.old"
    try:
        _write(tmp, model, tokenizer)
        usual_modes(tmp)  # readable like any folder (mkdtemp's 0700 and safetensors' 0600 are owner-only)
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
    except BaseException:
        if old.exists() and not out.exists():
            os.replace(old, out)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return out
