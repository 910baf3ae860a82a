"""Vision-language models: a frozen decoder LM and a frozen vision encoder, joined by a small trainable connector.

    flamingo (Alayrac et al. 2022)   image ─> ViT features ─> PerceiverResampler ─> n_latents latents per image
                                     text ─> [GatedCrossAttentionBlock ─> decoder layer] x n_layer (every
                                     cross_every-th layer gets one) ─> logits; <image> is one token
    llava (Liu et al. 2023)          image ─> ViT patch features ─> avg-pool ─> MLP projector ─> visual tokens,
                                     written over the <image> placeholders of the text's embeddings (each image
                                     stands as tokens_per_image placeholders) ─> the unchanged decoder ─> logits

Both take two new tokens, <image> and <|endofchunk|>, with trainable input embeddings at ids vocab_size and
vocab_size + 1; the output head keeps the base vocabulary, so neither is ever generated. The decoder's own code
does not learn about images (DESIGN.md rule 3): Flamingo wraps its blocks, LLaVA feeds its inputs_embeds.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError, VisionLMConfig
from ..nn import KVCache
from ..nn.perceiver import PerceiverResampler
from ..nn.xattn import GatedCrossAttentionBlock, media_index
from ..vision.preprocess import ImageSpec, preprocess, spec_at
from .decoder import DecoderLM
from .vit import ViT

IMAGE_TOKEN, CHUNK_TOKEN = "<image>", "<|endofchunk|>"


@dataclasses.dataclass
class MediaContext:
    """What the cross-attention layers read during one forward: every row's image latents (B, M L, d_vision) and
    the image each token sees; each layer projects the latents to its K/V once per forward (a decode step's
    projection of 64 latents is small beside the step; the latents themselves are computed once per request)."""

    latents: torch.Tensor
    n_latents: int
    index: torch.Tensor | None = None  # (B, T), set per forward
    kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = dataclasses.field(default_factory=dict)


class FlamingoLayer(nn.Module):
    """A decoder block with a gated cross-attention block in front; the decoder calls it as it calls a block."""

    def __init__(self, xattn: GatedCrossAttentionBlock, block: nn.Module, owner: VisionLM) -> None:
        super().__init__()
        self.xattn, self.block = xattn, block
        self._owner = [owner]  # a list: not a submodule (no cycle in the module tree)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        ctx = self._owner[0].context
        if ctx is not None and ctx.index is not None and bool((ctx.index > 0).any()):
            key = id(self)
            if key not in ctx.kv:
                ctx.kv[key] = self.xattn.attn.project_kv(ctx.latents)
            x = self.xattn(x, ctx.kv[key], ctx.index, ctx.n_latents)
        return self.block(x, *args, **kwargs)


class VisionLM(nn.Module):
    def __init__(self, lm: DecoderLM, vision: ViT, cfg: VisionLMConfig) -> None:
        super().__init__()
        if not isinstance(lm, DecoderLM):
            raise ConfigError(f"a vision-language model is built on a decoder; got {type(lm).__name__}")
        if cfg.vision_dim is None:
            cfg = dataclasses.replace(cfg, vision_dim=vision.config.d_model)
        if vision.config.d_model != cfg.vision_dim:
            raise ConfigError(f"VisionLMConfig.vision_dim={cfg.vision_dim} but the vision encoder is "
                              f"{vision.config.d_model} wide; set vision_dim={vision.config.d_model} (or None)")
        self.lm, self.vision, self.vlm_config = lm, vision, cfg
        self.config = lm.config  # generation reads the decoder's context and positions
        self.image_id, self.chunk_id = lm.config.vocab_size, lm.config.vocab_size + 1
        lm.requires_grad_(False)
        vision.requires_grad_(False).eval()
        emb = lm.embed.tok_emb.weight
        self.new_embed = nn.Parameter(emb.detach().float().mean(0).expand(2, -1).clone().to(emb.dtype))
        self.context: MediaContext | None = None
        self.resampler = self.projector = None
        if cfg.kind == "flamingo":
            self.resampler = PerceiverResampler(cfg.vision_dim, cfg.resampler_depth, cfg.n_latents,
                                                cfg.resampler_heads, cfg.ff_mult, cfg.max_frames)
            for i in range(0, lm.config.n_layer, cfg.cross_every):
                xattn = GatedCrossAttentionBlock(lm.config, cfg.vision_dim, cfg.ff_mult)
                lm.blocks[i] = FlamingoLayer(xattn, lm.blocks[i], self)
        else:
            hidden = cfg.projector_hidden or lm.config.d_model
            self.projector = nn.Sequential(nn.Linear(cfg.vision_dim, hidden), nn.GELU(),
                                           nn.Linear(hidden, lm.config.d_model))

    def train(self, mode: bool = True) -> VisionLM:
        """The frozen towers stay in eval mode (no dropout) whatever mode the connector is put in."""
        super().train(mode)
        self.lm.eval()
        self.vision.eval()
        return self

    # --- images -> visual tokens --------------------------------------------------------------------------
    @property
    def tokens_per_image(self) -> int:
        """How many positions one image takes in the text: 1 (<image>) for Flamingo, its visual tokens for LLaVA."""
        if self.resampler is not None:
            return 1
        grid = self.image_spec.size // self.vision.config.patch_size // self.vlm_config.pool
        return grid * grid

    @property
    def image_spec(self) -> ImageSpec:
        """How images are prepared for the encoder: its own preprocessing at VisionLMConfig.image_size."""
        return spec_at(self.vision.config.preprocess, self.vlm_config.image_size or self.vision.config.image_size)

    @torch.no_grad()
    def encode_images(self, images: Sequence[Any], batch_size: int = 64) -> torch.Tensor:
        """The frozen encoder's features (n, 1 + N, d_vision) of images (paths, PIL images or arrays)."""
        spec = self.image_spec
        out = [self.vision.features(preprocess(images[i: i + batch_size], spec))
               for i in range(0, len(images), batch_size)]
        return torch.cat(out) if out else torch.empty(0)

    def visual(self, features: torch.Tensor) -> torch.Tensor:
        """features (B, M, 1 + N, d_vision) -> per image: latents (B, M, L, d_vision) for Flamingo, visual tokens
        (B, M, n, d_model) for LLaVA (the patches without the CLS token, pooled, projected)."""
        features = features.to(self.new_embed.dtype)
        if self.resampler is not None:
            return self.resampler(features)
        B, M, n1, d = features.shape
        g = round((n1 - 1) ** 0.5)
        grid = features[:, :, 1:].reshape(B * M, g, g, d).permute(0, 3, 1, 2)  # (B M, d, g, g)
        pooled = F.avg_pool2d(grid, self.vlm_config.pool)  # (B M, d, g / p, g / p)
        tokens = pooled.flatten(2).transpose(1, 2)  # (B M, n, d)
        return self.projector(tokens).reshape(B, M, tokens.shape[1], -1)

    @contextlib.contextmanager
    def images(self, features: torch.Tensor, counts: torch.Tensor) -> Iterator[None]:
        """Generation with images: features (B, M, 1 + N, d_vision) of each row's images (rows with fewer images
        padded), counts (B,) the row's images. The visual latents / tokens are computed once, here."""
        with torch.no_grad():
            visual = self.visual(features)
        with self.seeing(visual, counts):
            yield

    @contextlib.contextmanager
    def seeing(self, visual: torch.Tensor, counts: torch.Tensor) -> Iterator[None]:
        """Forward passes inside see these rows' images, already through visual() (B, M, L | n, d); a server
        keeps each request's and stacks the running rows'."""
        self._media = (visual, counts.to(visual.device))
        try:
            yield
        finally:
            self._media = None

    _media: tuple[torch.Tensor, torch.Tensor] | None = None

    # --- text ------------------------------------------------------------------------------------------------
    @property
    def embed(self) -> nn.Module:
        """The decoder's embeddings (what a server reads the cache dtype from)."""
        return self.lm.embed

    def new_cache(self, batch_size: int, max_len: int | None = None, dtype: torch.dtype | None = None) -> KVCache:
        return self.lm.new_cache(batch_size, max_len, dtype)

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B, T, d): the base embeddings, and the two new tokens' own."""
        V = self.image_id
        if int(input_ids.max()) > self.chunk_id or int(input_ids.min()) < 0:
            raise ValueError(f"token ids must lie in [0, {self.chunk_id}] (the vocabulary and {IMAGE_TOKEN}, "
                             f"{CHUNK_TOKEN}); got {int(input_ids.min())}..{int(input_ids.max())}")
        x = self.lm.embed.tok_emb(input_ids.clamp(max=V - 1))  # (B, T, d)
        new = input_ids >= V
        return torch.where(new[..., None], self.new_embed.to(x.dtype)[(input_ids - V).clamp(min=0)], x)

    def _counts(self, input_ids: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """Each row's images when given with the batch: its <image> markers, which must not outnumber them."""
        markers = (input_ids == self.image_id).sum(-1)
        counts = markers // self.tokens_per_image
        bad = ((markers % self.tokens_per_image != 0) | (counts > visual.shape[1])).nonzero()
        if len(bad):
            b = int(bad[0])
            raise ValueError(f"row {b} marks {int(markers[b]) / self.tokens_per_image:g} images ({int(markers[b])} "
                             f"{IMAGE_TOKEN} tokens, {self.tokens_per_image} per image) but {visual.shape[1]} "
                             "were given: give one image per marker")
        return counts

    def forward(
        self, input_ids: torch.Tensor, *, media: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None, start: int = 0, last_only: bool = False,
    ) -> torch.Tensor:
        """Logits (B, T, V). media: features (B, M, 1 + N, d_vision) of the row's images in marker order (training;
        rows with fewer images padded); without it, the images of an enclosing `images(...)`, else none."""
        if media is not None:
            visual = self.visual(media)
            counts = self._counts(input_ids, visual)
        elif self._media is not None:
            visual, counts = self._media
        else:
            visual = counts = None
        x = self.embed_tokens(input_ids)
        if visual is not None and self.projector is not None:
            x = self._splice(x, input_ids, visual, counts)
        elif visual is not None:
            B, M, L, d = visual.shape
            self.context = MediaContext(visual.reshape(B, M * L, d), L,
                                        media_index(input_ids == self.image_id, counts))
        try:
            return self.lm(inputs_embeds=x, position_ids=position_ids, attention_mask=attention_mask, cache=cache,
                           start=start, last_only=last_only)
        finally:
            self.context = None

    def _splice(self, x: torch.Tensor, input_ids: torch.Tensor, visual: torch.Tensor,
                counts: torch.Tensor) -> torch.Tensor:
        """LLaVA: each row's placeholders take its images' visual tokens in order; a window that cut off the
        row's first placeholders holds its last ones."""
        rows = []
        for b in range(x.shape[0]):
            where = (input_ids[b] == self.image_id).nonzero().squeeze(-1)  # (P,)
            if len(where) == 0:
                rows.append(x[b])
                continue
            tokens = visual[b, : int(counts[b])].reshape(-1, visual.shape[-1])  # (count n, d)
            if len(where) > len(tokens):
                raise ValueError(f"row {b} holds {len(where)} {IMAGE_TOKEN} placeholders for {len(tokens)} visual "
                                 "tokens: give one image per marker")
            rows.append(x[b].index_put((where,), tokens[-len(where):].to(x.dtype)))
        return torch.stack(rows)
