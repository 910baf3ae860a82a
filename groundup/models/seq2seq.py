"""The original Transformer encoder-decoder (Vaswani et al. 2017, "Attention Is All You Need").

    src_ids ─> Encoder (embed, Block × n_layer, non-causal) ─> memory (B, S, d)
                                                                  │ cross-attention (keys = real src tokens)
    tgt_in  ─> TargetDecoder (embed, Block × n_decoder_layer, causal) ─> norm ─> lm_head ─> logits (B, T, V_tgt)

Vocabulary (sec. 3.4): with tgt_vocab_size None the source and target share one token embedding,
and the output projection is that same matrix (tie_embeddings). With tgt_vocab_size set the target
side gets its own embedding, and the output projection is tied to it.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ConfigError, ModelConfig
from ..nn import Block, Embeddings, KVCache, alibi_slopes, build_mask, build_norm, build_rotary
from .decoder import init_weights
from .encoder import Encoder

MemoryKV = list[tuple[torch.Tensor, torch.Tensor]]  # per decoder layer: cross-attention (k, v), each (B, Hkv, S, D)


def memory_mask(src_mask: torch.Tensor | None) -> torch.Tensor | None:
    """Source padding mask (B, S), 1 = real token -> cross-attention mask (B, 1, 1, S) bool, True = attend."""
    if src_mask is None:
        return None
    return src_mask.bool()[:, None, None, :]  # (B, 1, 1, S)


class TargetDecoder(nn.Module):
    """The decoder stack: target embeddings, causal self-attention + cross-attention blocks, final norm
    (pre-norm configs only). Returns hidden states (B, T, d)."""

    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.embed = Embeddings(cfg, vocab_size=vocab_size)
        self.blocks = nn.ModuleList(Block(cfg, causal=True, cross=True) for _ in range(cfg.n_decoder_layer))
        self.norm = build_norm(cfg) if cfg.prenorm else nn.Identity()
        self.rotary = build_rotary(cfg)
        self.register_buffer("alibi", alibi_slopes(cfg.n_head) if cfg.pos == "alibi" else None, persistent=False)

    def forward(
        self, tgt_in: torch.Tensor, memory: torch.Tensor | MemoryKV, mem_mask: torch.Tensor | None,
        cache: KVCache | None = None, start: int = 0,
    ) -> torch.Tensor:
        """tgt_in at target positions start..start+T; memory (B, S, d), or its per-layer keys and values
        (Seq2Seq.memory_kv) when decoding with a self-attention cache."""
        T = tgt_in.shape[1]
        position_ids = torch.arange(start, start + T, device=tgt_in.device)[None]  # (1, T)
        x = self.embed(tgt_in, None, position_ids)  # (B, T, d)
        mask, is_causal = build_mask(T, start, True, None, self.alibi, x.device)
        rope = self.rotary(position_ids, start + T) if self.rotary is not None else None
        for i, block in enumerate(self.blocks):
            layer_memory = memory[i] if isinstance(memory, list) else memory
            x = block(x, mask, is_causal, rope, cache, i, start, layer_memory, mem_mask)
        return self.norm(x)


class Seq2Seq(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.arch != "seq2seq":
            raise ConfigError(
                f"Seq2Seq needs ModelConfig.arch='seq2seq', got {cfg.arch!r}; "
                "use a seq2seq preset (e.g. 'transformer-tiny')"
            )
        if cfg.tgt_vocab_size is not None and cfg.tgt_vocab_size <= 0:
            raise ConfigError(
                f"ModelConfig.tgt_vocab_size={cfg.tgt_vocab_size} must be positive, or None to share vocab_size"
            )
        self.config = cfg
        self.tgt_vocab_size = cfg.tgt_vocab_size or cfg.vocab_size
        self.encoder = Encoder(cfg, segments=False)
        self.decoder = TargetDecoder(cfg, self.tgt_vocab_size)
        self.lm_head = nn.Linear(cfg.d_model, self.tgt_vocab_size, bias=False)
        init_weights(self, cfg.n_layer + cfg.n_decoder_layer)
        if cfg.tgt_vocab_size is None:  # one shared source/target vocabulary: one embedding matrix
            self.decoder.embed.tok_emb.weight = self.encoder.embed.tok_emb.weight
        if cfg.tie_embeddings:
            self.lm_head.weight = self.decoder.embed.tok_emb.weight

    def encode(self, src_ids: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """src_ids (B, S), src_mask (B, S) with 1 = real token, 0 = padding -> memory (B, S, d)."""
        return self.encoder(src_ids, None, src_mask)

    def decode(self, tgt_in: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """tgt_in (B, T) (BOS + shifted target), memory (B, S, d) -> logits (B, T, V_tgt)."""
        return self.lm_head(self.decoder(tgt_in, memory, memory_mask(src_mask)))

    def new_cache(self, batch_size: int, max_len: int | None = None, dtype: torch.dtype | None = None) -> KVCache:
        """The decoder's self-attention cache (the cross-attention keys come from memory_kv)."""
        cfg, weight = self.config, self.decoder.embed.tok_emb.weight  # float even when linears are quantized
        return KVCache(cfg.n_decoder_layer, batch_size, cfg.n_kv_head, max_len or cfg.block_size, cfg.head_dim,
                       dtype or weight.dtype, weight.device)

    def memory_kv(self, memory: torch.Tensor) -> MemoryKV:
        """Every decoder layer's cross-attention keys and values of memory (B, S, d): a source's are fixed
        while its target grows, so decoding computes them once instead of at every step."""
        return [block.cross_attn.project_kv(memory) for block in self.decoder.blocks]

    def decode_step(
        self, tgt: torch.Tensor, memory_kv: MemoryKV, src_mask: torch.Tensor | None, cache: KVCache, start: int
    ) -> torch.Tensor:
        """Incremental decoding: target tokens tgt (B, T) at positions start..start+T, earlier ones in cache
        -> logits of the last position (B, V_tgt). Equals decode() on the whole prefix."""
        h = self.decoder(tgt, memory_kv, memory_mask(src_mask), cache, start)  # (B, T, d)
        return self.lm_head(h[:, -1])

    def forward(
        self, src_ids: torch.Tensor, tgt_in: torch.Tensor, src_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Teacher-forced logits (B, T, V_tgt): position t predicts the target token after tgt_in[:, :t+1]."""
        return self.decode(tgt_in, self.encode(src_ids, src_mask), src_mask)

    @torch.no_grad()
    def greedy_decode(
        self, src_ids: torch.Tensor, src_mask: torch.Tensor | None, bos_id: int, eos_id: int, max_len: int
    ) -> torch.Tensor:
        """Greedy (argmax) decoding of a batch. Returns (B, L) generated ids, BOS excluded, L <= max_len;
        each row stops at its first EOS (kept), and positions after it hold ModelConfig.pad_id.

        The decoder is rerun over the whole growing prefix each step (no cache): O(L^2), simple and
        exact, fine for short targets. Runs in eval mode (no dropout) and restores the previous mode."""
        if max_len < 1 or max_len > self.config.block_size:
            raise ValueError(
                f"max_len={max_len} must be in [1, block_size={self.config.block_size}] "
                "(the decoder input BOS + max_len-1 tokens must fit the positions); lower max_len"
            )
        was_training = self.training
        self.eval()
        try:
            memory = self.encode(src_ids, src_mask)
            B = src_ids.shape[0]
            tgt = torch.full((B, 1), bos_id, dtype=torch.long, device=src_ids.device)  # (B, 1)
            done = torch.zeros(B, dtype=torch.bool, device=src_ids.device)
            for _ in range(max_len):
                nxt = self.decode(tgt, memory, src_mask)[:, -1].argmax(dim=-1)  # (B,)
                nxt = nxt.masked_fill(done, self.config.pad_id)
                tgt = torch.cat([tgt, nxt[:, None]], dim=1)  # (B, t + 1)
                done = done | (nxt == eos_id)
                if bool(done.all()):
                    break
            return tgt[:, 1:]
        finally:
            self.train(was_training)
