"""CLIP (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision") and LiT
(Zhai et al. 2022, "LiT: Zero-Shot Transfer with Locked-image text Tuning").

    pixels (B, C, H, W) ─> ViT (ln_pre, Blocks, LayerNorm, CLS) ─> visual_projection ─> L2 norm ─> I (B, e)
                                                                                                   │
    ids (B, T) ─> TextTower (causal Blocks, norm) ─> h at <end_of_text> ─> text_projection ─> L2 norm ─> T (B, e)
                  (text_pool="mean": bidirectional, BERT-style, mean over the attention mask)      │
                                                   logits_per_image = exp(logit_scale) · I Tᵀ (B, B)
                                                   ─> contrastive_loss: symmetric CE, targets = the diagonal

Both towers are groundup's own Blocks (the image tower is groundup's ViT); only the pooling, the two projections
and the learned temperature are new. Zero-shot classification (Radford et al. 2021, sec. 3.1.4) embeds prompt
templates per class name and compares images against their mean direction.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError, ModelConfig, VisionConfig, from_checked_dict
from ..nn import Block, Embeddings, alibi_slopes, build_mask, build_norm, build_rotary
from .decoder import init_weights
from .encoder import mean_pool
from .vit import ViT

TextPool = Literal["eot", "mean"]
Lock = Literal["", "image", "text"]
TextTokenizer = Callable[[list[str]], "torch.Tensor | Mapping[str, torch.Tensor]"]


@dataclass
class ClipConfig:
    """One config for the CLIP family: an image tower, a text tower and the shared embedding space."""

    vision: VisionConfig
    text: ModelConfig
    embed_dim: int = 512  # the shared embedding size both projections map to
    text_pool: TextPool = "eot"  # "eot": causal tower read at <end_of_text> (CLIP); "mean": bidirectional, mean-pooled
    eot_id: int | None = 49407  # <end_of_text>, pooled at its first position; None = at the argmax of the ids
    # (CLIP's original rule, which works because eot is its largest id; HF configs say so with eos_token_id=2)
    init_logit_scale: float = math.log(1 / 0.07)  # the temperature starts at 0.07 (Radford et al. 2021, sec. 2.5)
    max_logit_scale: float = math.log(100)  # clamped to at most 100 "to prevent training instability"
    lock: Lock = ""  # LiT: "image" or "text" freezes that tower (requires_grad False, always in eval mode)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.vision, dict):
            self.vision = VisionConfig.from_dict(self.vision)
        if isinstance(self.text, dict):
            self.text = ModelConfig.from_dict(self.text)
        if not isinstance(self.vision, VisionConfig) or not isinstance(self.text, ModelConfig):
            raise ConfigError("ClipConfig.vision must be a VisionConfig (or its dict), ClipConfig.text a ModelConfig")
        for name, kind in (("text_pool", TextPool), ("lock", Lock)):
            if getattr(self, name) not in get_args(kind):
                raise ConfigError(f"ClipConfig.{name}={getattr(self, name)!r} is unknown; use one of "
                                  f"{list(get_args(kind))}")
        if not isinstance(self.embed_dim, int) or self.embed_dim <= 0:
            raise ConfigError(f"ClipConfig.embed_dim={self.embed_dim!r} must be a positive integer")
        want = "decoder" if self.text_pool == "eot" else "encoder"
        if self.text.arch != want:
            raise ConfigError(
                f"ClipConfig.text_pool={self.text_pool!r} needs text.arch={want!r} (got {self.text.arch!r}): 'eot' "
                "reads a causal tower at <end_of_text>, 'mean' averages a bidirectional encoder; change one of them")
        if self.vision.n_class:
            raise ConfigError(f"ClipConfig.vision.n_class={self.vision.n_class}: the image tower is a backbone; set 0")
        eot = self.eot_id
        in_vocab = isinstance(eot, int) and 0 <= eot < self.text.vocab_size
        if self.text_pool == "eot" and eot is not None and not in_vocab:
            raise ConfigError(f"ClipConfig.eot_id={eot!r} is not an id of the text vocabulary (vocab_size="
                              f"{self.text.vocab_size}); use the tokenizer's end-of-text id (None: the argmax)")
        if not 0 <= self.init_logit_scale <= self.max_logit_scale:
            raise ConfigError(f"ClipConfig.init_logit_scale={self.init_logit_scale} must lie in [0, max_logit_scale="
                              f"{self.max_logit_scale}] (log(1/0.07) = {math.log(1 / 0.07):.4f} is CLIP's)")

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {"family": "clip", **out, "vision": self.vision.to_dict(), "text": self.text.to_dict(),
                "extra": dict(self.extra)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClipConfig:
        return from_checked_dict(cls, {k: v for k, v in data.items() if k != "family"}, ConfigError)


# OpenAI CLIP's towers: pre-norm LayerNorm (eps 1e-5) blocks with QuickGELU; the ViT adds ln_pre, no patch bias.
CLIP_VISION = dict(pre_norm=True, patch_bias=False, norm_eps=1e-5, mlp="quick_gelu", pool="cls")
CLIP_TEXT = dict(arch="decoder", pos="learned", norm="layernorm", norm_eps=1e-5, prenorm=True, mlp="quick_gelu",
                 bias=True, vocab_size=49408, block_size=77)
CLIP_PRESETS: dict[str, dict[str, Any]] = {
    # 28x28 grayscale (Fashion-MNIST scale): 7x7 patches of 4 pixels, CLIP's BPE vocabulary.
    "clip-tiny": dict(vision=dict(CLIP_VISION, image_size=28, patch_size=4, n_channels=1, n_layer=2, n_head=4,
                                  d_model=64, preprocess="gray28"),
                      text=dict(CLIP_TEXT, n_layer=2, n_head=4, d_model=64), embed_dim=64),
    # 64x64 RGB: 8x8 patches of 8 pixels, CLIP's normalisation.
    "clip-tiny-64": dict(vision=dict(CLIP_VISION, image_size=64, patch_size=8, n_channels=3, n_layer=2, n_head=4,
                                     d_model=64, preprocess="clip"),
                         text=dict(CLIP_TEXT, n_layer=2, n_head=4, d_model=64), embed_dim=64),
    # OpenAI's ViT-B/32 shape (openai/clip-vit-base-patch32).
    "clip-vit-b-32": dict(vision=dict(CLIP_VISION, image_size=224, patch_size=32, n_layer=12, n_head=12,
                                      d_model=768, preprocess="clip"),
                          text=dict(CLIP_TEXT, n_layer=12, n_head=8, d_model=512), embed_dim=512),
}


def clip_preset(name: str, **overrides: Any) -> ClipConfig:
    """A ClipConfig from a named preset; `vision={...}` / `text={...}` overrides merge into the towers' fields."""
    if name not in CLIP_PRESETS:
        raise ConfigError(f"unknown CLIP preset {name!r}; available: {sorted(CLIP_PRESETS)}")
    data = dict(CLIP_PRESETS[name])
    for tower in ("vision", "text"):
        if isinstance(overrides.get(tower), dict):
            overrides[tower] = {**data[tower], **overrides[tower]}
    return ClipConfig.from_dict({**data, **overrides})


class TextTower(nn.Module):
    """Embeddings -> Blocks -> final norm (pre-norm configs), hidden states (B, T, d). Causal for CLIP's text
    transformer; bidirectional (with BERT's segment embedding, so a groundup Encoder body's state dict fits: the
    same keys) for a mean-pooled tower."""

    def __init__(self, cfg: ModelConfig, causal: bool) -> None:
        super().__init__()
        self.config, self.causal = cfg, causal
        self.embed = Embeddings(cfg, segments=not causal)
        self.blocks = nn.ModuleList(Block(cfg, causal=causal) for _ in range(cfg.n_layer))
        self.norm = build_norm(cfg) if cfg.prenorm else nn.Identity()
        self.rotary = build_rotary(cfg)
        self.register_buffer("alibi", alibi_slopes(cfg.n_head) if cfg.pos == "alibi" else None, persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        T = input_ids.shape[1]
        position_ids = torch.arange(T, device=input_ids.device)[None]  # (1, T)
        x = self.embed(input_ids, None, position_ids)  # (B, T, d)
        mask, is_causal = build_mask(T, 0, self.causal, attention_mask, self.alibi, x.device)
        rope = self.rotary(position_ids, T) if self.rotary is not None else None
        for i, block in enumerate(self.blocks):
            x = block(x, mask, is_causal, rope, None, i)
        return self.norm(x)


def contrastive_loss(logits_per_image: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP's symmetric InfoNCE: the mean of image->text and text->image cross-entropies, pair i matching i.

    `groups` (B,): pairs of one group describe the same thing (the same caption, the same class), so each row's
    target is spread evenly over its group's columns instead of counting them as negatives; None: all distinct."""
    if logits_per_image.dim() != 2 or logits_per_image.shape[0] != logits_per_image.shape[1]:
        raise ValueError(f"contrastive_loss needs square (B, B) logits of B matching pairs; got "
                         f"{tuple(logits_per_image.shape)} (pass as many captions as images, in the same order)")
    logits = logits_per_image.float()
    if groups is None:
        targets = torch.arange(logits.shape[0], device=logits.device)
    else:
        same = (groups[:, None] == groups[None, :]).float()  # (B, B), symmetric
        targets = same / same.sum(dim=1, keepdim=True)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2


class CLIP(nn.Module):
    saves_frozen_weights = True  # a LiT-locked tower is part of the model (not a base rebuilt on resume): save it

    def __init__(self, cfg: ClipConfig) -> None:
        super().__init__()
        self.config = cfg
        self.visual = ViT(cfg.vision)
        self.text = TextTower(cfg.text, causal=cfg.text_pool == "eot")
        init_weights(self.text, cfg.text.n_layer)
        self.visual_projection = nn.Linear(cfg.vision.d_model, cfg.embed_dim, bias=False)
        self.text_projection = nn.Linear(cfg.text.d_model, cfg.embed_dim, bias=False)
        for proj, width in ((self.visual_projection, cfg.vision.d_model), (self.text_projection, cfg.text.d_model)):
            nn.init.normal_(proj.weight, std=width ** -0.5)  # CLIP's width^-0.5: unit-scale embeddings at start
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.init_logit_scale)))
        # LiT locks the tower, not its projection: the projection maps the frozen features into the space the
        # trained tower learns, so it stays trainable (the locked image tower's own head, if any, would be frozen).
        locked = self.locked_tower()
        if locked is not None:
            locked.requires_grad_(False)
            locked.eval()

    def locked_tower(self) -> nn.Module | None:
        return {"": None, "image": self.visual, "text": self.text}[self.config.lock]

    def train(self, mode: bool = True) -> CLIP:
        """A LiT-locked tower stays in eval mode (no dropout) whatever mode the rest is put in."""
        super().train(mode)
        locked = self.locked_tower()
        if locked is not None:
            locked.eval()
        return self

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The image tower's pooled features (B, d_vision): the final-LayerNorm CLS token (HF's pooler_output)."""
        return self.visual.pool(self.visual.features(pixels))

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The text tower's pooled features (B, d_text): at <end_of_text>, or the mean over the attention mask."""
        if input_ids.dim() != 2:
            raise ValueError(f"CLIP expects input_ids (B, T); got {tuple(input_ids.shape)} (ClipTokenizer gives "
                             "(B, 77))")
        # Columns past the last one pooling reads are padding that changes nothing (the causal tower never looks
        # ahead; the mean is masked), yet a 77-token row mostly is padding: cut them (1.9x a training step).
        if self.config.text_pool == "eot":
            eot = self.eot_positions(input_ids)  # (B,)
            keep = int(eot.max()) + 1
        else:
            keep = input_ids.shape[1] if attention_mask is None else int(attention_mask.any(dim=0).nonzero().max()) + 1
        input_ids = input_ids[:, :keep]
        attention_mask = None if attention_mask is None else attention_mask[:, :keep]
        h = self.text(input_ids, attention_mask)  # (B, keep, d)
        if self.config.text_pool == "mean":
            return mean_pool(h, attention_mask, normalize=False)
        return h[torch.arange(h.shape[0], device=h.device), eot]  # (B, d)

    def eot_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B,) where each row's <end_of_text> is: its first eot_id, or the argmax of the ids (eot_id None)."""
        eot = self.config.eot_id
        if eot is None:
            return input_ids.argmax(dim=-1)
        hit = input_ids == eot  # (B, T)
        absent = (~hit.any(dim=1)).nonzero().flatten().tolist()
        if absent:
            raise ValueError(f"input_ids rows {absent[:8]} hold no end-of-text id {eot} (ClipConfig.eot_id), the "
                             "token the text is read at; tokenize with ClipTokenizer, which ends every row with it")
        return hit.int().argmax(dim=-1)  # the first one: padding may repeat the id after it

    def encode_image(self, pixels: torch.Tensor | None, normalize: bool = True, *,
                     features: torch.Tensor | None = None) -> torch.Tensor:
        """Image embeddings (B, embed_dim), L2-normalised unless normalize=False. `features`: the image tower's
        pooled output precomputed (a locked tower's never changes, see `cache_locked_tower`), used instead of
        running the tower on `pixels`."""
        feats = features if features is not None else self.image_features(_given(pixels, "pixels"))
        emb = self.visual_projection(feats.to(self.visual_projection.weight.dtype))
        return F.normalize(emb, dim=-1) if normalize else emb

    def encode_text(
        self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None = None, normalize: bool = True, *,
        features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Text embeddings (B, embed_dim), L2-normalised unless normalize=False. attention_mask: 1 = token, 0 = pad.
        `features`: the text tower's pooled output precomputed, used instead of running the tower."""
        feats = features if features is not None else self.text_features(_given(input_ids, "input_ids"),
                                                                          attention_mask)
        emb = self.text_projection(feats.to(self.text_projection.weight.dtype))
        return F.normalize(emb, dim=-1) if normalize else emb

    def forward(
        self, pixels: torch.Tensor | None, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None = None,
        *, image_features: torch.Tensor | None = None, text_features: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits_per_image (B_img, B_txt), logits_per_text (B_txt, B_img)): scaled cosine similarities.
        image_features / text_features: a tower's pooled output precomputed (pass None for its raw input)."""
        image = self.encode_image(pixels, features=image_features)
        text = self.encode_text(input_ids, attention_mask, features=text_features)
        logits_per_text = self.logit_scale.exp() * text @ image.t()  # (B_txt, B_img)
        return logits_per_text.t(), logits_per_text

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """Keep exp(logit_scale) in [1, 100]; call after every optimizer step (train() does, via the hook below)."""
        self.logit_scale.clamp_(0.0, self.config.max_logit_scale)

    def after_optimizer_step(self) -> None:
        """The training loop's hook after each optimizer step."""
        self.clamp_logit_scale()


def _given(x: torch.Tensor | None, name: str) -> torch.Tensor:
    if x is None:
        raise ValueError(f"CLIP: {name}=None needs the tower's precomputed features instead (image_features= / "
                         "text_features=, see cache_locked_tower); pass one of the two")
    return x


# --- a locked tower's features, computed once (LiT, Zhai et al. 2022, sec. 3: locking makes them precomputable)
@torch.no_grad()
def locked_tower_features(model: CLIP, inputs: torch.Tensor, attention_mask: torch.Tensor | None = None,
                          batch_size: int = 256) -> torch.Tensor:
    """(N, d_tower) float32 pooled features of the LiT-locked tower (config.lock) for all `inputs` (pixels for
    "image", input_ids for "text"), in chunks of batch_size, in eval mode. They equal what forward() computes
    inside, so training on them gives the same logits without running the frozen tower at every step."""
    lock = model.config.lock
    if lock == "":
        raise ValueError("locked_tower_features: the model locks no tower (ClipConfig.lock=''); a trained tower's "
                         "features change every step, so they cannot be cached. Set lock='image' or 'text'")
    device = model.logit_scale.device
    out = []
    with _evaluating(model):
        for i in range(0, len(inputs), batch_size):
            x = inputs[i:i + batch_size].to(device)
            if lock == "image":
                out.append(model.image_features(x).float())
            else:
                m = None if attention_mask is None else attention_mask[i:i + batch_size].to(device)
                out.append(model.text_features(x, m).float())
    return torch.cat(out).cpu()


def cache_locked_tower(model: CLIP, data: Any, batch_size: int = 256) -> str:
    """Fill `data` (an ImageTextData, or any source with pixels / input_ids / attention_mask / caption_ids rows
    and `set_features`) with the locked tower's features; its batches then carry them as "image_features" or
    "text_features" in place of the raw input, which the model takes by those keyword names. Text features are
    computed once per distinct caption (caption_ids). Returns the batch key filled."""
    if model.config.lock == "image":
        key, feats = "image_features", locked_tower_features(model, data.pixels, batch_size=batch_size)
    else:
        first = torch.zeros(int(data.caption_ids.max()) + 1, dtype=torch.long)
        first[data.caption_ids] = torch.arange(len(data.caption_ids))  # any row of each caption: all hold its ids
        per_caption = locked_tower_features(model, data.input_ids[first], data.attention_mask[first], batch_size)
        key, feats = "text_features", per_caption[data.caption_ids]  # (N, d_text)
    data.set_features(key, feats)
    return key


# --- zero-shot classification (Radford et al. 2021, sec. 3.1.4) ---------------------------------------------------
@contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was)


def _tokens(model: CLIP, tokenizer: TextTokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(input_ids, attention_mask) on the model's device. A tokenizer may return ids (ClipTokenizer: zero-padded;
    a mean-pooled tower then masks ids == text.pad_id) or a mapping with input_ids and attention_mask."""
    out = tokenizer(texts)
    if isinstance(out, Mapping):
        ids, mask = out["input_ids"], out.get("attention_mask")
    else:
        ids, mask = out, None
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
        raise TypeError("zero_shot_classifier: tokenizer(texts) must return a (N, T) LongTensor or a mapping with "
                        "'input_ids' (and 'attention_mask'); ClipTokenizer() does")
    if mask is None and model.config.text_pool == "mean":
        mask = (ids != model.config.text.pad_id).long()
    device = model.logit_scale.device
    return ids.to(device), None if mask is None else mask.to(device)


def zero_shot_classifier(
    model: CLIP, tokenizer: TextTokenizer, classnames: Sequence[str], templates: Sequence[str] = ("a photo of a {}.",)
) -> torch.Tensor:
    """(n_class, embed_dim): per class, the normalised mean of its prompts' normalised text embeddings, each
    prompt a template with "{}" replaced by the class name (CLIP's prompt ensembling)."""
    if isinstance(classnames, str) or len(classnames) < 2:
        n = 1 if isinstance(classnames, str) else len(classnames)
        raise ValueError(f"zero_shot_classifier: classnames holds {n} name(s); a classifier needs a list of at "
                         "least 2 class names")
    if isinstance(templates, str) or not templates:
        raise ValueError("zero_shot_classifier: templates must be a non-empty list, e.g. ['a photo of a {}.']")
    for t in templates:
        if "{}" not in t:
            raise ValueError(f"zero_shot_classifier: template {t!r} has no '{{}}' for the class name; write it as "
                             "e.g. 'a photo of a {}.'")
    rows = []
    with _evaluating(model):
        for name in classnames:
            ids, mask = _tokens(model, tokenizer, [t.replace("{}", name) for t in templates])
            rows.append(F.normalize(model.encode_text(ids, mask).mean(dim=0), dim=-1))  # (embed_dim,)
    return torch.stack(rows)  # (n_class, embed_dim)


def zero_shot_predict(model: CLIP, classifier: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """Class probabilities (B, n_class): softmax(exp(logit_scale) * image_emb @ classifierᵀ)."""
    if classifier.dim() != 2 or classifier.shape[1] != model.config.embed_dim:
        raise ValueError(f"zero_shot_predict: classifier {tuple(classifier.shape)} must be (n_class, embed_dim="
                         f"{model.config.embed_dim}); build it with zero_shot_classifier(model, ...)")
    with _evaluating(model):
        image = model.encode_image(pixels)  # (B, e)
        return (model.logit_scale.exp() * image @ classifier.to(image).t()).softmax(dim=-1)  # (B, n_class)
