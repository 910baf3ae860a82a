"""ModelConfig: one typed dataclass for every text transformer; VisionConfig for image encoders; named presets.

Variants are fields, decided when the model is built (never sniffed from a name in forward).
Presets are plain dicts of field overrides, as in minGPT.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

Arch = Literal["decoder", "encoder", "seq2seq"]
Pos = Literal["learned", "sinusoidal", "rope", "alibi"]
Norm = Literal["layernorm", "rmsnorm"]
MLPKind = Literal["gelu", "gelu_tanh", "relu", "swiglu", "geglu", "quick_gelu"]
Backend = Literal["sdpa", "naive"]
Mixer = Literal["attention", "retention", "hyena"]


class ConfigError(ValueError):
    """A config field has a bad value; the message names the field and the fix."""


def from_checked_dict(cls: type, data: dict[str, Any], error: type[Exception]) -> Any:
    """cls(**data) for a config dataclass, refusing unknown keys by name (a typo never passes silently)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise error(f"{cls.__name__} has no field(s) {unknown}; known fields: {sorted(known)}")
    return cls(**data)


@dataclass
class ModelConfig:
    arch: Arch = "decoder"
    vocab_size: int = 65
    block_size: int = 256  # longest sequence the positions support
    n_layer: int = 6
    n_head: int = 6
    n_kv_head: int | None = None  # None = n_head (MHA); 1 = MQA; between = GQA
    d_model: int = 384
    d_ff: int | None = None  # None = 4 * d_model
    head_dim: int | None = None  # None = d_model // n_head
    pos: Pos = "learned"
    rope_theta: float = 10000.0
    norm: Norm = "layernorm"
    norm_eps: float = 1e-5
    prenorm: bool = True  # pre-norm (GPT-2, Llama) or post-norm (original Transformer, BERT)
    mlp: MLPKind = "gelu"
    bias: bool = True
    dropout: float = 0.0
    tie_embeddings: bool = True
    attn_backend: Backend = "sdpa"
    embed_norm: bool = False  # LayerNorm right after the embeddings (BERT)
    embed_scale: bool = False  # multiply token embeddings by sqrt(d_model) (original Transformer)
    n_segment: int = 2  # encoder: token-type (segment) vocabulary; 0 disables
    n_class: int = 2  # encoder: classification-head classes
    n_decoder_layer: int | None = None  # seq2seq: None = n_layer
    tgt_vocab_size: int | None = None  # seq2seq: None = shared vocabulary with tied embeddings
    pad_id: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes (e.g. source checkpoint)
    # RoPE frequency rescaling for long context, HF's format: None, {"rope_type": "linear", "factor": f} or
    # {"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}
    rope_scaling: dict[str, Any] | None = None
    # Mixture of experts (nn/moe.py), decoder only: each block's MLP becomes n_expert MLPs and a router.
    n_expert: int = 0  # 0 = a dense MLP
    n_expert_per_token: int = 1  # k: experts each token is sent to (Switch: 1, Mixtral: 2)
    expert_capacity_factor: float | None = None  # None or 0 = no token dropping (Mixtral); else Switch capacity
    router_norm_topk: bool = True  # renormalise the top-k probabilities to sum to 1 (Mixtral); False = Switch
    router_aux_loss_coef: float = 0.01  # Switch load-balancing loss weight (training only)
    router_z_loss_coef: float = 0.001  # ST-MoE router z-loss weight (training only)
    # LayerScale (Touvron et al. 2021, CaiT; DINOv2): a learned per-channel scale on each residual branch, started
    # at this value; None = no scale.
    layer_scale: float | None = None
    # The token mixer of every block (decoder only): attention, multi-scale retention (nn/retention.py, RetNet) or the
    # Hyena operator (nn/hyena.py). Norms, MLP / MoE, PEFT targets and checkpoints are the same for all three.
    mixer: Mixer = "attention"
    retention_chunk: int = 256  # retention runs chunkwise on sequences longer than this, in parallel on shorter ones
    hyena_order: int = 2  # Hyena: long convolutions, each followed by a data-controlled gate
    hyena_filter_dim: int = 64  # Hyena: width of the MLP that generates the implicit long filters

    def __post_init__(self) -> None:
        for name, kind in (("arch", Arch), ("pos", Pos), ("norm", Norm), ("mlp", MLPKind), ("attn_backend", Backend),
                           ("mixer", Mixer)):
            allowed = get_args(kind)
            if getattr(self, name) not in allowed:
                raise ConfigError(f"ModelConfig.{name}={getattr(self, name)!r} is unknown; use one of {list(allowed)}")
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "d_model"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"ModelConfig.{name}={value!r} must be a positive integer")
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.n_kv_head <= 0 or self.n_head % self.n_kv_head:
            raise ConfigError(
                f"ModelConfig.n_head={self.n_head} must be divisible by n_kv_head={self.n_kv_head}; "
                f"pick n_kv_head from {[k for k in range(1, self.n_head + 1) if self.n_head % k == 0]}"
            )
        if self.head_dim is None:
            if self.d_model % self.n_head:
                raise ConfigError(
                    f"ModelConfig.d_model={self.d_model} is not divisible by n_head={self.n_head}; "
                    "change one of them or set head_dim explicitly"
                )
            self.head_dim = self.d_model // self.n_head
        if self.pos == "rope" and self.head_dim % 2:
            raise ConfigError(f"ModelConfig.head_dim={self.head_dim} must be even for pos='rope'")
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"ModelConfig.dropout={self.dropout} must be in [0, 1)")
        if self.n_decoder_layer is None:
            self.n_decoder_layer = self.n_layer
        if self.rope_scaling is not None:
            _check_rope_scaling(self.rope_scaling)
        _check_moe(self)
        _check_mixer(self)

    @property
    def gated(self) -> bool:
        return self.mlp in ("swiglu", "geglu")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return from_checked_dict(cls, data, ConfigError)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON ({e}); re-save the config") from e
        return cls.from_dict(data)


ROPE_SCALING_KEYS: dict[str, tuple[str, ...]] = {
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


def _check_rope_scaling(scaling: Any) -> None:
    kind = scaling.get("rope_type") if isinstance(scaling, dict) else None
    if kind not in ROPE_SCALING_KEYS:
        raise ConfigError(
            f"ModelConfig.rope_scaling={scaling!r} is unsupported; use None or a dict with 'rope_type' in "
            f"{sorted(ROPE_SCALING_KEYS)}"
        )
    missing = [k for k in ROPE_SCALING_KEYS[kind] if not isinstance(scaling.get(k), (int, float))]
    if missing:
        raise ConfigError(f"ModelConfig.rope_scaling (rope_type={kind!r}) needs numeric {missing}; add them")


def _check_moe(cfg: ModelConfig) -> None:
    if not isinstance(cfg.n_expert, int) or cfg.n_expert < 0:
        raise ConfigError(f"ModelConfig.n_expert={cfg.n_expert!r} must be an integer >= 0 (0 = dense MLP)")
    for name in ("router_aux_loss_coef", "router_z_loss_coef"):
        value = getattr(cfg, name)
        if not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"ModelConfig.{name}={value!r} must be a number >= 0 (0 turns the loss off)")
    cf = cfg.expert_capacity_factor
    if cf is not None and (not isinstance(cf, (int, float)) or cf < 0):
        raise ConfigError(
            f"ModelConfig.expert_capacity_factor={cf!r} must be None or 0 (no token dropping) or a number > 0 "
            "(e.g. 1.25: each expert takes ceil(1.25 * tokens * k / n_expert) tokens)"
        )
    if cfg.n_expert == 0:
        return
    if cfg.arch != "decoder":
        raise ConfigError(
            f"ModelConfig.n_expert={cfg.n_expert} needs arch='decoder' (got {cfg.arch!r}); set n_expert=0"
        )
    k = cfg.n_expert_per_token
    if not isinstance(k, int) or not 1 <= k <= cfg.n_expert:
        raise ConfigError(
            f"ModelConfig.n_expert_per_token={k!r} must be an integer in [1, n_expert={cfg.n_expert}]"
        )


def _check_mixer(cfg: ModelConfig) -> None:
    for name in ("retention_chunk", "hyena_order", "hyena_filter_dim"):
        value = getattr(cfg, name)
        if not isinstance(value, int) or value <= 0:
            raise ConfigError(f"ModelConfig.{name}={value!r} must be a positive integer")
    if cfg.mixer == "attention":
        return
    if cfg.arch != "decoder":
        raise ConfigError(f"ModelConfig.mixer={cfg.mixer!r} is built for decoders (arch='decoder', got {cfg.arch!r}); "
                          "set mixer='attention'")
    if cfg.mixer == "retention" and cfg.pos != "rope":
        raise ConfigError(f"ModelConfig.mixer='retention' rotates queries and keys by position (xPos-style, RoPE's "
                          f"tables) and adds no position embedding; set pos='rope' (got {cfg.pos!r})")
    if cfg.mixer == "hyena" and cfg.pos == "alibi":
        raise ConfigError("ModelConfig.pos='alibi' biases attention scores, which Hyena has none of; use pos='rope' "
                          "(no position embedding: the long filters carry position) or 'learned'")


GPT2 = dict(pos="learned", norm="layernorm", mlp="gelu_tanh", bias=True, tie_embeddings=True, prenorm=True)
LLAMA = dict(pos="rope", norm="rmsnorm", mlp="swiglu", bias=False, prenorm=True, norm_eps=1e-5)
BERT = dict(
    arch="encoder", pos="learned", norm="layernorm", mlp="gelu", bias=True, prenorm=False, norm_eps=1e-12,
    embed_norm=True,
)

PRESETS: dict[str, dict[str, Any]] = {
    # nanoGPT's Shakespeare-char model, and the smaller CPU recipe.
    "gpt-shakespeare-char": dict(GPT2, block_size=256, n_layer=6, n_head=6, d_model=384, dropout=0.2),
    "gpt-tiny": dict(GPT2, block_size=64, n_layer=4, n_head=4, d_model=128),
    "gpt2": dict(GPT2, vocab_size=50257, block_size=1024, n_layer=12, n_head=12, d_model=768),
    "gpt2-medium": dict(GPT2, vocab_size=50257, block_size=1024, n_layer=24, n_head=16, d_model=1024),
    "llama-tiny": dict(LLAMA, block_size=256, n_layer=4, n_head=8, n_kv_head=2, d_model=256, d_ff=688),
    # Mixtral's layout (8 experts, top-2, SwiGLU, no token dropping) at a CPU-friendly size.
    "mixtral-tiny": dict(
        LLAMA, block_size=256, n_layer=4, n_head=8, n_kv_head=2, d_model=256, d_ff=344, n_expert=8,
        n_expert_per_token=2,
    ),
    "smollm2-135m": dict(
        LLAMA, vocab_size=49152, block_size=8192, n_layer=30, n_head=9, n_kv_head=3, d_model=576,
        d_ff=1536, rope_theta=100000.0, tie_embeddings=True,
    ),
    "mpt-tiny": dict(GPT2, pos="alibi", bias=False, block_size=256, n_layer=4, n_head=4, d_model=256),
    "bert-tiny": dict(BERT, block_size=128, n_layer=2, n_head=2, d_model=128, d_ff=512),
    "bert-mini": dict(BERT, block_size=256, n_layer=4, n_head=4, d_model=256, d_ff=1024),
    "bert-base": dict(BERT, vocab_size=30522, block_size=512, n_layer=12, n_head=12, d_model=768, d_ff=3072),
    "transformer-tiny": dict(
        arch="seq2seq", pos="sinusoidal", embed_scale=True, norm="layernorm", mlp="relu", prenorm=True, block_size=64,
        n_layer=2, n_head=4, d_model=128, d_ff=512,
    ),
    "transformer-base": dict(
        arch="seq2seq", pos="sinusoidal", embed_scale=True, norm="layernorm", mlp="relu", prenorm=False, block_size=512,
        n_layer=6, n_head=8, d_model=512, d_ff=2048, dropout=0.1,
    ),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """Build a ModelConfig from a named preset plus field overrides."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; available presets: {sorted(PRESETS)}")
    return ModelConfig.from_dict({**PRESETS[name], **overrides})


# --- vision ------------------------------------------------------------------------------------------------------
Pool = Literal["cls", "mean"]


@dataclass
class VisionConfig:
    """A Vision Transformer (Dosovitskiy et al. 2021): patches of an image are the tokens of the same pre-norm
    blocks the text models use (block_config())."""

    image_size: int = 28  # the side the position grid was trained at (other sizes interpolate it)
    patch_size: int = 4
    n_channels: int = 3
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    d_ff: int | None = None  # None = 4 * d_model
    norm_eps: float = 1e-6
    mlp: MLPKind = "gelu"
    layer_scale: float | None = None  # LayerScale start value (DINOv2); None = none
    pool: Pool = "cls"  # what forward returns (and the head reads): the CLS token or the mean of the patches
    n_class: int = 0  # a linear classification head on the pooled features; 0 = none (a backbone)
    dropout: float = 0.0
    hf_pooler: bool = False  # keep a Hugging Face ViTModel's pooler (dense + tanh on CLS) so export writes it back
    pre_norm: bool = False  # a LayerNorm on the embeddings before the blocks (CLIP's "ln_pre")
    patch_bias: bool = True  # the patch Conv2d's bias (CLIP's has none)
    preprocess: str = "imagenet"  # the groundup.vision spec its inputs are prepared with (size, mean, std)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "n_channels", "n_layer", "n_head", "d_model"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"VisionConfig.{name}={value!r} must be a positive integer")
        if self.image_size % self.patch_size:
            fit = self.image_size // self.patch_size * self.patch_size
            raise ConfigError(f"VisionConfig.image_size={self.image_size} is not a multiple of patch_size="
                              f"{self.patch_size}; use a multiple, e.g. {fit}")
        if self.d_model % self.n_head:
            raise ConfigError(f"VisionConfig.d_model={self.d_model} is not divisible by n_head={self.n_head}")
        if self.pool not in get_args(Pool):
            raise ConfigError(f"VisionConfig.pool={self.pool!r} is unknown; use one of {list(get_args(Pool))}")
        if not isinstance(self.n_class, int) or self.n_class < 0:
            raise ConfigError(f"VisionConfig.n_class={self.n_class!r} must be 0 (no head) or the number of classes")
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model

    @property
    def grid(self) -> int:
        """Patches per side at image_size."""
        return self.image_size // self.patch_size

    def block_config(self) -> ModelConfig:
        """The ModelConfig of its blocks: bidirectional, pre-norm, LayerNorm, biases, as in ViT."""
        return ModelConfig(arch="encoder", vocab_size=1, block_size=self.grid ** 2 + 1, n_layer=self.n_layer,
                           n_head=self.n_head, d_model=self.d_model, d_ff=self.d_ff, norm="layernorm",
                           norm_eps=self.norm_eps, prenorm=True, mlp=self.mlp, bias=True, dropout=self.dropout,
                           layer_scale=self.layer_scale, n_segment=0)

    def to_dict(self) -> dict[str, Any]:
        return {"family": "vision", **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VisionConfig:
        return from_checked_dict(cls, {k: v for k, v in data.items() if k != "family"}, ConfigError)


VIT = dict(norm_eps=1e-12, mlp="gelu", pool="cls")
VISION_PRESETS: dict[str, dict[str, Any]] = {
    # Fashion-MNIST / digits scale: 28x28 grayscale, 7x7 patches of 4 pixels.
    "vit-tiny": dict(image_size=28, patch_size=4, n_channels=1, n_layer=4, n_head=4, d_model=128, n_class=10,
                     preprocess="gray28"),
    "vit-s-16": dict(VIT, image_size=224, patch_size=16, n_layer=12, n_head=6, d_model=384),
    "vit-b-16": dict(VIT, image_size=224, patch_size=16, n_layer=12, n_head=12, d_model=768),
    # DINOv2 ViT-S/14 (Oquab et al. 2023): trained at 518 (a 37x37 grid), LayerScale, LayerNorm eps 1e-6.
    "dinov2-s-14": dict(image_size=518, patch_size=14, n_layer=12, n_head=6, d_model=384, layer_scale=1.0),
}


def vision_preset(name: str, **overrides: Any) -> VisionConfig:
    if name not in VISION_PRESETS:
        raise ConfigError(f"unknown vision preset {name!r}; available: {sorted(VISION_PRESETS)}")
    return VisionConfig.from_dict({**VISION_PRESETS[name], **overrides})


@dataclass
class VisionLMConfig:
    """A vision-language model (models/flamingo.py): how a frozen vision encoder is joined to a frozen decoder."""

    kind: Literal["flamingo", "llava"] = "flamingo"  # groundup finetune sets it from --method
    vision_dim: int | None = None  # the vision encoder's width (None: read from the encoder)
    image_size: int | None = None  # pixels per side the encoder reads (None: its own; positions are resized)
    # flamingo
    cross_every: int = 4  # a gated cross-attention block before every cross_every-th decoder layer
    n_latents: int = 64
    resampler_depth: int = 2
    resampler_heads: int = 6
    ff_mult: int = 4  # the resampler's and the cross-attention blocks' feed-forward width, x their input width
    max_frames: int = 1
    # llava
    projector_hidden: int | None = None  # None: the LM's width
    pool: int = 2  # average-pool the patch grid by this factor: (grid / pool)^2 visual tokens per image

    def __post_init__(self) -> None:
        if self.kind not in ("flamingo", "llava"):
            raise ConfigError(f"VisionLMConfig.kind={self.kind!r}: use 'flamingo' or 'llava'")
        if self.image_size is not None and (not isinstance(self.image_size, int) or self.image_size <= 0):
            raise ConfigError(f"VisionLMConfig.image_size={self.image_size!r} must be a positive integer or None")
        if self.vision_dim is not None and (not isinstance(self.vision_dim, int) or self.vision_dim <= 0):
            raise ConfigError(f"VisionLMConfig.vision_dim={self.vision_dim!r} must be a positive integer or None")
        for name in ("cross_every", "n_latents", "resampler_depth", "resampler_heads", "ff_mult",
                     "max_frames", "pool"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ConfigError(f"VisionLMConfig.{name}={getattr(self, name)!r} must be a positive integer")

    def to_dict(self) -> dict[str, Any]:
        return {"family": "vision-language", **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VisionLMConfig:
        return from_checked_dict(cls, {k: v for k, v in data.items() if k != "family"}, ConfigError)
