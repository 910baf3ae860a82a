"""Multi-scale retention (Sun et al. 2023, "Retentive Network"): attention's softmax replaced by a per-head decay,
which lets one function run in three forms.

    parallel    o = (Q Kᵀ ⊙ D) V,   D[n, m] = γ^(n-m) for m <= n, else 0         training, short prefill
    recurrent   S_n = γ S_(n-1) + k_nᵀ v_n,   o_n = q_n S_n                      decoding: O(1) state per token
    chunkwise   within a chunk: parallel; across chunks: the state R, decayed     training / prefill of long input
                R_i = γ^C R_(i-1) + K_iᵀ (V_i ⊙ γ^(C-1-j)),  o += (Q_i R_(i-1)) ⊙ γ^(j+1)

q and k are rotated by position (xPos-style: RoPE's rotation, with the decay in place of xPos's scale), so q_n k_m
depends on n - m only. Head h decays with γ_h = 1 - 2^(-5-h): each head has its own memory span. Every head's
output is normalised on its own (group norm, no affine) and gated by swish(x W_g). The norm is why the three forms
can differ in their row scale and still agree; with its epsilon at 0 they agree exactly (the authors' own threads).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .position import apply_rope


def retention_decay(n_head: int) -> torch.Tensor:
    """log γ_h for each head (H,), γ_h = 1 - 2^(-5-h): head 0 forgets over ~32 tokens, head 7 over ~4096."""
    return torch.log1p(-(2.0 ** (-5.0 - torch.arange(n_head, dtype=torch.float64)))).float()


def decay_matrix(log_gamma: torch.Tensor, n: int) -> torch.Tensor:
    """D (H, n, n): γ^(i-j) on and below the diagonal, 0 above (causal)."""
    i = torch.arange(n, device=log_gamma.device)
    distance = (i[:, None] - i[None, :]).float()  # (n, n)
    decay = torch.exp(log_gamma[:, None, None] * distance.clamp(min=0))  # (H, n, n)
    return decay.masked_fill(distance < 0, 0.0)


def retention_parallel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_gamma: torch.Tensor) -> torch.Tensor:
    """q, k: (B, H, T, D); v: (B, H, T, Dv) -> (B, H, T, Dv)."""
    scores = q @ k.transpose(-2, -1) * decay_matrix(log_gamma, q.shape[2]).to(q.dtype)  # (B, H, T, T)
    return scores @ v


def retention_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gamma: torch.Tensor, state: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One position: q, k (B, H, 1, D), v (B, H, 1, Dv), gamma (H, 1, 1), state S (B, H, D, Dv) ->
    (q S' (B, H, 1, Dv), S' = gamma S + kᵀ v). Four kernels: the decode loop's whole cost beside the linears."""
    s = torch.addcmul(state * gamma, k.transpose(-2, -1), v)
    return q @ s, s


def retention_recurrent(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_gamma: torch.Tensor, state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One position at a time from state S (B, H, D, Dv) (None = zeros) -> (outputs (B, H, T, Dv), final S)."""
    B, H, T, D = q.shape
    gamma = log_gamma.exp().to(q.dtype)[:, None, None]  # (H, 1, 1)
    s = q.new_zeros(B, H, D, v.shape[-1]) if state is None else state.to(q.dtype)
    outs = []
    for t in range(T):
        o, s = retention_step(q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1], gamma, s)
        outs.append(o)
    return torch.cat(outs, dim=2), s


def retention_chunkwise(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_gamma: torch.Tensor, chunk: int,
    state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunks of `chunk` positions (the last may be shorter), from state R (B, H, D, Dv) (None = zeros) ->
    (outputs (B, H, T, Dv), final R). Memory grows with chunk², not T²."""
    B, H, T, D = q.shape
    r = q.new_zeros(B, H, D, v.shape[-1]) if state is None else state.to(q.dtype)
    lg = log_gamma.to(q.dtype)[:, None]  # (H, 1)
    outs = []
    for lo in range(0, T, chunk):
        qc, kc, vc = q[:, :, lo : lo + chunk], k[:, :, lo : lo + chunk], v[:, :, lo : lo + chunk]
        c = qc.shape[2]
        j = torch.arange(c, device=q.device, dtype=q.dtype)
        inner = retention_parallel(qc, kc, vc, log_gamma)  # (B, H, c, Dv)
        cross = (qc @ r) * torch.exp(lg * (j + 1))[None, :, :, None]  # state decayed to each position
        outs.append(inner + cross)
        to_end = torch.exp(lg * (c - 1 - j))[None, :, :, None]  # each position's decay to the chunk's end
        r = torch.exp(lg * c)[None, :, :, None] * r + kc.transpose(-2, -1) @ (vc * to_end)
    return torch.cat(outs, dim=2), r


class RetentionState:
    """A retention model's decoding cache: one state S (B, H, D, Dv) per layer, in float32, whatever the context
    length (the KV cache's counterpart: constant memory per generated token)."""

    def __init__(self, states: list[torch.Tensor]) -> None:
        self.s = states

    @classmethod
    def zeros(cls, n_layer: int, batch_size: int, n_head: int, head_dim: int,
              device: torch.device | str = "cpu") -> RetentionState:
        return cls([torch.zeros(batch_size, n_head, head_dim, head_dim, device=device) for _ in range(n_layer)])

    def read(self, layer: int, start: int) -> torch.Tensor | None:
        """The state before position `start`; start 0 begins a new sequence (no state)."""
        return self.s[layer] if start > 0 else None

    def write(self, layer: int, state: torch.Tensor) -> None:
        self.s[layer].copy_(state)  # in place: the serving engine hands in views of its slot rows

    def rows(self, lo: int, hi: int) -> RetentionState:
        return RetentionState([s[lo:hi] for s in self.s])

    def nbytes(self) -> int:
        return sum(s.numel() * s.element_size() for s in self.s)


class Retention(nn.Module):
    """Multi-scale retention over cfg.n_head heads of cfg.head_dim; picks its form by the work (module docstring)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.head_dim, self.chunk = cfg.n_head, cfg.head_dim, cfg.retention_chunk
        self.eps = cfg.norm_eps
        inner = cfg.n_head * cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, inner, bias=cfg.bias)
        self.k_proj = nn.Linear(cfg.d_model, inner, bias=cfg.bias)
        self.v_proj = nn.Linear(cfg.d_model, inner, bias=cfg.bias)
        self.g_proj = nn.Linear(cfg.d_model, inner, bias=cfg.bias)
        self.o_proj = nn.Linear(inner, cfg.d_model, bias=cfg.bias)
        self.register_buffer("log_gamma", retention_decay(cfg.n_head), persistent=False)
        self.register_buffer("gamma", self.log_gamma.exp()[:, None, None], persistent=False)  # (H, 1, 1)

    def heads(self, x: torch.Tensor, proj: nn.Linear) -> torch.Tensor:
        B, T, _ = x.shape
        return proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)

    def forward(
        self, x: torch.Tensor, keep: torch.Tensor | None = None, is_causal: bool = True,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None, cache: RetentionState | None = None,
        layer: int = 0, start: int = 0,
    ) -> torch.Tensor:
        """x (B, T, d) at positions start..start+T; keep (B, T) marks real tokens (padding adds nothing to any
        output or to the state); rope: the rotation's cos / sin for those positions."""
        B, T, _ = x.shape
        q, k, v = self.heads(x, self.q_proj), self.heads(x, self.k_proj), self.heads(x, self.v_proj)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope) * self.head_dim**-0.5
        if keep is not None:
            k = k * keep[:, None, :, None].to(k.dtype)
        state = cache.read(layer, start) if cache is not None else None
        if cache is not None and T == 1:
            if state is None:
                state = q.new_zeros(B, self.n_head, self.head_dim, self.head_dim)
            o, state = retention_step(q, k, v, self.gamma.to(q.dtype), state.to(q.dtype))
        elif cache is not None or T > self.chunk:
            o, state = retention_chunkwise(q, k, v, self.log_gamma, min(self.chunk, T), state)
        else:
            o = retention_parallel(q, k, v, self.log_gamma)
        if cache is not None:
            cache.write(layer, state)
        o = F.layer_norm(o.float(), (self.head_dim,), eps=self.eps).to(x.dtype)  # group norm: each head alone
        y = F.silu(self.g_proj(x)) * o.transpose(1, 2).reshape(B, T, -1)  # (B, T, H D)
        return self.o_proj(y)
