"""Load a GGUF file (llama.cpp's single-file format: metadata + tokenizer + quantized tensors) as a
groundup DecoderLM, its Tokenizer and the file's metadata.

    file.gguf ─ GGUFReader ─┬─ {arch}.* metadata ── GGUF_CONFIG_KEYS ──> ModelConfig ──> DecoderLM
                            ├─ tensors ─ dequantize ─ GGUF_TO_GROUNDUP ─ un-permute q/k ─┘ (state dict)
                            └─ tokenizer.ggml.* ──> byte-level BPE Tokenizer (+ tokenizer.chat_template)

llama.cpp stores each rotary head of attn_q / attn_k with its dimensions interleaved in pairs
(x0, x_{D/2}, x1, x_{D/2+1}, ...) because its RoPE rotates adjacent pairs; groundup's RoPE rotates
(x_i, x_{i+D/2}), so the rows are put back in half-split order (the inverse of `permute` in
llama.cpp's convert_hf_to_gguf.py, as transformers' GGUF loader does).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType
from gguf.quants import dequantize
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
from torch import nn

from ..config import LLAMA, ModelConfig
from ..models.decoder import DecoderLM
from ..tokenizer import Tokenizer

__all__ = [
    "GGUFError", "load_gguf", "read_gguf", "gguf_metadata", "gguf_config", "gguf_tokenizer", "dequantize_tensor",
    "GGUF_TO_GROUNDUP", "GGUF_CONFIG_KEYS", "SUPPORTED_ARCHITECTURES", "SUPPORTED_TYPES",
]


class GGUFError(ValueError):
    """A GGUF file cannot be loaded; the message names the file, the field or tensor, and the fix."""


SUPPORTED_ARCHITECTURES = ("llama",)

# ggml tensor types we turn into torch tensors. The block formats are decoded by the `gguf` package
# (numpy); tests/test_gguf.py checks each against the format's formula or an independent decoder.
T = GGMLQuantizationType
SUPPORTED_TYPES = (
    T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K,
)
_SUPPORTED_NAMES = [t.name for t in SUPPORTED_TYPES]

# GGUF tensor name -> groundup state-dict key; "{i}" is the block index.
GGUF_TO_GROUNDUP: dict[str, str] = {
    "token_embd.weight": "embed.tok_emb.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "blocks.{i}.attn_norm.weight",
    "blk.{i}.attn_q.weight": "blocks.{i}.attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "blocks.{i}.attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "blocks.{i}.attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "blocks.{i}.attn.o_proj.weight",
    "blk.{i}.ffn_norm.weight": "blocks.{i}.mlp_norm.weight",
    "blk.{i}.ffn_gate.weight": "blocks.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "blocks.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "blocks.{i}.mlp.down_proj.weight",
}

# "{arch}.<key>" metadata -> (ModelConfig field, required). Optional keys fall back to llama.cpp's defaults.
GGUF_CONFIG_KEYS: dict[str, tuple[str, bool]] = {
    "block_count": ("n_layer", True),
    "embedding_length": ("d_model", True),
    "feed_forward_length": ("d_ff", True),
    "attention.head_count": ("n_head", True),
    "attention.head_count_kv": ("n_kv_head", False),
    "attention.key_length": ("head_dim", False),
    "rope.freq_base": ("rope_theta", False),
    "attention.layer_norm_rms_epsilon": ("norm_eps", True),
    "context_length": ("block_size", True),
    "vocab_size": ("vocab_size", False),
}

# tokenizer.ggml.pre (llama.cpp's name for the split before BPE) -> groundup's pre-tokenizer family.
# smollm & co. isolate every number character, then apply GPT-2's regex (llama-vocab.cpp), which is
# the Digits(individual_digits) + ByteLevel pair of those models' own tokenizer.json.
GGUF_PRE_TOKENIZERS: dict[str, str] = {
    "gpt-2": "gpt2",
    "smollm": "digits+gpt2", "starcoder": "digits+gpt2", "refact": "digits+gpt2", "codeshell": "digits+gpt2",
    "llama-bpe": "llama3", "llama3": "llama3", "llama-v3": "llama3", "smaug-bpe": "llama3", "dbrx": "llama3",
    "falcon3": "llama3",
}
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TOKENIZER_ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type",
                     "tokenizer.ggml.scores")
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types


# --- reading ---------------------------------------------------------------------------------------------
class _Reader(GGUFReader):
    """GGUFReader over a plain ndarray view of the mapped file (slicing an np.memmap does per-slice
    bookkeeping, ~10x slower on a 49k-token vocabulary), with clear errors for unknown tensor types
    and tensors that run past the end of the file."""

    @property
    def data(self) -> np.ndarray:
        return self._data

    @data.setter
    def data(self, value: np.ndarray) -> None:
        self._data = value.view(np.ndarray)  # same mapped bytes; keeps the memmap alive as its base

    def _build_tensors(self, start_offs: int, fields: list) -> None:
        known = {t.value for t in GGMLQuantizationType}
        for field in fields:  # parts: name_len, name, n_dims, dims, type, offset
            raw, dims, offset = int(field.parts[4][0]), field.parts[3], int(field.parts[5][0])
            if raw not in known:
                raise GGUFError(
                    f"tensor {field.name!r} has ggml type id {raw}, which the installed gguf package does not know; "
                    f"supported types: {_SUPPORTED_NAMES}. Re-quantize the model to one of them"
                )
            block, size = GGML_QUANT_SIZES[GGMLQuantizationType(raw)]
            end = start_offs + offset + int(np.prod(dims)) * size // block
            if end > len(self.data):
                raise GGUFError(
                    f"tensor {field.name!r} ends at byte {end} but the file has only {len(self.data)} bytes: the "
                    "file is truncated (an interrupted download or copy); download it again"
                )
        super()._build_tensors(start_offs, fields)


def read_gguf(path: str | os.PathLike) -> GGUFReader:
    """Open a GGUF file (memory-mapped), turning the reader's low-level failures into GGUFError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"read_gguf({str(path)!r}): no such file; pass the path of a .gguf file")
    size = path.stat().st_size
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        what = "is empty" if size == 0 else f"starts with {magic!r}, not the GGUF magic b'GGUF'"
        raise GGUFError(f"{path} {what}: it is not a GGUF file (or it is truncated to nothing)")
    try:
        return _Reader(path)
    except GGUFError as e:
        raise GGUFError(f"{path}: {e}") from None
    except (ValueError, IndexError, KeyError, OverflowError) as e:
        raise GGUFError(
            f"{path} ({size} bytes) cannot be parsed as GGUF ({type(e).__name__}: {e}); the file is truncated or "
            "corrupt: download it again"
        ) from e


def _value(field: Any) -> Any:
    """A metadata field as a Python value (str, int, float, bool or a list of them)."""
    kind = field.types[0]
    if kind == GGUFValueType.ARRAY:
        if len(field.types) > 1 and field.types[1] == GGUFValueType.ARRAY:
            return None  # nested arrays: nothing we read uses them
        if len(field.types) > 1 and field.types[1] == GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8") for i in field.data]
        return np.concatenate([field.parts[i] for i in field.data]).tolist() if field.data else []
    part = field.parts[field.data[0]]
    if kind == GGUFValueType.FLOAT32:  # the shortest decimal that is this float32: 1e-05, not 9.999999747378752e-06
        return float(str(part[0]))
    return bytes(part).decode("utf-8") if kind == GGUFValueType.STRING else part[0].item()


def gguf_metadata(reader: GGUFReader) -> dict[str, Any]:
    """Every key/value field of an opened file (tokenizer arrays included) as plain Python values."""
    meta = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):  # the header's own counts, not metadata
            continue
        try:
            meta[name] = _value(field)
        except UnicodeDecodeError as e:
            raise GGUFError(f"metadata field {name!r} holds text that is not UTF-8 ({e}); the file is corrupt") from e
    return meta


# --- config ----------------------------------------------------------------------------------------------
def gguf_config(meta: dict[str, Any], tensor_names: set[str], where: str = "GGUF") -> ModelConfig:
    """ModelConfig from `{arch}.*` metadata. Embeddings are tied when the file has no output.weight."""
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise GGUFError(
            f"{where}: general.architecture={arch!r} is not supported; supported architectures: "
            f"{list(SUPPORTED_ARCHITECTURES)}"
        )
    fields: dict[str, Any] = {}
    for key, (name, required) in GGUF_CONFIG_KEYS.items():
        value = meta.get(f"{arch}.{key}")
        if value is None:
            if required:
                raise GGUFError(
                    f"{where}: metadata key {arch}.{key} (ModelConfig.{name}) is missing; re-convert the model"
                )
            continue
        if isinstance(value, list):
            raise GGUFError(f"{where}: {arch}.{key}={value!r} varies per layer, which groundup does not support")
        fields[name] = float(value) if name in ("rope_theta", "norm_eps") else int(value)
    fields.setdefault("vocab_size", len(meta.get("tokenizer.ggml.tokens") or []) or None)
    if fields["vocab_size"] is None:
        raise GGUFError(f"{where}: neither {arch}.vocab_size nor tokenizer.ggml.tokens is present; re-convert it")
    scaling = meta.get(f"{arch}.rope.scaling.type")
    if (scaling not in (None, "none")) or "rope_freqs.weight" in tensor_names:
        raise GGUFError(f"{where}: RoPE scaling ({scaling or 'rope_freqs.weight'}) is not supported for GGUF files yet")
    cfg = ModelConfig(**{**LLAMA, **fields, "tie_embeddings": "output.weight" not in tensor_names})
    rot = meta.get(f"{arch}.rope.dimension_count")
    if rot is not None and int(rot) != cfg.head_dim:
        raise GGUFError(
            f"{where}: {arch}.rope.dimension_count={rot} != head_dim={cfg.head_dim}; partial RoPE is unsupported"
        )
    cfg.extra.update(source=where, format="gguf")
    return cfg


# --- tensors ---------------------------------------------------------------------------------------------
def dequantize_tensor(tensor: Any, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A GGUFReader tensor as a torch tensor in PyTorch's (out, in) order."""
    kind, shape = tensor.tensor_type, tuple(int(d) for d in reversed(tensor.shape.tolist()))
    if kind not in SUPPORTED_TYPES:
        raise GGUFError(
            f"tensor {tensor.name!r} is stored as {kind.name}, which groundup cannot dequantize; supported types: "
            f"{_SUPPORTED_NAMES}. Re-quantize the model (llama-quantize) to one of them"
        )
    if kind in (T.F32, T.F16):
        out = torch.from_numpy(np.array(tensor.data))  # copy out of the read-only mapping
    elif kind == T.BF16:
        out = torch.from_numpy(np.array(tensor.data)).view(torch.bfloat16)  # raw bytes -> bf16 pairs
    else:
        out = torch.from_numpy(dequantize(tensor.data, kind))
    return out.reshape(shape).to(dtype)


def _unpermute_rope(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's interleaved-pair rows -> HF's half-split rows, per head."""
    rows = w.shape[0]
    half = rows // n_head // 2
    return w.reshape(n_head, half, 2, -1).transpose(1, 2).reshape(w.shape)  # (n_head, 2, D/2, in) -> (out, in)


def _groundup_key(name: str) -> str | None:
    match = re.fullmatch(r"blk\.(\d+)\.(.+)", name)
    if match is None:
        return GGUF_TO_GROUNDUP.get(name)
    template = GGUF_TO_GROUNDUP.get(f"blk.{{i}}.{match[2]}")
    return template.format(i=match[1]) if template else None


def _state_dict(reader: GGUFReader, cfg: ModelConfig, dtype: torch.dtype, where: str) -> dict[str, torch.Tensor]:
    unknown = [t.name for t in reader.tensors if _groundup_key(t.name) is None]
    if unknown:
        raise GGUFError(
            f"{where}: tensors {unknown[:8]} have no groundup counterpart (known: {list(GGUF_TO_GROUNDUP)}); "
            "this llama variant is not supported"
        )
    state = {}
    for t in reader.tensors:
        w = dequantize_tensor(t, dtype)
        if ".attn_q." in t.name:
            w = _unpermute_rope(w, cfg.n_head)
        elif ".attn_k." in t.name:
            w = _unpermute_rope(w, cfg.n_kv_head)
        state[_groundup_key(t.name)] = w
    if cfg.tie_embeddings and "embed.tok_emb.weight" in state:
        state["lm_head.weight"] = state["embed.tok_emb.weight"]
    return state


@contextmanager
def _skip_init() -> Iterator[None]:
    """Build a model without its random initialisation (every weight is read from the file next):
    torch.nn.init's in-place initialisers become no-ops, so parameters stay uninitialised memory."""
    names = [n for n in dir(nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(nn.init, n) for n in names}
    for n in names:
        setattr(nn.init, n, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for n, fn in saved.items():
            setattr(nn.init, n, fn)


def _build_model(cfg: ModelConfig, state: dict[str, torch.Tensor], dtype: torch.dtype, where: str) -> DecoderLM:
    with _skip_init():
        model = DecoderLM(cfg)
    params = dict(model.named_parameters(remove_duplicate=False))
    owner = {id(p): n for n, p in reversed(params.items())}
    ties = {name: owner[id(p)] for name, p in params.items() if owner[id(p)] != name}  # e.g. lm_head -> tok_emb
    expected = model.state_dict()
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs config {tuple(v.shape)}"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or extra or shapes:
        raise GGUFError(
            f"{where}: the tensors do not fit the config from its metadata: missing {missing[:8]}, unexpected "
            f"{extra[:8]}, shape mismatches {shapes[:8]}; the file is inconsistent, re-convert it"
        )
    # assign: adopt the dequantized tensors instead of copying into the never-touched empty parameters
    model.load_state_dict(state, strict=True, assign=True)
    for alias, name in ties.items():  # assign gave each name its own Parameter: share them again
        module, _, attr = alias.rpartition(".")
        setattr(model.get_submodule(module), attr, model.get_parameter(name))
    return model.to(dtype).eval()  # .to casts the RoPE tables too, as for any groundup model


# --- tokenizer -------------------------------------------------------------------------------------------
def _pre_tokenizer(pre: str | None, where: str) -> pre_tokenizers.PreTokenizer:
    family = GGUF_PRE_TOKENIZERS.get(pre or "gpt-2")  # files without the key predate it: GPT-2's split
    if family is None:
        raise GGUFError(
            f"{where}: tokenizer.ggml.pre={pre!r} is not supported; supported: {sorted(GGUF_PRE_TOKENIZERS)}"
        )
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=family != "llama3")
    if family == "digits+gpt2":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if family == "llama3":
        return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"), byte_level])
    return byte_level


def gguf_tokenizer(meta: dict[str, Any], where: str = "GGUF") -> Tokenizer:
    """The byte-level BPE tokenizer described by `tokenizer.ggml.*` ("gpt2" model): vocabulary, merges,
    control tokens as special tokens, bos/eos/pad/unk ids from the metadata."""
    model = meta.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise GGUFError(
            f"{where}: tokenizer.ggml.model={model!r} is not supported (SentencePiece 'llama' vocabularies are not "
            "yet); supported: ['gpt2']. Load the weights alone with load_gguf(path, with_tokenizer=False)"
        )
    tokens, merges = meta.get("tokenizer.ggml.tokens"), meta.get("tokenizer.ggml.merges")
    if not tokens or merges is None:
        raise GGUFError(f"{where}: tokenizer.ggml.tokens or tokenizer.ggml.merges is missing; re-convert the model")
    pairs = [tuple(m.split(" ")) for m in merges]
    bad = [m for m, p in zip(merges, pairs, strict=True) if len(p) != 2]
    if bad:
        raise GGUFError(f"{where}: tokenizer.ggml.merges has entries that are not 'left right' pairs: {bad[:5]}")
    vocab = {tok: i for i, tok in enumerate(tokens)}
    backend = tokenizers.Tokenizer(models.BPE(vocab, pairs, fuse_unk=False, byte_fallback=False))
    backend.pre_tokenizer = _pre_tokenizer(meta.get("tokenizer.ggml.pre"), where)
    backend.decoder = decoders.ByteLevel()
    types = meta.get("tokenizer.ggml.token_type") or []
    backend.add_special_tokens(
        [AddedToken(tokens[i], special=True, normalized=False) for i, k in enumerate(types) if k == _CONTROL]
    )
    backend.add_tokens(
        [AddedToken(tokens[i], special=False, normalized=False) for i, k in enumerate(types) if k == _USER_DEFINED]
    )
    bos = meta.get("tokenizer.ggml.bos_token_id")
    if meta.get("tokenizer.ggml.add_bos_token") and bos is not None:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{tokens[bos]} $A", pair=f"{tokens[bos]} $A $B:1", special_tokens=[(tokens[bos], bos)]
        )
    tok = Tokenizer(backend)
    for role, key in (("bos", "bos"), ("eos", "eos"), ("pad", "padding"), ("unk", "unknown")):
        found = meta.get(f"tokenizer.ggml.{key}_token_id")
        if isinstance(found, int) and 0 <= found < len(tokens):
            tok.set_role(role, found)  # the file's word wins over Tokenizer's guess by token name
    tok.chat_template = meta.get("tokenizer.chat_template")
    return tok


# --- entry point -----------------------------------------------------------------------------------------
def load_gguf(
    path: str | os.PathLike, dtype: torch.dtype = torch.float32, with_tokenizer: bool = True
) -> tuple[DecoderLM, Tokenizer | None, dict[str, Any]]:
    """(DecoderLM in eval mode, Tokenizer, metadata) from a llama-architecture GGUF file.

    Every tensor is dequantized to `dtype`. The metadata dict holds the file's key/value fields
    (e.g. "tokenizer.chat_template", "general.name") except the tokenizer's big arrays, which live
    in the Tokenizer; "gguf.tensor_types" counts the tensors per ggml type."""
    where = str(path)
    reader = read_gguf(path)
    meta = gguf_metadata(reader)
    cfg = gguf_config(meta, {t.name for t in reader.tensors}, where)
    tokenizer = gguf_tokenizer(meta, where) if with_tokenizer else None
    if tokenizer is not None and tokenizer.vocab_size > cfg.vocab_size:
        raise GGUFError(f"{where}: the tokenizer has {tokenizer.vocab_size} ids but vocab_size is {cfg.vocab_size}")
    model = _build_model(cfg, _state_dict(reader, cfg, dtype, where), dtype, where)
    info = {k: v for k, v in meta.items() if k not in _TOKENIZER_ARRAYS}
    types: dict[str, int] = {}
    for t in reader.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    info["gguf.tensor_types"] = types
    return model, tokenizer, info
