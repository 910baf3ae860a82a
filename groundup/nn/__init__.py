"""Pure nn.Modules and formulas, no I/O: the parts every model is composed of."""

from .attention import Attention, attend, build_mask
from .block import Block
from .embedding import Embeddings
from .kv_cache import KVCache, kv_bytes_per_token
from .mlp import MLP, GatedMLP, build_mlp
from .moe import MoE, Router, moe_aux_loss
from .norm import LayerNorm, RMSNorm, build_norm
from .position import RotaryEmbedding, alibi_bias, alibi_slopes, apply_rope, build_rotary, rope_table, sinusoidal_table

__all__ = [
    "Attention", "attend", "Embeddings", "RotaryEmbedding", "build_rotary", "build_mask", "Block", "KVCache",
    "kv_bytes_per_token", "MLP", "GatedMLP", "build_mlp", "LayerNorm", "RMSNorm", "build_norm", "alibi_bias",
    "alibi_slopes", "apply_rope", "rope_table", "sinusoidal_table", "MoE", "Router", "moe_aux_loss",
]
