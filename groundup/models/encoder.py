"""BERT-style bidirectional encoder (Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional
Transformers for Language Understanding") and its heads.

                                                  ┌─> mlm_head (dense, act, norm, tied decoder) ─> mlm_logits (B, T, V)
    ids + segments ─> Embeddings ─> Block × n_layer ─> hidden (B, T, d)
                      (tok+seg+pos, LayerNorm)    ├─> pooler (dense+tanh on [CLS]) ─> nsp_head ─> nsp_logits (B, 2)
                                                  │                                └─> classifier ─> logits (B, n_class)
                                                  └─> mean_pool (mask-weighted, Reimers & Gurevych 2019) ─> (B, d)

Every attention is unmasked in time (no causal mask): each token sees the whole sequence. Padding
is removed with a key mask built from attention_mask (1 = real token, 0 = padding).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError, ModelConfig
from ..nn import Block, Embeddings, alibi_slopes, build_mask, build_norm, build_rotary
from ..nn.mlp import ACTIVATIONS
from .decoder import init_weights

# config.extra key a checkpoint of an Encoder body saved alone carries ({"pooler": bool}), so that loading it
# rebuilds the body (with its pooler, if it had one) rather than EncoderForPreTraining, arch "encoder"'s model.
BODY_KEY = "encoder_body"


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None = None, normalize: bool = True) -> torch.Tensor:
    """Average of the real tokens' hidden states (B, T, d) -> (B, d), as sentence-transformers does
    (Reimers & Gurevych 2019); L2-normalised when `normalize`, so a dot product is a cosine similarity."""
    if attention_mask is None:
        pooled = hidden.mean(dim=1)
    else:
        weights = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)  # (B, d)
    return F.normalize(pooled, p=2, dim=-1) if normalize else pooled


class Pooler(nn.Module):
    """BERT's pooler: tanh(dense(h_[CLS])), the sentence representation the NSP and classification
    heads read (Devlin et al. 2019, sec. 3)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))  # (B, d)


class Encoder(nn.Module):
    """The encoder body: embeddings, non-causal blocks, and a final norm for pre-norm configs
    (post-norm blocks, as in BERT, already end in a norm). Returns hidden states (B, T, d).

    `segments` adds BERT's token-type embedding; the seq2seq encoder builds this body without it.
    `pooler` keeps BERT's pooler on a body used alone (a Hugging Face BertModel has one): forward still returns
    the hidden states, `self.pooler(hidden)` gives tanh(dense(h_[CLS])). The heads' models hold their own."""

    def __init__(self, cfg: ModelConfig, segments: bool = True, pooler: bool = False) -> None:
        super().__init__()
        if cfg.arch not in ("encoder", "seq2seq"):
            raise ConfigError(f"Encoder needs ModelConfig.arch='encoder' (or 'seq2seq'), got {cfg.arch!r}")
        self.config = cfg
        self.embed = Embeddings(cfg, segments=segments)
        self.blocks = nn.ModuleList(Block(cfg, causal=False) for _ in range(cfg.n_layer))
        self.norm = build_norm(cfg) if cfg.prenorm else nn.Identity()
        self.pooler = Pooler(cfg) if pooler else None
        self.rotary = build_rotary(cfg)
        self.register_buffer("alibi", alibi_slopes(cfg.n_head) if cfg.pos == "alibi" else None, persistent=False)

    def forward(
        self, input_ids: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None, *, inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids (B, T) or inputs_embeds (B, T, d); token_type_ids (B, T) segment ids;
        attention_mask (B, T): 1 = real token, 0 = padding. Returns hidden states (B, T, d)."""
        if token_type_ids is not None and self.embed.seg_emb is None:
            raise ValueError(
                "token_type_ids were given but this encoder has no segment embedding "
                f"(ModelConfig.n_segment={self.config.n_segment}); set n_segment > 0 or drop token_type_ids"
            )
        x_ref = input_ids if inputs_embeds is None else inputs_embeds
        T = x_ref.shape[1]
        position_ids = torch.arange(T, device=x_ref.device)[None]  # (1, T)
        x = self.embed(input_ids, inputs_embeds, position_ids, token_type_ids)  # (B, T, d)
        mask, is_causal = build_mask(T, 0, False, attention_mask, self.alibi, x.device)
        rope = self.rotary(position_ids, T) if self.rotary is not None else None
        for i, block in enumerate(self.blocks):
            x = block(x, mask, is_causal, rope, None, i)
        return self.norm(x)


class MLMHead(nn.Module):
    """BERT's BertLMPredictionHead: dense -> activation -> LayerNorm -> decoder (its weight tied to the
    token embeddings by the owning model) + a per-token output bias."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.d_model)
        self.act = ACTIVATIONS[cfg.mlp]
        self.norm = build_norm(cfg)
        self.decoder = nn.Linear(cfg.d_model, cfg.vocab_size, bias=True)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(self.act(self.dense(hidden))))  # (B, T, V)


@dataclass
class EncoderOutput:
    hidden_states: torch.Tensor  # (B, T, d)
    pooled: torch.Tensor  # (B, d): pooler(h_[CLS])
    mlm_logits: torch.Tensor  # (B, T, V)
    nsp_logits: torch.Tensor  # (B, 2): index 0 = "B follows A", 1 = "B is random" (BERT's convention)


def _check_encoder_cfg(cfg: ModelConfig, who: str) -> None:
    if cfg.arch != "encoder":
        raise ConfigError(
            f"{who} needs ModelConfig.arch='encoder', got {cfg.arch!r}; use a BERT preset (e.g. 'bert-tiny')"
        )


class EncoderForPreTraining(nn.Module):
    """Encoder + the two pre-training heads of BERT: masked language modelling and next-sentence
    prediction. `embed()` gives mean-pooled sentence embeddings from the same body."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        _check_encoder_cfg(cfg, "EncoderForPreTraining")
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.pooler = Pooler(cfg)
        self.mlm_head = MLMHead(cfg)
        self.nsp_head = nn.Linear(cfg.d_model, 2)
        init_weights(self, cfg.n_layer)
        if cfg.tie_embeddings:
            self.mlm_head.decoder.weight = self.encoder.embed.tok_emb.weight

    def forward(
        self, input_ids: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None, *, inputs_embeds: torch.Tensor | None = None,
    ) -> EncoderOutput:
        h = self.encoder(input_ids, token_type_ids, attention_mask, inputs_embeds=inputs_embeds)  # (B, T, d)
        pooled = self.pooler(h)
        return EncoderOutput(h, pooled, self.mlm_head(h), self.nsp_head(pooled))

    def embed(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, normalize: bool = True
    ) -> torch.Tensor:
        """Sentence embeddings (B, d): the mean of the real tokens' final hidden states."""
        return mean_pool(self.encoder(input_ids, None, attention_mask), attention_mask, normalize)


class EncoderForClassification(nn.Module):
    """Encoder + pooler + dropout + Linear(d, n_class): BERT's sequence-classification fine-tuning
    recipe (Devlin et al. 2019, sec. 4.1). Returns logits (B, n_class)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        _check_encoder_cfg(cfg, "EncoderForClassification")
        if cfg.n_class < 1:
            raise ConfigError(f"ModelConfig.n_class={cfg.n_class} must be >= 1 for a classification head")
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.pooler = Pooler(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(cfg.d_model, cfg.n_class)
        init_weights(self, cfg.n_layer)

    def forward(
        self, input_ids: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None, *, inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h = self.encoder(input_ids, token_type_ids, attention_mask, inputs_embeds=inputs_embeds)  # (B, T, d)
        return self.classifier(self.drop(self.pooler(h)))  # (B, n_class)
