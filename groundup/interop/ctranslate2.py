"""CTranslate2's model.bin (the format faster-whisper runs), read and written with numpy: no ctranslate2 needed.

    u32 version (6) | string spec name | u32 revision | u32 tensor count
    per tensor: string name | u8 rank | u32 dims[rank] | u8 dtype | u32 byte count | raw little-endian data
    u32 alias count | (string alias, string target) pairs        strings: u16 length incl. NUL, bytes, NUL

Whisper's spec fuses projections: self-attention `linear_0` is q,k,v stacked; the decoder's cross-attention
`linear_0` is q and `linear_1` is k,v stacked. WHISPER_KEYS spells out every name.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from ..models.whisper import Whisper, WhisperConfig

DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}  # 5 bf16 is read by hand
DTYPE_CODES = {np.dtype(v): k for k, v in DTYPES.items()}


class CT2FormatError(ValueError):
    """The file is not a CTranslate2 model this reader understands; the message says what to do."""


def read_model_bin(parts: Iterable[str | Path]) -> tuple[str, dict[str, np.ndarray]]:
    """(spec name, name -> array) of a model.bin given as one file or as parts to concatenate in order; aliases
    resolve to their targets' arrays."""
    buf = memoryview(b"".join(Path(p).read_bytes() for p in parts))
    pos = 0

    def take(fmt: str) -> int:
        nonlocal pos
        (value,) = struct.unpack_from(fmt, buf, pos)
        pos += struct.calcsize(fmt)
        return value

    def string() -> str:
        nonlocal pos
        n = take("<H")
        text = bytes(buf[pos:pos + n - 1]).decode()
        pos += n
        return text

    try:
        version = take("<I")
        if version != 6:
            raise CT2FormatError(f"model.bin version {version}; this reader knows version 6 (CTranslate2 >= 3.0): "
                                 "re-convert the model with a current ct2-transformers-converter")
        spec, _revision, count = string(), take("<I"), take("<I")
        arrays: dict[str, np.ndarray] = {}
        for _ in range(count):
            name = string()
            dims = [take("<I") for _ in range(take("<B"))]
            code, nbytes = take("<B"), take("<I")
            if pos + nbytes > len(buf):
                raise struct.error(f"tensor {name!r} needs {nbytes} bytes, {len(buf) - pos} are left")
            raw = buf[pos:pos + nbytes]
            pos += nbytes
            if code == 5:  # bf16: the high half of a float32
                arrays[name] = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(dims)
            elif code in DTYPES:
                arrays[name] = np.frombuffer(raw, DTYPES[code]).reshape(dims)
            else:
                raise CT2FormatError(f"tensor {name!r} has dtype code {code}, unknown to this reader")
        for _ in range(take("<I")):
            alias, target = string(), string()
            arrays[alias] = arrays[target]
    except struct.error as e:
        raise CT2FormatError(f"model.bin ends early ({e}): the file is truncated, or its parts were joined in the "
                             "wrong order") from e
    return spec, arrays


def write_model_bin(path: str | Path, spec: str, arrays: dict[str, np.ndarray], aliases: dict[str, str]) -> None:
    """The inverse of read_model_bin (revision 3, Whisper's); written to a temporary name, then renamed."""

    def string(text: str) -> bytes:
        data = text.encode() + b"\0"
        return struct.pack("<H", len(data)) + data

    out = [struct.pack("<I", 6), string(spec), struct.pack("<II", 3, len(arrays))]
    for name, a in arrays.items():
        a = np.require(a, requirements="C")  # (ascontiguousarray would make a scalar 1-d)
        out += [string(name), struct.pack("<B", a.ndim), struct.pack(f"<{a.ndim}I", *a.shape),
                struct.pack("<BI", DTYPE_CODES[a.dtype], a.nbytes), a.tobytes()]
    out.append(struct.pack("<I", len(aliases)))
    out += [string(a) + string(t) for a, t in aliases.items()]
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    tmp.write_bytes(b"".join(out))
    tmp.replace(path)


def _block_keys(side: str, i: int, cross: bool) -> list[tuple[str, str, int]]:
    """(our name, ct2 name, part of a fused tensor: -1 none, else its index) for one block."""
    ours, theirs = f"{side}.blocks.{i}", f"{side}/layer_{i}"
    keys = []
    for p, q in (("weight", "gamma"), ("bias", "beta")):
        keys += [(f"{ours}.attn_norm.{p}", f"{theirs}/self_attention/layer_norm/{q}", -1),
                 (f"{ours}.mlp_norm.{p}", f"{theirs}/ffn/layer_norm/{q}", -1)]
        if cross:
            keys.append((f"{ours}.cross_norm.{p}", f"{theirs}/attention/layer_norm/{q}", -1))
    for p in ("weight", "bias"):
        keys += [(f"{ours}.attn.{x}_proj.{p}", f"{theirs}/self_attention/linear_0/{p}", j) for j, x in enumerate("qkv")]
        keys += [(f"{ours}.attn.o_proj.{p}", f"{theirs}/self_attention/linear_1/{p}", -1),
                 (f"{ours}.mlp.up_proj.{p}", f"{theirs}/ffn/linear_0/{p}", -1),
                 (f"{ours}.mlp.down_proj.{p}", f"{theirs}/ffn/linear_1/{p}", -1)]
        if cross:
            keys += [(f"{ours}.cross_attn.q_proj.{p}", f"{theirs}/attention/linear_0/{p}", -1),
                     (f"{ours}.cross_attn.k_proj.{p}", f"{theirs}/attention/linear_1/{p}", 0),
                     (f"{ours}.cross_attn.v_proj.{p}", f"{theirs}/attention/linear_1/{p}", 1),
                     (f"{ours}.cross_attn.o_proj.{p}", f"{theirs}/attention/linear_2/{p}", -1)]
    return keys


def whisper_keys(cfg: WhisperConfig) -> list[tuple[str, str, int]]:
    """Every weight of Whisper: (groundup name, CTranslate2 name, index in a fused tensor or -1)."""
    keys = [("encoder.conv1.weight", "encoder/conv1/weight", -1), ("encoder.conv1.bias", "encoder/conv1/bias", -1),
            ("encoder.conv2.weight", "encoder/conv2/weight", -1), ("encoder.conv2.bias", "encoder/conv2/bias", -1),
            ("encoder.positions", "encoder/position_encodings/encodings", -1),
            ("encoder.norm.weight", "encoder/layer_norm/gamma", -1),
            ("encoder.norm.bias", "encoder/layer_norm/beta", -1),
            ("decoder.embed.tok_emb.weight", "decoder/embeddings/weight", -1),
            ("decoder.embed.pos_emb.weight", "decoder/position_encodings/encodings", -1),
            ("decoder.norm.weight", "decoder/layer_norm/gamma", -1),
            ("decoder.norm.bias", "decoder/layer_norm/beta", -1)]
    for i in range(cfg.n_audio_layer):
        keys += _block_keys("encoder", i, cross=False)
    for i in range(cfg.n_text_layer):
        keys += _block_keys("decoder", i, cross=True)
    return keys


def _n_layers(arrays: dict[str, np.ndarray], side: str) -> int:
    found = {int(m.group(1)) for k in arrays if (m := re.match(rf"{side}/layer_(\d+)/", k))}
    return max(found) + 1 if found else 0


def config_from_ct2(arrays: dict[str, np.ndarray], settings: dict) -> WhisperConfig:
    """A WhisperConfig from the tensors' shapes and the folder's config.json (suppression lists, time heads)."""
    d = int(arrays["encoder/conv1/weight"].shape[0])
    return WhisperConfig(
        n_mels=int(arrays["encoder/conv1/weight"].shape[1]), n_audio_ctx=int(arrays[
            "encoder/position_encodings/encodings"].shape[0]), n_audio_layer=_n_layers(arrays, "encoder"),
        n_text_ctx=int(arrays["decoder/position_encodings/encodings"].shape[0]),
        n_text_layer=_n_layers(arrays, "decoder"), d_model=d, n_head=int(arrays["encoder/num_heads"]),
        n_vocab=int(arrays["decoder/embeddings/weight"].shape[0]),
        suppress_tokens=list(settings.get("suppress_ids", [])),
        begin_suppress_tokens=list(settings.get("suppress_ids_begin", [])),
        alignment_heads=[list(h) for h in settings.get("alignment_heads", [])])


def load_ct2_whisper(parts: str | Path | list[str | Path], dtype: torch.dtype = torch.float32) -> Whisper:
    """Whisper from a CTranslate2 folder (model.bin + config.json) or from the model.bin parts in order."""
    parts = [parts] if isinstance(parts, (str, Path)) else list(parts)
    folder = Path(parts[0]) if Path(parts[0]).is_dir() else Path(parts[0]).parent
    if Path(parts[0]).is_dir():
        parts = [folder / "model.bin"]
    missing = [str(p) for p in parts if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"no CTranslate2 model file at {missing}; a converted folder holds model.bin")
    spec, arrays = read_model_bin(parts)
    if spec != "WhisperSpec":
        raise CT2FormatError(f"{parts[0]} holds a {spec}; only WhisperSpec models load as Whisper")
    if any(k.endswith("weight_scale") for k in arrays):
        raise CT2FormatError(f"{parts[0]} is int8-quantized; convert with --quantization float16 (or float32) and "
                             "quantize inside groundup (groundup.quantize)")
    settings_path = folder / "config.json"
    settings = json.loads(settings_path.read_text()) if settings_path.is_file() else {}
    cfg = config_from_ct2(arrays, settings)
    with torch.device("meta"):
        model = Whisper(cfg)
    state = {}
    for ours, theirs, part in whisper_keys(cfg):
        a = arrays[theirs]
        if part >= 0:
            a = np.split(a, 3 if "self_attention/linear_0" in theirs else 2, axis=0)[part]
        state[ours] = torch.from_numpy(np.array(a, dtype=np.float32)).to(dtype)
    state["lm_head.weight"] = state["decoder.embed.tok_emb.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    model.lm_head.weight = model.decoder.embed.tok_emb.weight
    return model.eval()


def ct2_arrays(model: Whisper, dtype: np.dtype = np.float32) -> dict[str, np.ndarray]:
    """The model's weights under CTranslate2's names, fused where the spec fuses (inverse of load_ct2_whisper)."""
    cfg, state = model.config, model.state_dict()
    grouped: dict[str, list[tuple[int, np.ndarray]]] = {}
    for ours, theirs, part in whisper_keys(cfg):
        grouped.setdefault(theirs, []).append((part, state[ours].detach().float().cpu().numpy()))
    fused = {k: np.concatenate([a for _, a in sorted(v, key=lambda p: p[0])], axis=0) for k, v in grouped.items()}
    return {k: a.astype(dtype) for k, a in fused.items()}


def save_ct2_whisper(model: Whisper, folder: str | Path, dtype: np.dtype = np.float16,
                     vocabulary: str | Path | None = None) -> Path:
    """A CTranslate2 folder faster-whisper can run: model.bin (fp16 by default, as converted checkpoints ship),
    config.json and, given the source's vocabulary.txt, a copy of it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    arrays = ct2_arrays(model, dtype)
    heads = np.int16(cfg.n_head)
    scalars = {"decoder/activation": np.int8(3), "decoder/alibi": np.int8(0), "decoder/alignment_heads": np.int16(1),
               "decoder/alignment_layer": np.int16(-1), "decoder/num_heads": heads, "decoder/pre_norm": np.int8(1),
               "decoder/scale_embeddings": np.int8(0), "decoder/start_from_zero_embedding": np.int8(0),
               "encoder/num_heads": heads}
    arrays.update({k: np.asarray(v) for k, v in scalars.items()})
    write_model_bin(folder / "model.bin", "WhisperSpec", dict(sorted(arrays.items())),
                    {"decoder/projection/weight": "decoder/embeddings/weight"})
    settings = {"alignment_heads": cfg.alignment_heads, "suppress_ids": cfg.suppress_tokens,
                "suppress_ids_begin": cfg.begin_suppress_tokens}
    (folder / "config.json").write_text(json.dumps(settings, indent=2))
    if vocabulary is not None:
        (folder / "vocabulary.txt").write_bytes(Path(vocabulary).read_bytes())
    return folder
