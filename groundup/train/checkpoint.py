"""Checkpoints: one directory, written atomically.

    <dir>/model.safetensors   weights (shared/tied tensors stored once, re-tied on load); with
                              trainable_only, just the parameters that require grad (a LoRA run over a
                              135M-parameter base saves a few MB, not the frozen base again)
    <dir>/config.json         model.config.to_dict()
    <dir>/tokenizer.json      when a tokenizer is given
    <dir>/optimizer.pt        optimizer.state_dict() (torch.save)
    <dir>/state.json          step, RNG states, metrics so far: whatever the loop needs to resume

Atomicity: everything is written into a fresh temp directory beside <dir> and fsynced; then the
old <dir> is renamed aside, the temp dir renamed into place, and the old one deleted. A crash
while writing leaves the previous checkpoint untouched; a crash between the two renames leaves
the previous checkpoint under `.<name>.old`, which `load_checkpoint` / the next save put back.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_model, save_file, save_model
from torch import nn

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "state.json"
# Config fields that do not change the weights' meaning or shapes: may differ between save and load.
NON_ARCH_FIELDS = frozenset({"dropout", "attn_backend", "extra"})


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used with this model/optimizer; the message says why and what to do."""


@dataclass
class Checkpoint:
    path: Path
    model: nn.Module
    config: dict[str, Any]
    state: dict[str, Any] = field(default_factory=dict)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside a DistributedDataParallel (or similar `.module`) wrapper."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def pack_tensor(t: torch.Tensor) -> str:
    """A uint8 tensor (an RNG state) as a base64 string, for state.json."""
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def unpack_tensor(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def _config_dict(model: nn.Module) -> dict[str, Any]:
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(cfg, "to_dict"):
        raise CheckpointError(
            f"{type(model).__name__} has no .config with to_dict(); checkpoints record the model config "
            "so they can be rebuilt: build the model with groundup.models.build_model or set model.config"
        )
    saved = cfg.to_dict()
    from groundup.models.encoder import BODY_KEY, Encoder

    if isinstance(model, Encoder):  # a body alone (e.g. MiniLM's BertModel): rebuilt as one, pooler and all
        saved["extra"] = {**saved["extra"], BODY_KEY: {"pooler": model.pooler is not None}}
    return saved


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def staging_dir(path: Path) -> Path:
    """A fresh temp directory beside `path` to write into, then usual_modes(), then rename into place."""
    return Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))


def usual_modes(folder: Path) -> None:
    """Give `folder` and the files in it the modes a plain mkdir / open give here (0755 / 0644 under the usual umask
    022): mkdtemp makes the folder owner-only (0700) and safetensors its files (0600), which others cannot read.
    The modes come from probes, so the umask is never changed (os.umask would change it for every thread)."""
    probe_dir, probe_file = folder / ".mode-dir", folder / ".mode-file"
    probe_dir.mkdir()
    os.close(os.open(probe_file, os.O_CREAT | os.O_WRONLY, 0o666))
    dir_mode, file_mode = stat.S_IMODE(probe_dir.stat().st_mode), stat.S_IMODE(probe_file.stat().st_mode)
    probe_dir.rmdir()
    probe_file.unlink()
    for f in folder.iterdir():
        if f.is_file():
            os.chmod(f, file_mode)
    os.chmod(folder, dir_mode)


def _old_path(path: Path) -> Path:
    return path.parent / f".{path.name}.old"


def _recover(path: Path) -> None:
    """Finish an interrupted swap: put the previous checkpoint back, drop stale temp dirs."""
    old = _old_path(path)
    if old.is_dir() and not path.exists():
        os.replace(old, path)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that require grad, by state-dict name (shared parameters once)."""
    return {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def _write_files(
    tmp: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None, state: dict[str, Any], tokenizer: Any,
    trainable_only: bool,
) -> None:
    if trainable_only:
        save_file(trainable_state(model), str(tmp / MODEL_FILE), metadata={"format": "pt", "weights": "trainable"})
    else:
        save_model(model, str(tmp / MODEL_FILE), metadata={"format": "pt"})
    (tmp / CONFIG_FILE).write_text(json.dumps(_config_dict(model), indent=2))
    if tokenizer is not None:
        tokenizer.save(str(tmp))
        if not (tmp / TOKENIZER_FILE).exists():
            raise CheckpointError(f"{type(tokenizer).__name__}.save(dir) did not write {TOKENIZER_FILE}")
    if optimizer is not None:
        torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
    usual_modes(tmp)
    for f in tmp.iterdir():
        _fsync(f)
    _fsync(tmp)


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    state: dict[str, Any] | None = None,
    tokenizer: Any = None,
    trainable_only: bool = False,
) -> Path:
    """Write a checkpoint directory at `path` atomically (see module docstring). Returns the path.

    trainable_only: store only the parameters that require grad; loading it needs a model that already holds
    the frozen rest (the same base, wrapped the same way), as a resumed fine-tuning run rebuilds it."""
    path = Path(path)
    model = unwrap(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    _recover(path)
    tmp = staging_dir(path)
    old = _old_path(path)
    moved_old = False
    try:
        _write_files(tmp, model, optimizer, state or {}, tokenizer, trainable_only)
        if path.exists():
            os.replace(path, old)
            moved_old = True
        os.replace(tmp, path)
    except BaseException:
        if moved_old and not path.exists():
            os.replace(old, path)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if moved_old:
        shutil.rmtree(old, ignore_errors=True)
    _fsync(path.parent)
    return path


def check_architecture(saved: dict[str, Any], model: nn.Module, path: Path) -> None:
    """Raise CheckpointError naming every architecture field where checkpoint and model differ."""
    current = _config_dict(model)
    saved = {**_defaults(model), **saved}  # a field added since the checkpoint was written has its default there
    keys = (set(saved) | set(current)) - NON_ARCH_FIELDS
    diffs = [
        f"{k}: checkpoint={saved.get(k)!r} model={current.get(k)!r}"
        for k in sorted(keys)
        if saved.get(k) != current.get(k)
    ]
    if diffs:
        raise CheckpointError(
            f"checkpoint {path} was saved from a different architecture; differing config fields: "
            f"{'; '.join(diffs)}. Build the model from the checkpoint's config.json "
            "(load_checkpoint(path) with model=None does this) or point at the right checkpoint"
        )


def _defaults(model: nn.Module) -> dict[str, Any]:
    """The model's config class's default for every field that has one."""
    cls = type(getattr(model, "config", None))
    if not dataclasses.is_dataclass(cls):
        return {}
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


def _require_files(path: Path, names: list[str]) -> None:
    if not path.is_dir():
        raise FileNotFoundError(f"no checkpoint directory at {path}; check the path (a run writes <out_dir>/ckpt)")
    missing = [n for n in names if not (path / n).is_file()]
    if missing:
        present = sorted(p.name for p in path.iterdir())
        raise FileNotFoundError(
            f"checkpoint {path} is missing {missing} (present: {present}); it is incomplete or was not written "
            "by save_checkpoint (which writes optimizer.pt only when given an optimizer); use another checkpoint"
        )


def _build_from_config(saved: dict[str, Any]) -> nn.Module:
    from groundup.config import ModelConfig
    from groundup.models import Encoder, build_model
    from groundup.models.encoder import BODY_KEY
    from groundup.models.registry import FAMILIES, build_family

    if saved.get("family") in FAMILIES:  # a non-text family: its own config class and model
        return build_family(saved)
    cfg = ModelConfig.from_dict(saved)
    body = cfg.extra.get(BODY_KEY)
    model = Encoder(cfg, pooler=bool(body.get("pooler"))) if isinstance(body, dict) else build_model(cfg)
    quantized = (saved.get("extra") or {}).get("quantization")
    if quantized:  # saved from a quantized model: the same QuantLinear layers, so its weights load
        from groundup.quant import rebuild_quantized

        rebuild_quantized(model, quantized)
    return model


def load_checkpoint(
    path: str | Path,
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> Checkpoint:
    """Load weights into `model` (or a model built from config.json), and optimizer state when given.

    The model's own device is kept. Raises FileNotFoundError for a missing directory/file and
    CheckpointError when the checkpoint's architecture differs from `model`'s (fields named).
    """
    path = Path(path)
    if path.parent.is_dir():
        _recover(path)
    _require_files(path, [MODEL_FILE, CONFIG_FILE] + ([OPTIMIZER_FILE] if optimizer is not None else []))
    saved = json.loads((path / CONFIG_FILE).read_text())
    built = model is None
    if built:
        model = _build_from_config(saved)
    model = unwrap(model)
    check_architecture(saved, model, path)
    device = next(iter(model.parameters())).device
    if _is_trainable_only(path / MODEL_FILE):
        if built:  # e.g. a LiT run (ClipConfig.lock): the config rebuilds the freezing, not the frozen weights
            raise CheckpointError(
                f"{path / MODEL_FILE} holds only the trainable parameters of a run with frozen ones, so a model built "
                "from config.json would keep those at random values; pass model= holding the frozen part (the same "
                "pretrained base, adapters or locked tower) to load_checkpoint")
        _load_trainable(model, path / MODEL_FILE, device)
    else:
        missing, unexpected = load_model(model, path / MODEL_FILE, strict=False, device=str(device))
        _check_keys(path, model, missing, unexpected)
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(path / OPTIMIZER_FILE, map_location=device, weights_only=True))
    state = json.loads((path / STATE_FILE).read_text()) if (path / STATE_FILE).is_file() else {}
    return Checkpoint(path=path, model=model, config=saved, state=state)


def _is_trainable_only(file: Path) -> bool:
    with safe_open(str(file), framework="pt") as f:
        return (f.metadata() or {}).get("weights") == "trainable"


def _check_keys(path: Path, model: nn.Module, missing: Any, unexpected: Any) -> None:
    if missing or unexpected:
        raise CheckpointError(
            f"{path / MODEL_FILE} does not fit {type(model).__name__}: missing keys {sorted(missing)[:8]}, "
            f"unexpected keys {sorted(unexpected)[:8]}; the checkpoint came from another model class"
        )


def _load_trainable(model: nn.Module, file: Path, device: torch.device) -> None:
    """Load a trainable_only file: its keys must be exactly the model's trainable parameters."""
    from safetensors.torch import load_file

    saved = load_file(str(file), device=str(device))
    expected = set(trainable_state(model))
    if set(saved) != expected:
        raise CheckpointError(
            f"{file} holds only trainable parameters, and they do not match {type(model).__name__}'s (missing "
            f"{sorted(expected - set(saved))[:8]}, unexpected {sorted(set(saved) - expected)[:8]}); load it into "
            "the model it was trained from: the same base with the same adapters injected / layers frozen"
        )
    model.load_state_dict(saved, strict=False)
