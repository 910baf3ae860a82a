"""Position information: sinusoidal tables, rotary embeddings (RoPE) and ALiBi biases.

Learned absolute positions are a plain nn.Embedding in the model; everything here is a formula.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def sinusoidal_table(n_pos: int, dim: int) -> torch.Tensor:
    """Vaswani et al. 2017, sec. 3.5: PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(...)."""
    pos = torch.arange(n_pos, dtype=torch.float32)[:, None]  # (P, 1)
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(n_pos, dim)
    table[:, 0::2] = torch.sin(pos * inv_freq)
    table[:, 1::2] = torch.cos(pos * inv_freq[: dim // 2])
    return table  # (P, dim)


def rope_table(
    n_pos: int, head_dim: int, theta: float = 10000.0, scaling: dict[str, Any] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin for RoPE (Su et al. 2021) in the half-split layout of GPT-NeoX and HF Llama.

    Frequency i (of head_dim/2) is theta^(-2i/head_dim); dimension i pairs with i + head_dim/2.
    `scaling` (ModelConfig.rope_scaling) rescales the frequencies for long context, see rope_inv_freq.
    """
    inv_freq = rope_inv_freq(head_dim, theta, scaling)
    angles = torch.arange(n_pos, dtype=torch.float64)[:, None] * inv_freq  # (P, D/2)
    angles = torch.cat([angles, angles], dim=-1)  # (P, D)
    return angles.cos().float(), angles.sin().float()


def rope_inv_freq(head_dim: int, theta: float = 10000.0, scaling: dict[str, Any] | None = None) -> torch.Tensor:
    """RoPE's head_dim/2 frequencies (float64), optionally rescaled:

    linear (Chen et al. 2023, position interpolation): every frequency / factor.
    llama3 (Meta's Llama 3.1): wavelengths longer than original_len / low_freq_factor are divided by
    factor, shorter than original_len / high_freq_factor kept, and those between blended smoothly.
    """
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # (D/2,)
    kind = None if scaling is None else scaling.get("rope_type")
    if kind is None or kind == "default":
        return inv_freq
    factor = float(scaling["factor"])
    if kind == "linear":
        return inv_freq / factor
    if kind != "llama3":
        raise ValueError(f"rope_scaling rope_type={kind!r} is unsupported; use 'linear' or 'llama3'")
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    original = float(scaling["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > original / low, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low) / (high - low)  # 0 at the low-frequency edge, 1 at the high
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= original / high) & (wavelen <= original / low)
    return torch.where(medium, blended, scaled)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (x_i, x_{i+D/2}) pair by its position's angle. x: (B, H, T, D); cos/sin: (B|1, 1, T, D)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)  # (B, H, T, D)
    return (x * cos + rotated * sin).to(x.dtype)


def alibi_slopes(n_head: int) -> torch.Tensor:
    """Press et al. 2022: head h of n gets slope 2^(-8h/n); for n not a power of two, take the
    slopes of the closest smaller power of two and fill in every other slope of the next one."""

    def power_of_two(n: int) -> list[float]:
        return [2.0 ** (-8.0 * (h + 1) / n) for h in range(n)]

    closest = 2 ** math.floor(math.log2(n_head))
    slopes = power_of_two(closest)
    if closest < n_head:
        slopes += power_of_two(2 * closest)[0::2][: n_head - closest]
    return torch.tensor(slopes)


def alibi_bias(slopes: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """-slope * |i - j| for query positions i and key positions j: (H, T, S)."""
    distance = (q_pos[:, None] - k_pos[None, :]).abs().float()  # (T, S)
    return -slopes[:, None, None] * distance  # (H, T, S)


class RotaryEmbedding(torch.nn.Module):
    """Holds the RoPE cos/sin table and grows it on demand, so rotary models can run past block_size."""

    def __init__(
        self, head_dim: int, n_pos: int, theta: float = 10000.0, scaling: dict[str, Any] | None = None
    ) -> None:
        super().__init__()
        self.head_dim, self.theta, self.scaling = head_dim, theta, scaling
        cos, sin = rope_table(n_pos, head_dim, theta, scaling)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, position_ids: torch.Tensor, n_pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids (B|1, T), n_pos = 1 + the largest position -> cos, sin each (B|1, 1, T, D)."""
        if n_pos > self.cos.shape[0]:
            cos, sin = rope_table(max(n_pos, 2 * self.cos.shape[0]), self.head_dim, self.theta, self.scaling)
            self.cos, self.sin = cos.to(self.cos.device), sin.to(self.sin.device)
        return self.cos[position_ids][:, None], self.sin[position_ids][:, None]


def build_rotary(cfg) -> RotaryEmbedding | None:
    """The model's RoPE table when cfg.pos == 'rope', else None."""
    if cfg.pos != "rope":
        return None
    return RotaryEmbedding(cfg.head_dim, cfg.block_size, cfg.rope_theta, cfg.rope_scaling)
