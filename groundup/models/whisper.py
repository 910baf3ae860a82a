"""Whisper (Radford et al. 2022, "Robust Speech Recognition via Large-Scale Weak Supervision").

    log-mel (B, n_mels, 3000) ─> Conv1d(k3) ─GELU─> Conv1d(k3, stride 2) ─GELU─> (B, 1500, d) + sinusoids
        ─> Block x n_audio_layer (bidirectional, pre-norm) ─> LayerNorm ─> memory (B, 1500, d)
                                                                            │ cross-attention (K/V once per window)
    tokens (B, T) ─> embeddings + learned positions ─> Block x n_text_layer (causal + cross) ─> LayerNorm
        ─> h · tok_embᵀ ─> logits (B, T, n_vocab)

The blocks are the text models' own (WhisperConfig.block_config()); only the convolutional stem and the fixed
sinusoidal audio positions are new. Whisper's key projections have no bias: here they keep one, fixed at zero
(a bias on the keys adds the same q·b to every score of a query, which softmax ignores).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError, ModelConfig, from_checked_dict
from ..nn import Block, Embeddings, KVCache, build_mask, build_norm

MemoryKV = list[tuple[torch.Tensor, torch.Tensor]]  # per decoder layer: cross-attention (k, v), each (B, H, S, D)


@dataclass
class WhisperConfig:
    n_mels: int = 80
    n_audio_ctx: int = 1500  # encoder positions: 3000 mel frames, halved by the strided convolution
    n_audio_layer: int = 4
    n_text_ctx: int = 448  # decoder positions
    n_text_layer: int = 4
    d_model: int = 384
    n_head: int = 6
    n_vocab: int = 51864  # 51864: English-only; 51865 and up: multilingual
    # what the reference decoders suppress (the non-speech symbols; blank and end-of-text at the first step)
    suppress_tokens: list[int] = field(default_factory=list)
    begin_suppress_tokens: list[int] = field(default_factory=list)
    alignment_heads: list[list[int]] = field(default_factory=list)  # (layer, head) pairs that track time
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("n_mels", "n_audio_ctx", "n_audio_layer", "n_text_ctx", "n_text_layer", "d_model", "n_head",
                     "n_vocab"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"WhisperConfig.{name}={value!r} must be a positive integer")
        if self.d_model % self.n_head:
            raise ConfigError(f"WhisperConfig.d_model={self.d_model} is not divisible by n_head={self.n_head}")

    @property
    def multilingual(self) -> bool:
        return self.n_vocab >= 51865

    def block_config(self) -> ModelConfig:
        """The ModelConfig of its blocks: pre-norm LayerNorm (eps 1e-5), exact GELU, biases, learned text
        positions."""
        return ModelConfig(arch="seq2seq", vocab_size=self.n_vocab, block_size=self.n_text_ctx,
                           n_layer=self.n_audio_layer, n_decoder_layer=self.n_text_layer, n_head=self.n_head,
                           d_model=self.d_model, pos="learned", norm="layernorm", norm_eps=1e-5, prenorm=True,
                           mlp="gelu", bias=True, tie_embeddings=True, n_segment=0)

    def to_dict(self) -> dict[str, Any]:
        return {"family": "whisper", **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WhisperConfig:
        return from_checked_dict(cls, {k: v for k, v in data.items() if k != "family"}, ConfigError)


# The published shapes (openai-whisper's ModelDimensions); ".en" models have one token fewer.
WHISPER_PRESETS: dict[str, dict[str, Any]] = {
    "whisper-tiny": dict(n_audio_layer=4, n_text_layer=4, d_model=384, n_head=6, n_vocab=51865),
    "whisper-base": dict(n_audio_layer=6, n_text_layer=6, d_model=512, n_head=8, n_vocab=51865),
    "whisper-small": dict(n_audio_layer=12, n_text_layer=12, d_model=768, n_head=12, n_vocab=51865),
    # a test-sized model on the real vocabulary
    "whisper-micro": dict(n_audio_layer=2, n_text_layer=2, d_model=64, n_head=4, n_vocab=51865),
}


def whisper_preset(name: str, **overrides: Any) -> WhisperConfig:
    if name not in WHISPER_PRESETS:
        raise ConfigError(f"unknown Whisper preset {name!r}; available: {sorted(WHISPER_PRESETS)}")
    return WhisperConfig(**{**WHISPER_PRESETS[name], **overrides})


def audio_sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Whisper's encoder positions (length, channels): sines then cosines (not interleaved), timescales spaced
    geometrically from 1 to max_timescale over channels / 2 - 1 steps."""
    inc = math.log(max_timescale) / (channels // 2 - 1)
    inv = torch.exp(-inc * torch.arange(channels // 2, dtype=torch.float32))
    t = torch.arange(length, dtype=torch.float32)[:, None] * inv[None, :]  # (length, channels / 2)
    return torch.cat([torch.sin(t), torch.cos(t)], dim=1)


class AudioEncoder(nn.Module):
    def __init__(self, cfg: WhisperConfig) -> None:
        super().__init__()
        block_cfg = cfg.block_config()
        self.conv1 = nn.Conv1d(cfg.n_mels, cfg.d_model, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(cfg.d_model, cfg.d_model, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positions", audio_sinusoids(cfg.n_audio_ctx, cfg.d_model))  # fixed, saved
        self.blocks = nn.ModuleList(Block(block_cfg, causal=False) for _ in range(cfg.n_audio_layer))
        self.norm = build_norm(block_cfg)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """mel (B, n_mels, frames), frames <= 2 * n_audio_ctx -> (B, ceil(frames / 2), d)."""
        if mel.dim() != 3 or mel.shape[1] != self.conv1.in_channels:
            raise ValueError(f"the encoder expects log-mel (B, {self.conv1.in_channels}, frames); got "
                             f"{tuple(mel.shape)} (groundup.audio.log_mel_spectrogram with n_mels="
                             f"{self.conv1.in_channels})")
        x = F.gelu(self.conv1(mel.to(self.conv1.weight.dtype)))
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # (B, S, d)
        if x.shape[1] > self.positions.shape[0]:
            raise ValueError(f"{mel.shape[-1]} mel frames exceed the encoder's {2 * self.positions.shape[0]} "
                             "(30 s); cut the audio into 30 s windows (groundup.audio.pad_or_trim)")
        x = x + self.positions[: x.shape[1]].to(x.dtype)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class TextDecoder(nn.Module):
    """Token embeddings + learned positions, causal self-attention + cross-attention blocks, LayerNorm."""

    def __init__(self, cfg: WhisperConfig) -> None:
        super().__init__()
        block_cfg = cfg.block_config()
        self.embed = Embeddings(block_cfg)
        self.blocks = nn.ModuleList(Block(block_cfg, causal=True, cross=True) for _ in range(cfg.n_text_layer))
        self.norm = build_norm(block_cfg)

    def forward(
        self, tokens: torch.Tensor, memory: torch.Tensor | MemoryKV, cache: KVCache | None = None, start: int = 0,
        pad_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """tokens (B, T) at cache positions start..start+T -> hidden (B, T, d). Rows of different prompt lengths
        are left-padded: pad_mask (B, start + T) marks real tokens, position_ids (B, T) their own positions."""
        T = tokens.shape[1]
        if position_ids is None:
            position_ids = torch.arange(start, start + T, device=tokens.device)[None]  # (1, T)
        x = self.embed(tokens, None, position_ids)  # (B, T, d)
        mask, is_causal = build_mask(T, start, True, pad_mask, None, x.device)
        for i, block in enumerate(self.blocks):
            x = block(x, mask, is_causal, None, cache, i, start, memory[i] if isinstance(memory, list) else memory)
        return self.norm(x)


class Whisper(nn.Module):
    def __init__(self, cfg: WhisperConfig) -> None:
        super().__init__()
        self.config = cfg
        self.encoder = AudioEncoder(cfg)
        self.decoder = TextDecoder(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.n_vocab, bias=False)
        self._init()
        self.lm_head.weight = self.decoder.embed.tok_emb.weight  # the output is tied to the token embedding

    def _init(self) -> None:
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() >= 2:
                nn.init.normal_(p, std=0.02)

    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        return self.encoder(mel)

    def memory_kv(self, memory: torch.Tensor) -> MemoryKV:
        """Every decoder layer's cross-attention keys and values of memory (B, S, d): fixed for the whole
        window, so decoding computes them once instead of at every token."""
        return [block.cross_attn.project_kv(memory) for block in self.decoder.blocks]

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        cfg, weight = self.config, self.decoder.embed.tok_emb.weight
        return KVCache(cfg.n_text_layer, batch_size, cfg.n_head, max_len or cfg.n_text_ctx, cfg.d_model // cfg.n_head,
                       weight.dtype, weight.device)

    def logits(
        self, tokens: torch.Tensor, memory: torch.Tensor | MemoryKV, cache: KVCache | None = None, start: int = 0,
        pad_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T, n_vocab) for tokens (B, T) given the encoder's memory (or its memory_kv)."""
        return self.lm_head(self.decoder(tokens, memory, cache, start, pad_mask, position_ids))

    def forward(self, mel: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (B, T, n_vocab): position t predicts the token after tokens[:, :t+1]."""
        return self.logits(tokens, self.encode(mel))
