"""A preallocated key/value cache: one (B, n_kv_head, max_len, head_dim) buffer per layer and
per k/v, written in place at the input positions, so decoding never reallocates or concatenates."""

from __future__ import annotations

import torch


def kv_bytes_per_token(n_layer: int, n_kv_head: int, head_dim: int, dtype: torch.dtype = torch.float32) -> int:
    """What one more token of context costs in the cache: k and v (2) per layer, per KV head, head_dim
    elements each. This is what grouped-query / multi-query attention shrinks: by n_head / n_kv_head."""
    for name, value in (("n_layer", n_layer), ("n_kv_head", n_kv_head), ("head_dim", head_dim)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"kv_bytes_per_token({name}={value!r}): must be a positive integer")
    return 2 * n_layer * n_kv_head * head_dim * torch.empty((), dtype=dtype).element_size()


class KVCache:
    def __init__(
        self, n_layer: int, batch_size: int, n_kv_head: int, max_len: int, head_dim: int,
        dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
    ) -> None:
        shape = (batch_size, n_kv_head, max_len, head_dim)
        self.max_len = max_len
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]

    def update(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, Hkv, T, D) at positions start..start+T and return the filled prefix."""
        end = start + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; writing up to {end}. Allocate a longer cache.")
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]  # (B, Hkv, end, D)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def bytes_per_token(self) -> float:
        """Measured from the buffers: all cache bytes / (batch rows x positions); equals kv_bytes_per_token."""
        batch, _, max_len, _ = self.k[0].shape  # (B, Hkv, max_len, D)
        return self.nbytes() / (batch * max_len)
