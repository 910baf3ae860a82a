"""The one PEFT API: every method behind the same calls.

    model = inject(model, cfg, "name")    freeze the base; swap modules (LoRA, IA3, BitFit) or wrap the model
                                          (prompt / prefix tuning: PromptModel / PrefixModel). Returns the model
                                          to use from now on (the same object for module swaps).
    trainable_parameters(model)           {name: Parameter} that train (the active adapter's, nothing else)
    merge / unmerge / merge_and_unload    fold the active adapter into the weights (exactly reversible)
    with disable(model): ...              the base model's output
    with adapter_rows(model, ["a", None, "b"]): ...   one forward pass, each batch row its own adapter
    set_adapter / delete_adapter          switch / remove named adapters
    save_adapter / load_adapter           (saving.py) groundup's own format

Which method does what is a table (METHODS), not branches: a swap method names its wrapper class and how a
config sets up one module; a wrapping method names its wrapper. Nothing in groundup/models knows about PEFT.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from torch import nn

from .bitfit import BiasAdapter
from .config import BitFitConfig, IA3Config, PeftConfig, PeftError, matches
from .ia3 import IA3Linear
from .lora import LoraLinear
from .prefix import PrefixModel, text_prefix
from .prompt import PromptModel, init_ids, init_prompt
from .rows import RowPlan

SWAP_LAYERS = (LoraLinear, IA3Linear, BiasAdapter)
WRAPPERS = (PromptModel, PrefixModel)


@dataclass
class PeftState:
    """What inject records on the model it returns (attribute `peft_state`)."""

    method: str
    configs: dict[str, PeftConfig] = field(default_factory=dict)
    active: str | None = None
    requires_grad: list[tuple[nn.Parameter, bool]] = field(default_factory=list)  # the base's flags before inject


@dataclass(frozen=True)
class SwapMethod:
    layer: type[nn.Module]
    wrap: Callable[[nn.Module, PeftConfig, str], nn.Module]  # (base module, cfg, module name) -> new wrapper
    add: Callable[[nn.Module, PeftConfig, str, str], None]  # (wrapper, cfg, module name, adapter name)
    what: str  # the modules it can wrap, for error messages


def _ia3_feedforward(cfg: IA3Config, module_name: str) -> bool:
    return any(matches(p, module_name) for p in cfg.feedforward_modules)


def _ia3_add(layer: IA3Linear, cfg: IA3Config, module_name: str, adapter: str) -> None:
    if layer.feedforward != _ia3_feedforward(cfg, module_name):
        raise PeftError(f"IA3 on {module_name}: another adapter treats it as feedforward={layer.feedforward}; "
                        "use the same IA3Config.feedforward_modules for every adapter")
    layer.add_adapter(adapter)


METHODS: dict[str, SwapMethod | type[nn.Module]] = {
    "lora": SwapMethod(
        LoraLinear, lambda m, cfg, n: LoraLinear(m),
        lambda layer, cfg, n, a: layer.add_adapter(a, cfg.rank_for(n), cfg.scaling_for(n), cfg.dropout),
        "LoRA (nn.Linear)",
    ),
    "ia3": SwapMethod(IA3Linear, lambda m, cfg, n: IA3Linear(m, _ia3_feedforward(cfg, n)), _ia3_add, "IA3 (nn.Linear)"),
    "bitfit": SwapMethod(BiasAdapter, lambda m, cfg, n: BiasAdapter(m), lambda layer, cfg, n, a: layer.add_adapter(a),
                         "BitFit (modules with a bias)"),
    "prompt": PromptModel,
    "prefix": PrefixModel,
}


# --- finding the pieces -------------------------------------------------------------------------------------
def peft_state(model: nn.Module) -> PeftState:
    state = getattr(model, "peft_state", None)
    if not isinstance(state, PeftState):
        raise PeftError(f"{type(model).__name__} carries no adapters; call inject(model, cfg) first "
                        "(and use the model inject returns)")
    return state


def components(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every adapter carrier: swap wrappers and prompt/prefix wrappers."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, SWAP_LAYERS + WRAPPERS)]


def base_model(model: nn.Module) -> nn.Module:
    """The model underneath a prompt/prefix wrapper (the model itself for module swaps)."""
    return model.base_model if isinstance(model, WRAPPERS) else model


def adapter_params(model: nn.Module, name: str) -> dict[str, nn.Parameter]:
    """The parameters of adapter `name`, keyed by name inside the base model (what a saved adapter holds)."""
    out = {}
    for prefix, comp in components(model):
        if name in comp.adapter_names():
            for key, p in comp.adapter_params(name).items():
                out[f"{prefix}.{key}" if prefix else key] = p
    return out


def adapter_names(model: nn.Module) -> list[str]:
    return list(peft_state(model).configs)


# --- inject -------------------------------------------------------------------------------------------------
def _candidates(model: nn.Module, spec: SwapMethod) -> list[str]:
    return [n for n, m in model.named_modules() if n and spec.layer.accepts(m) and "base_layer" not in n.split(".")][:8]


def _plan_swap(model: nn.Module, cfg: PeftConfig, spec: SwapMethod) -> list[tuple[str, nn.Module]]:
    """The (name, module) pairs cfg targets, checked before anything is swapped (errors leave the model as is)."""
    patterns = cfg.target_modules
    hits = {p: 0 for p in patterns or ()}
    plan = []
    wrappers = [n + "." for n, m in model.named_modules() if isinstance(m, SWAP_LAYERS)]
    for name, module in model.named_modules():
        if not name or isinstance(module, WRAPPERS) or any(name.startswith(w) for w in wrappers):
            continue  # never wrap a wrapper's insides (its base_layer, lora_A ...)
        found = [p for p in patterns if matches(p, name)] if patterns is not None else []
        if patterns is not None and not found:
            continue
        if isinstance(module, spec.layer) or (spec.layer.accepts(module) and not isinstance(module, SWAP_LAYERS)):
            plan.append((name, module))
            for p in found:
                hits[p] += 1
    if isinstance(cfg, BitFitConfig) and patterns is None and not plan:
        raise PeftError(
            f"BitFit trains only bias terms, but {type(model).__name__} has no biases (e.g. ModelConfig.bias=False "
            "with RMSNorm, as in Llama / SmolLM2). Use LoraConfig or IA3Config for this model instead"
        )
    missing = [p for p, n in hits.items() if n == 0]
    if missing:
        raise PeftError(
            f"{type(cfg).__name__}.target_modules {missing} match no module {spec.what} can wrap in "
            f"{type(model).__name__}; module names look like {_candidates(model, spec)}"
        )
    if isinstance(cfg, IA3Config):
        unused = [p for p in cfg.feedforward_modules if not any(matches(p, n) for n, _ in plan)]
        if unused:
            raise PeftError(f"IA3Config.feedforward_modules {unused} match none of the targeted modules "
                            f"{[n for n, _ in plan][:6]}; each feedforward module must also be in target_modules")
    return plan


def _swap(model: nn.Module, cfg: PeftConfig, adapter: str, spec: SwapMethod) -> None:
    for name, module in _plan_swap(model, cfg, spec):
        layer = module
        if not isinstance(module, spec.layer):
            layer = spec.wrap(module, cfg, name)
            model.set_submodule(name, layer)
        spec.add(layer, cfg, name, adapter)


def inject(model: nn.Module, cfg: PeftConfig, adapter_name: str = "default", tokenizer=None) -> nn.Module:
    """Add adapter `adapter_name` described by `cfg`, make it the active (and only trainable) one, and return the
    model to use: the same object for LoRA / IA3 / BitFit, a PromptModel / PrefixModel for prompt / prefix
    tuning. `tokenizer` is needed only by init='text' (prompt and prefix tuning)."""
    if not isinstance(cfg, PeftConfig) or cfg.method not in METHODS:
        raise PeftError(f"inject needs a PEFT config (LoraConfig, IA3Config, BitFitConfig, PromptTuningConfig, "
                        f"PrefixTuningConfig); got {type(cfg).__name__}")
    if not isinstance(adapter_name, str) or not adapter_name or "." in adapter_name:
        raise PeftError(f"adapter_name={adapter_name!r} must be a non-empty string without '.'")
    state = getattr(model, "peft_state", None)
    if state is not None and state.method != cfg.method:
        raise PeftError(f"this model already carries {state.method} adapters {list(state.configs)}; one PEFT method "
                        f"per model: delete them (delete_adapter) or merge_and_unload before adding {cfg.method}")
    if state is not None and adapter_name in state.configs:
        raise PeftError(f"adapter {adapter_name!r} already exists; pick another adapter_name or delete_adapter it")
    _refuse_merged(model, f"adding adapter {adapter_name!r}")
    if state is None:
        state = PeftState(cfg.method, requires_grad=[(p, p.requires_grad) for p in model.parameters()])
    spec = METHODS[cfg.method]
    if isinstance(spec, SwapMethod):
        _swap(model, cfg, adapter_name, spec)
    else:
        model = model if isinstance(model, spec) else spec(model)
        _add_to_wrapper(model, cfg, adapter_name, tokenizer)
    model.peft_state = state
    state.configs[adapter_name] = cfg
    set_adapter(model, adapter_name)
    return model


def _add_to_wrapper(model: nn.Module, cfg: PeftConfig, name: str, tokenizer) -> None:
    if isinstance(model, PromptModel):
        model.add_adapter(name, init_prompt(cfg, model.token_embedding().weight, tokenizer))
    else:
        start = text_prefix(model.base_model, init_ids(cfg, tokenizer)) if cfg.init == "text" else None
        model.add_adapter(name, cfg.n_virtual_tokens, cfg.reparam_hidden, start)


# --- switching, deleting ------------------------------------------------------------------------------------
def _refuse_merged(model: nn.Module, what: str) -> None:
    merged = sorted({c.merged for _, c in components(model) if getattr(c, "merged", None)})
    if merged:
        raise PeftError(f"adapter {merged[0]!r} is merged into the weights; unmerge(model) before {what}")


def set_adapter(model: nn.Module, adapter_name: str) -> None:
    """Make `adapter_name` the one forward applies and the only one that trains (the base stays frozen)."""
    state = peft_state(model)
    if adapter_name not in state.configs:
        raise PeftError(f"no adapter {adapter_name!r}; this model has {list(state.configs)}")
    comps = components(model)
    merged = sorted({c.merged for _, c in comps if getattr(c, "merged", None)})
    if merged and merged != [adapter_name]:
        raise PeftError(f"adapter {merged[0]!r} is merged into the weights; unmerge(model) before switching")
    for p in model.parameters():
        p.requires_grad_(False)
    for _, comp in comps:
        comp.active = adapter_name if adapter_name in comp.adapter_names() else None
    for p in adapter_params(model, adapter_name).values():
        p.requires_grad_(True)
    state.active = adapter_name


def delete_adapter(model: nn.Module, adapter_name: str) -> nn.Module:
    """Remove an adapter. Deleting the last one gives back the plain model (wrappers removed, the base's
    requires_grad flags restored); use the returned model."""
    state = peft_state(model)
    if adapter_name not in state.configs:
        raise PeftError(f"no adapter {adapter_name!r}; this model has {list(state.configs)}")
    _refuse_merged(model, f"deleting adapter {adapter_name!r}")
    for name, comp in components(model):
        if adapter_name in comp.adapter_names():
            comp.delete_adapter(adapter_name)
            if isinstance(comp, SWAP_LAYERS) and not comp.adapter_names():
                model.set_submodule(name, comp.base_layer)
    del state.configs[adapter_name]
    if state.configs:
        if state.active == adapter_name:
            set_adapter(model, next(iter(state.configs)))
        return model
    del model.peft_state
    for p, flag in state.requires_grad:
        p.requires_grad_(flag)
    return base_model(model)


# --- merging ------------------------------------------------------------------------------------------------
def _swap_layers(model: nn.Module, what: str) -> list[tuple[str, nn.Module]]:
    state = peft_state(model)
    if not isinstance(METHODS[state.method], SwapMethod):
        raise PeftError(f"{state.method} tuning cannot be {what}: its adapter enters through the model's inputs, "
                        "not its weights (nothing to fold)")
    return [(n, c) for n, c in components(model) if isinstance(c, SWAP_LAYERS)]


def _check_untied(model: nn.Module, layers: list[tuple[str, nn.Module]], adapter: str) -> None:
    """Merging writes into base tensors; a tensor shared with another module (tied lm_head) would change it too."""
    owners: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), []).append(name)
    changed = {LoraLinear: ("weight",), IA3Linear: ("weight", "bias"), BiasAdapter: ("bias",)}
    for name, layer in layers:
        for attr in changed[type(layer)] if adapter in layer.adapter_names() else ():
            t = getattr(layer.base_layer, attr, None)
            if isinstance(t, nn.Parameter) and len(owners.get(id(t), [])) > 1:
                raise PeftError(
                    f"cannot merge into {name}: its {attr} is shared with {owners[id(t)]} (tied weights), so merging "
                    "would change those too; keep the adapter unmerged, or leave that module out of target_modules"
                )


def merge(model: nn.Module, adapter_name: str | None = None, keep_original: bool = True) -> None:
    """Fold the adapter (default: the active one) into the base weights; forward then costs what the base does.
    With keep_original the replaced tensors are kept so unmerge restores them exactly."""
    layers = _swap_layers(model, "merged")
    name = adapter_name or peft_state(model).active
    set_adapter(model, name)
    _check_untied(model, layers, name)
    for _, layer in layers:
        if name in layer.adapter_names():
            layer.merge(name, keep_original)


def unmerge(model: nn.Module) -> None:
    """Take the merged adapter back out of the weights (bit-exact when merged with keep_original)."""
    for _, layer in _swap_layers(model, "unmerged"):
        layer.unmerge()


def merge_and_unload(model: nn.Module, adapter_name: str | None = None) -> nn.Module:
    """Merge the adapter for good and remove every wrapper: a plain model (e.g. for save_hf / GGUF export)."""
    merge(model, adapter_name, keep_original=False)
    for name, layer in _swap_layers(model, "merged"):
        model.set_submodule(name, layer.base_layer)
    state = peft_state(model)
    del model.peft_state
    for p, flag in state.requires_grad:
        p.requires_grad_(flag)
    return model


# --- contexts -----------------------------------------------------------------------------------------------
@contextmanager
def disable(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block the model computes exactly its base output (merged adapters are taken out meanwhile)."""
    comps = [c for _, c in components(model)]
    merged = [(c, c.merged, c.original_weight is not None or c.original_bias is not None)
              for c in comps if getattr(c, "merged", None)]
    for c, _, _ in merged:
        c.unmerge()
    before = [(c, c.disabled) for c in comps]
    for c in comps:
        c.disabled = True
    try:
        yield model
    finally:
        for c, flag in before:
            c.disabled = flag
        for c, name, kept in merged:
            c.merge(name, keep_original=kept)


@contextmanager
def adapter_rows(model: nn.Module, rows: Sequence[str | None]) -> Iterator[nn.Module]:
    """One forward pass in which batch row i uses adapter rows[i] (None: the base model), equal to running each
    row alone with its adapter; every adapter present costs one grouped matmul per layer, not one per row."""
    state = peft_state(model)
    plan = RowPlan.build(rows)
    unknown = [n for n in plan.order if n not in state.configs]
    if unknown:
        raise PeftError(f"adapter_rows names unknown adapters {unknown}; this model has {list(state.configs)}")
    comps = [c for _, c in components(model)]
    if any(isinstance(c, PrefixModel) for c in comps):
        raise PeftError("adapter_rows does not support prefix tuning (one prefix per batch); use LoRA or prompts")
    if any(getattr(c, "merged", None) for c in comps):
        raise PeftError("adapter_rows needs unmerged adapters (a merged one is in every row); unmerge(model) first")
    for c in comps:
        c.rows = plan
    try:
        yield model
    finally:
        for c in comps:
            c.rows = None


# --- counting -----------------------------------------------------------------------------------------------
def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) numbers of parameters, each shared tensor counted once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def summary(model: nn.Module) -> str:
    """One line, like peft's print_trainable_parameters."""
    trainable, total = count_parameters(model)
    return f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}"
