"""Hugging Face config.json <-> ModelConfig, for GPT-2, Llama (SmolLM2, Llama 3), Mistral, Mixtral and BERT.

Every HF field that changes the maths is either translated or refused with a ConfigError naming it;
nothing is silently dropped. Mistral's `sliding_window` is kept in ModelConfig.extra: groundup
attends the full context, which equals Mistral for sequences up to sliding_window tokens.
Mixtral's router losses are training-only: HF adds its load-balancing loss (coefficient
router_aux_loss_coef) only with output_router_logits, over all layers at once, with f_i summing to k;
groundup's per-layer router_aux_loss_coef is HF's times k (0 without output_router_logits), and HF has no z-loss.
"""

from __future__ import annotations

from typing import Any

from ..config import BERT, GPT2, LLAMA, ConfigError, ModelConfig

SUPPORTED_MODEL_TYPES = ("gpt2", "llama", "mistral", "bert", "mixtral")
GPT2_ACT = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}
BERT_ACT = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
EXPORT_ACT = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}  # groundup mlp -> HF activation name


def _get(hf: dict[str, Any], key: str, default: Any = ConfigError) -> Any:
    if key in hf and hf[key] is not None:
        return hf[key]
    if default is ConfigError:
        raise ConfigError(f"HF config.json (model_type={hf.get('model_type')!r}) lacks field {key!r}; add it")
    return default


def _act(hf: dict[str, Any], key: str, table: dict[str, str], default: str) -> str:
    act = _get(hf, key, default)
    if act not in table:
        raise ConfigError(f"HF config.json field {key}={act!r} is unsupported; groundup supports {sorted(table)}")
    return table[act]


def _refuse(hf: dict[str, Any], checks: dict[str, Any]) -> None:
    """Raise for any HF field set to a value groundup's maths does not implement."""
    for key, ok in checks.items():
        if key in hf and hf[key] is not None and hf[key] != ok:
            raise ConfigError(
                f"HF config.json field {key}={hf[key]!r} is not supported by groundup (only {ok!r}); "
                "this checkpoint's maths differs from the model groundup builds"
            )


def _gpt2(hf: dict[str, Any]) -> dict[str, Any]:
    _refuse(hf, {"scale_attn_by_inverse_layer_idx": False, "scale_attn_weights": True, "add_cross_attention": False})
    d = _get(hf, "n_embd")
    return dict(
        GPT2, vocab_size=_get(hf, "vocab_size"), block_size=hf.get("n_positions") or _get(hf, "n_ctx"),
        n_layer=_get(hf, "n_layer"), n_head=_get(hf, "n_head"), d_model=d, d_ff=_get(hf, "n_inner", 4 * d),
        mlp=_act(hf, "activation_function", GPT2_ACT, "gelu_new"), norm_eps=_get(hf, "layer_norm_epsilon", 1e-5),
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
    )


def _rope(hf: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(theta, scaling) from transformers 5's `rope_parameters` or the older `rope_theta` + `rope_scaling`."""
    params = dict(hf.get("rope_parameters") or {})
    if not params:
        params = dict(hf.get("rope_scaling") or {})
        params.setdefault("rope_theta", hf.get("rope_theta", 10000.0))
    theta = float(params.pop("rope_theta", hf.get("rope_theta") or 10000.0))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return theta, None
    if kind not in ("linear", "llama3"):
        raise ConfigError(
            f"HF config.json rope scaling rope_type={kind!r} is unsupported; groundup supports "
            "'default', 'linear' and 'llama3' (remove rope_scaling to run at the original context length)"
        )
    keep = ("factor",) if kind == "linear" else (
        "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"
    )
    return theta, {"rope_type": kind, **{k: params.get(k) for k in keep}}


def _llama(hf: dict[str, Any]) -> dict[str, Any]:
    attn_bias, mlp_bias = bool(hf.get("attention_bias", False)), bool(hf.get("mlp_bias", False))
    if attn_bias != mlp_bias:
        raise ConfigError(
            f"HF config.json has attention_bias={attn_bias} but mlp_bias={mlp_bias}; groundup has one "
            "ModelConfig.bias for both, so it cannot load this checkpoint exactly"
        )
    if _get(hf, "hidden_act", "silu") != "silu":
        raise ConfigError(f"HF config.json hidden_act={hf['hidden_act']!r}: a Llama MLP must be 'silu' (SwiGLU)")
    n_head = _get(hf, "num_attention_heads")
    theta, scaling = _rope(hf)
    extra = {"sliding_window": hf["sliding_window"]} if hf.get("sliding_window") else {}
    return dict(
        LLAMA, vocab_size=_get(hf, "vocab_size"), block_size=_get(hf, "max_position_embeddings"),
        n_layer=_get(hf, "num_hidden_layers"), n_head=n_head, n_kv_head=_get(hf, "num_key_value_heads", n_head),
        d_model=_get(hf, "hidden_size"), d_ff=_get(hf, "intermediate_size"), head_dim=hf.get("head_dim"),
        rope_theta=theta, rope_scaling=scaling, norm_eps=_get(hf, "rms_norm_eps", 1e-6), bias=attn_bias,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)), extra=extra,
    )


def _mixtral(hf: dict[str, Any]) -> dict[str, Any]:
    """Mixtral = Mistral attention + a top-k mixture of SwiGLU experts, renormalised weights, no dropping."""
    fields, k = _llama(hf), _get(hf, "num_experts_per_tok")
    if hf.get("router_jitter_noise"):  # multiplicative input noise in training only; inference is unchanged
        fields["extra"]["router_jitter_noise"] = hf["router_jitter_noise"]
    aux = float(hf.get("router_aux_loss_coef") or 0.0) * k if hf.get("output_router_logits") else 0.0
    return dict(
        fields, n_expert=_get(hf, "num_local_experts"), n_expert_per_token=k, expert_capacity_factor=None,
        router_norm_topk=True, router_aux_loss_coef=aux, router_z_loss_coef=0.0,
    )


def _bert(hf: dict[str, Any]) -> dict[str, Any]:
    _refuse(hf, {"position_embedding_type": "absolute", "is_decoder": False, "add_cross_attention": False})
    return dict(
        BERT, vocab_size=_get(hf, "vocab_size"), block_size=_get(hf, "max_position_embeddings"),
        n_layer=_get(hf, "num_hidden_layers"), n_head=_get(hf, "num_attention_heads"), d_model=_get(hf, "hidden_size"),
        d_ff=_get(hf, "intermediate_size"), mlp=_act(hf, "hidden_act", BERT_ACT, "gelu"),
        norm_eps=_get(hf, "layer_norm_eps", 1e-12), n_segment=_get(hf, "type_vocab_size", 2),
        pad_id=_get(hf, "pad_token_id", 0), tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
    )


_FROM_HF = {"gpt2": _gpt2, "llama": _llama, "mistral": _llama, "mixtral": _mixtral, "bert": _bert}


def config_from_hf(hf_config: dict[str, Any]) -> ModelConfig:
    """A transformers config.json (as a dict) -> the ModelConfig that computes the same function."""
    model_type = hf_config.get("model_type")
    if model_type not in _FROM_HF:
        raise ConfigError(
            f"HF config.json model_type={model_type!r} is not supported; groundup imports "
            f"{list(SUPPORTED_MODEL_TYPES)} (SmolLM/SmolLM2 and Llama 3 are 'llama'; MiniLM is 'bert')"
        )
    return ModelConfig.from_dict(_FROM_HF[model_type](hf_config))


def hf_family(cfg: ModelConfig) -> str:
    """Which HF family a groundup config exports to: 'gpt2', 'llama', 'mixtral' or 'bert'; ConfigError otherwise."""
    if cfg.mixer != "attention":
        raise ConfigError(f"ModelConfig.mixer={cfg.mixer!r}: transformers has no class for a groundup {cfg.mixer} "
                          "decoder; keep groundup's own format (save_checkpoint), which loads everywhere groundup runs")
    plain = cfg.n_kv_head == cfg.n_head and cfg.head_dim * cfg.n_head == cfg.d_model
    common = cfg.prenorm and not cfg.embed_norm and not cfg.embed_scale
    if cfg.n_expert > 0:
        return _moe_family(cfg, common)
    if cfg.arch == "decoder":
        if cfg.pos == "learned" and cfg.norm == "layernorm" and cfg.mlp in EXPORT_ACT and cfg.bias and common and plain:
            return "gpt2"
        if cfg.pos == "rope" and cfg.norm == "rmsnorm" and cfg.mlp == "swiglu" and common:
            return "llama"
    if cfg.arch == "encoder":
        if (cfg.pos == "learned" and cfg.norm == "layernorm" and cfg.mlp in EXPORT_ACT and cfg.bias and plain
                and not cfg.prenorm and cfg.embed_norm and not cfg.embed_scale):
            return "bert"
    raise ConfigError(
        f"no transformers class computes a groundup {cfg.arch} with pos={cfg.pos!r}, norm={cfg.norm!r}, "
        f"mlp={cfg.mlp!r}, bias={cfg.bias}, prenorm={cfg.prenorm}, embed_norm={cfg.embed_norm}, "
        f"embed_scale={cfg.embed_scale}, n_kv_head={cfg.n_kv_head}, head_dim={cfg.head_dim}. save_hf exports: GPT-2 "
        "(decoder, pos='learned', norm='layernorm', mlp='gelu_tanh'|'gelu'|'relu', bias, pre-norm, MHA), Llama "
        "(decoder, pos='rope', norm='rmsnorm', mlp='swiglu', pre-norm) and BERT (encoder, learned, layernorm, "
        "post-norm, embed_norm, bias, MHA). Change those fields, or keep groundup's own format (save_checkpoint)"
    )


def _moe_family(cfg: ModelConfig, common: bool) -> str:
    """'mixtral' when MixtralForCausalLM computes this MoE decoder, else a ConfigError naming the field to change."""
    wrong = {
        "pos": (cfg.pos, "rope"), "norm": (cfg.norm, "rmsnorm"), "mlp": (cfg.mlp, "swiglu"), "bias": (cfg.bias, False),
        "expert_capacity_factor": (cfg.expert_capacity_factor or None, None),  # Mixtral never drops tokens
        "router_norm_topk": (cfg.router_norm_topk, True),  # Mixtral always renormalises the top-k weights
    }
    bad = [f"{name}={got!r} (needs {need!r})" for name, (got, need) in wrong.items() if got != need]
    if bad or not common:
        raise ConfigError(
            f"no transformers class computes this mixture-of-experts decoder: {', '.join(bad) or 'not pre-norm'}. "
            "save_hf exports MoE models as Mixtral (rope, rmsnorm, swiglu experts, no bias, no token dropping, "
            "renormalised top-k, pre-norm). Change those fields, or keep groundup's own format (save_checkpoint)"
        )
    return "mixtral"


def config_to_hf(cfg: ModelConfig, architecture: str) -> dict[str, Any]:
    """ModelConfig -> transformers config.json dict for `architecture` (e.g. 'LlamaForCausalLM')."""
    family = hf_family(cfg)
    common = {"architectures": [architecture], "vocab_size": cfg.vocab_size, "tie_word_embeddings": cfg.tie_embeddings}
    if family == "gpt2":
        return dict(
            common, model_type="gpt2", n_embd=cfg.d_model, n_layer=cfg.n_layer, n_head=cfg.n_head,
            n_positions=cfg.block_size, n_inner=cfg.d_ff, activation_function=EXPORT_ACT[cfg.mlp],
            layer_norm_epsilon=cfg.norm_eps, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
        )
    if family in ("llama", "mixtral"):
        llama = dict(
            common, model_type="llama", hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
            num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_kv_head,
            head_dim=cfg.head_dim, max_position_embeddings=cfg.block_size, rms_norm_eps=cfg.norm_eps,
            rope_theta=cfg.rope_theta, rope_scaling=cfg.rope_scaling, attention_bias=cfg.bias, mlp_bias=cfg.bias,
            hidden_act="silu", attention_dropout=cfg.dropout,
        )
        if family == "llama":
            return llama
        k = cfg.n_expert_per_token
        return dict(
            {key: v for key, v in llama.items() if key not in ("attention_bias", "mlp_bias")}, model_type="mixtral",
            num_local_experts=cfg.n_expert, num_experts_per_tok=k, router_jitter_noise=0.0,
            output_router_logits=cfg.router_aux_loss_coef > 0, router_aux_loss_coef=cfg.router_aux_loss_coef / k,
        )
    return dict(
        common, model_type="bert", hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head, intermediate_size=cfg.d_ff, max_position_embeddings=cfg.block_size,
        type_vocab_size=max(cfg.n_segment, 1), hidden_act=EXPORT_ACT[cfg.mlp], layer_norm_eps=cfg.norm_eps,
        pad_token_id=cfg.pad_id, hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout,
        position_embedding_type="absolute",
    )
