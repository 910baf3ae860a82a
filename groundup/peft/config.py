"""One dataclass per parameter-efficient fine-tuning method, each validated in __post_init__.

Targets are picked by *name pattern*, as in peft: a pattern matches a module name when it equals the
name, is a dotted suffix of it ("q_proj" matches "blocks.3.attn.q_proj"; "attn.q_proj" too), or is a
regular expression that matches the whole name (r"blocks\\.[01]\\.attn\\.(q|v)_proj").
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from ..config import from_checked_dict


class PeftError(ValueError):
    """Bad PEFT input (a config field, a target pattern, an adapter for another model); the message says the fix."""


def matches(pattern: str, name: str) -> bool:
    """True when `pattern` selects the module called `name` (exact, dotted suffix, or full regex match)."""
    if name == pattern or name.endswith("." + pattern):
        return True
    try:
        return re.fullmatch(pattern, name) is not None
    except re.error:
        return False


def _check_patterns(owner: str, field_name: str, patterns: Any, allow_empty: bool = False) -> tuple[str, ...]:
    if isinstance(patterns, str):
        patterns = (patterns,)
    if not isinstance(patterns, (list, tuple)) or not all(isinstance(p, str) and p for p in patterns):
        raise PeftError(f"{owner}.{field_name}={patterns!r} must be a list of module-name patterns (e.g. ['q_proj'])")
    if not patterns and not allow_empty:
        raise PeftError(f"{owner}.{field_name} is empty; name at least one module pattern, e.g. ['q_proj', 'v_proj']")
    return tuple(patterns)


def _positive_int(owner: str, name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise PeftError(f"{owner}.{name}={value!r} must be a positive integer")


@dataclass
class PeftConfig:
    """Shared behaviour: `method` names the method in saved files; to_dict / from_dict round-trip."""

    method: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PeftConfig:
        return from_checked_dict(cls, data, PeftError)


@dataclass
class LoraConfig(PeftConfig):
    """LoRA (Hu et al. 2021): W x + (alpha / r) * B A x with A (r, in), B (out, r), B zero-initialised so a fresh
    adapter is a no-op. `rank_pattern` / `alpha_pattern` give some modules their own r / alpha (pattern -> value);
    `rslora` scales by alpha / sqrt(r) instead (Kalajdzievski 2023)."""

    method: ClassVar[str] = "lora"
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    rslora: bool = False

    def __post_init__(self) -> None:
        _positive_int("LoraConfig", "r", self.r)
        if not isinstance(self.alpha, (int, float)) or self.alpha <= 0:
            raise PeftError(f"LoraConfig.alpha={self.alpha!r} must be a positive number (the scaling is alpha / r)")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise PeftError(f"LoraConfig.dropout={self.dropout!r} must be in [0, 1)")
        self.target_modules = _check_patterns("LoraConfig", "target_modules", self.target_modules)
        for pattern, r in self.rank_pattern.items():
            _positive_int("LoraConfig", f"rank_pattern[{pattern!r}]", r)
        for pattern, a in self.alpha_pattern.items():
            if not isinstance(a, (int, float)) or a <= 0:
                raise PeftError(f"LoraConfig.alpha_pattern[{pattern!r}]={a!r} must be a positive number")

    def rank_for(self, module: str) -> int:
        return next((r for p, r in self.rank_pattern.items() if matches(p, module)), self.r)

    def scaling_for(self, module: str) -> float:
        alpha = next((a for p, a in self.alpha_pattern.items() if matches(p, module)), self.alpha)
        r = self.rank_for(module)
        return alpha / (r**0.5 if self.rslora else r)


@dataclass
class IA3Config(PeftConfig):
    """(IA)^3 (Liu et al. 2022): learned vectors rescale the outputs of the targeted projections (keys, values)
    and, for `feedforward_modules`, their *input* (the FFN's intermediate activation entering down_proj).
    Vectors start at one, so a fresh adapter is a no-op."""

    method: ClassVar[str] = "ia3"
    target_modules: tuple[str, ...] = ("k_proj", "v_proj", "down_proj")
    feedforward_modules: tuple[str, ...] = ("down_proj",)

    def __post_init__(self) -> None:
        self.target_modules = _check_patterns("IA3Config", "target_modules", self.target_modules)
        self.feedforward_modules = _check_patterns(
            "IA3Config", "feedforward_modules", self.feedforward_modules, allow_empty=True
        )


@dataclass
class BitFitConfig(PeftConfig):
    """BitFit (Ben Zaken et al. 2022): train only the bias terms. `target_modules` None = every module with a bias."""

    method: ClassVar[str] = "bitfit"
    target_modules: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.target_modules is not None:
            self.target_modules = _check_patterns("BitFitConfig", "target_modules", self.target_modules)


def _check_init(owner: str, init: str, init_text: str | None) -> None:
    if init not in ("random", "text"):
        raise PeftError(f"{owner}.init={init!r} is unknown; use 'random' or 'text'")
    if init == "text" and not init_text:
        raise PeftError(f"{owner}.init='text' needs init_text (the words it starts from)")


@dataclass
class PromptTuningConfig(PeftConfig):
    """Soft prompt tuning (Lester et al. 2021): n virtual token embeddings prepended to the input embeddings.
    init='text' starts them at the embeddings of `init_text`'s tokens (repeated or cut to n_virtual_tokens)."""

    method: ClassVar[str] = "prompt"
    n_virtual_tokens: int = 20
    init: Literal["random", "text"] = "random"
    init_text: str | None = None

    def __post_init__(self) -> None:
        _positive_int("PromptTuningConfig", "n_virtual_tokens", self.n_virtual_tokens)
        _check_init("PromptTuningConfig", self.init, self.init_text)


@dataclass
class PrefixTuningConfig(PeftConfig):
    """Prefix tuning (Li & Liang 2021): trainable per-layer key/value prefixes every query attends to.
    reparam_hidden: hidden width of the MLP (embedding -> Linear -> tanh -> Linear -> per-layer k/v) that
    produces the prefixes during training, for stability; saving folds it into plain prefix tensors.
    None trains the prefix tensors directly.
    init='text' starts the prefix at the base model's own keys and values of `init_text`'s tokens (repeated or cut
    to n_virtual_tokens), so training starts from the model reading those words rather than from noise that it
    has never seen (the paper's sec. 7.2: real-word initialisation is what makes small-data prefix tuning work).
    It sets the prefix tensors themselves, so it needs reparam_hidden=None."""

    method: ClassVar[str] = "prefix"
    n_virtual_tokens: int = 20
    reparam_hidden: int | None = 512
    init: Literal["random", "text"] = "random"
    init_text: str | None = None

    def __post_init__(self) -> None:
        _positive_int("PrefixTuningConfig", "n_virtual_tokens", self.n_virtual_tokens)
        if self.reparam_hidden is not None:
            _positive_int("PrefixTuningConfig", "reparam_hidden", self.reparam_hidden)
        _check_init("PrefixTuningConfig", self.init, self.init_text)
        if self.init == "text" and self.reparam_hidden is not None:
            raise PeftError(f"PrefixTuningConfig.init='text' sets the prefix tensors themselves; set "
                            f"reparam_hidden=None (got {self.reparam_hidden}), or use init='random' with the MLP")


CONFIGS: dict[str, type[PeftConfig]] = {
    c.method: c for c in (LoraConfig, IA3Config, BitFitConfig, PromptTuningConfig, PrefixTuningConfig)
}


def config_from_dict(method: str, data: dict[str, Any]) -> PeftConfig:
    if method not in CONFIGS:
        raise PeftError(f"unknown PEFT method {method!r}; groundup knows {sorted(CONFIGS)}")
    return CONFIGS[method].from_dict(data)
