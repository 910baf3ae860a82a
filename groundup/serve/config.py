"""The serving engine's settings (no torch here: `groundup serve --help` reads them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EngineConfig:
    max_batch: int = 16  # running requests (KV-cache rows)
    max_seq_len: int | None = None  # prompt + completion tokens per request; default min(block_size, 2048)
    cache_columns: int | None = None  # KV-cache columns per row; default 2 * max_seq_len (fewer compactions)
    max_queue: int = 64  # waiting requests before new ones get 429
    max_prefill_tokens: int = 2048  # prompt tokens admitted per engine iteration (at least one request)
    request_timeout: float = 600.0  # seconds from arrival; the request ends with an error after that

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queue", "max_prefill_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"EngineConfig.{name}={getattr(self, name)} must be at least 1")
        if self.max_seq_len is not None and self.max_seq_len < 2:
            raise ValueError(f"EngineConfig.max_seq_len={self.max_seq_len} must be at least 2")
        if self.request_timeout <= 0:
            raise ValueError(f"EngineConfig.request_timeout={self.request_timeout} must be positive (seconds)")


@dataclass
class AppConfig:
    api_key: str | None = None  # when set, every route but /health needs `Authorization: Bearer <key>`
    max_body_bytes: int = 1 << 20
    max_audio_bytes: int = 25 << 20  # a /v1/audio/transcriptions upload (the whole multipart body); larger: 413
    retry_after_s: int = 1  # the Retry-After header of a 429
    shutdown_grace_s: float = 60.0  # how long shutdown waits for running requests
