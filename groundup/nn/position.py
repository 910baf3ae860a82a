"""Position information: sinusoidal tables, rotary embeddings (RoPE) and ALiBi biases.

Learned absolute positions are a plain nn.Embedding in the model; everything here is a formula.
"""

from __future__ import annotations

import math

import torch


def sinusoidal_table(n_pos: int, dim: int) -> torch.Tensor:
    """Vaswani et al. 2017, sec. 3.5: PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(...)."""
    pos = torch.arange(n_pos, dtype=torch.float32)[:, None]  # (P, 1)
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(n_pos, dim)
    table[:, 0::2] = torch.sin(pos * inv_freq)
    table[:, 1::2] = torch.cos(pos * inv_freq[: dim // 2])
    return table  # (P, dim)


def rope_table(n_pos: int, head_dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin for RoPE (Su et al. 2021) in the half-split layout of GPT-NeoX and HF Llama.

    Frequency i (of head_dim/2) is theta^(-2i/head_dim); dimension i pairs with i + head_dim/2.
    """
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.arange(n_pos, dtype=torch.float64)[:, None] * inv_freq  # (P, D/2)
    angles = torch.cat([angles, angles], dim=-1)  # (P, D)
    return angles.cos().float(), angles.sin().float()


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

    def __init__(self, head_dim: int, n_pos: int, theta: float = 10000.0) -> None:
        super().__init__()
        self.head_dim, self.theta = head_dim, theta
        cos, sin = rope_table(n_pos, head_dim, theta)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, position_ids: torch.Tensor, n_pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids (B|1, T), n_pos = 1 + the largest position -> cos, sin each (B|1, 1, T, D)."""
        if n_pos > self.cos.shape[0]:
            cos, sin = rope_table(max(n_pos, 2 * self.cos.shape[0]), self.head_dim, self.theta)
            self.cos, self.sin = cos.to(self.cos.device), sin.to(self.sin.device)
        return self.cos[position_ids][:, None], self.sin[position_ids][:, None]
