"""Decoder-only causal language model. GPT-2, Llama / SmolLM2 and MPT-style ALiBi models are the
same code with different ModelConfig fields (positions, norm, MLP, bias, n_kv_head, tying); n_expert > 0
makes every block's MLP a mixture of experts (Mixtral, Switch); mixer="retention" / "hyena" replaces every
block's attention with multi-scale retention (RetNet) or the Hyena operator.

    ids ─> Embeddings ─> Block × n_layer ─> norm ─> lm_head ─> logits
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import ConfigError, ModelConfig
from ..nn import Block, Embeddings, KVCache, alibi_slopes, build_mask, build_norm, build_rotary, moe_aux_loss
from ..nn.hyena import HyenaCache
from ..nn.retention import RetentionState


def init_weights(model: nn.Module, n_layer: int) -> None:
    """GPT-2 initialisation: N(0, 0.02), zero biases, residual output projections scaled by
    1/sqrt(2 * n_layer) so the residual stream's variance does not grow with depth. Modules marked keeps_init
    (Hyena's filter network and short convolution) keep the initialisation they were built with."""
    own = {id(p) for m in model.modules() if getattr(m, "keeps_init", False) for p in m.parameters()}
    for name, p in model.named_parameters():
        if id(p) in own:
            continue
        if name.endswith("bias"):
            nn.init.zeros_(p)
        elif p.dim() >= 2:
            std = 0.02 / math.sqrt(2 * n_layer) if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
            nn.init.normal_(p, mean=0.0, std=std)


def _input_keep(attention_mask: torch.Tensor | None, start: int, T: int) -> torch.Tensor | None:
    """(B, T) bool: which of the input's tokens are real, from a mask over cache + input (None: all of them)."""
    if attention_mask is None:
        return None
    if attention_mask.shape[1] != start + T:
        raise ValueError(f"attention_mask covers {attention_mask.shape[1]} positions; expected {start + T} "
                         "(cache + input)")
    return attention_mask[:, start:].bool()


class DecoderLM(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.arch != "decoder":
            raise ConfigError(f"DecoderLM needs ModelConfig.arch='decoder', got {cfg.arch!r}")
        self.config = cfg
        self.embed = Embeddings(cfg)
        self.blocks = nn.ModuleList(Block(cfg, causal=True) for _ in range(cfg.n_layer))
        self.norm = build_norm(cfg) if cfg.prenorm else nn.Identity()
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.rotary = build_rotary(cfg)
        self.register_buffer(
            "alibi", alibi_slopes(cfg.n_head) if cfg.pos == "alibi" else None, persistent=False
        )
        init_weights(self, cfg.n_layer)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.tok_emb.weight

    def aux_loss(self) -> torch.Tensor | None:
        """The MoE layers' weighted router losses from the last forward (None for a dense model)."""
        return moe_aux_loss(self)

    def new_cache(
        self, batch_size: int, max_len: int | None = None, dtype: torch.dtype | None = None,
    ) -> KVCache | RetentionState | HyenaCache:
        """The decoding cache of this model's mixer: keys / values, retention's recurrent state (max_len unused:
        its size does not grow) or Hyena's convolution history."""
        cfg, weight = self.config, self.embed.tok_emb.weight
        if cfg.mixer == "retention":
            return RetentionState.zeros(cfg.n_layer, batch_size, cfg.n_head, cfg.head_dim, weight.device)
        if cfg.mixer == "hyena":
            return HyenaCache(cfg.n_layer, batch_size, cfg.d_model, cfg.hyena_order, max_len or cfg.block_size,
                              dtype or weight.dtype, weight.device)
        return KVCache(
            cfg.n_layer, batch_size, cfg.n_kv_head, max_len or cfg.block_size, cfg.head_dim,
            dtype or weight.dtype, weight.device,
        )

    def hidden_states(
        self, input_ids: torch.Tensor | None = None, *, inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None, start: int = 0,
    ) -> torch.Tensor:
        """Final-norm hidden states (B, T, d). With a cache, the input sits at positions start..start+T
        and attention_mask (B, start+T) marks real (1) vs padding (0) tokens over cache + input."""
        x_ref = input_ids if inputs_embeds is None else inputs_embeds
        T = x_ref.shape[1]
        if position_ids is None:
            position_ids = torch.arange(start, start + T, device=x_ref.device)[None]  # (1, T)
            n_pos = start + T
        else:
            n_pos = int(position_ids.max()) + 1
        x = self.embed(input_ids, inputs_embeds, position_ids)  # (B, T, d)
        if self.config.mixer == "attention":
            mask, is_causal = build_mask(T, start, True, attention_mask, self.alibi, x.device)
        else:  # retention and Hyena are causal by construction and need only which input tokens are real
            mask, is_causal = _input_keep(attention_mask, start, T), True
        rope = self.rotary(position_ids, n_pos) if self.rotary is not None else None
        for i, block in enumerate(self.blocks):
            x = block(x, mask, is_causal, rope, cache, i, start)
        return self.norm(x)

    def forward(
        self, input_ids: torch.Tensor | None = None, *, inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None, start: int = 0, last_only: bool = False,
    ) -> torch.Tensor:
        """Logits (B, T, V), or (B, 1, V) for the last position only when last_only (decoding)."""
        h = self.hidden_states(
            input_ids, inputs_embeds=inputs_embeds, position_ids=position_ids,
            attention_mask=attention_mask, cache=cache, start=start,
        )
        return self.lm_head(h[:, -1:] if last_only else h)
