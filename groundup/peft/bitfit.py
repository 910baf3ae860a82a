"""BitFit (Ben Zaken et al. 2022, "BitFit: Simple Parameter-efficient Fine-tuning for Transformer-based Masked
Language-models"): fine-tune only the bias terms.

As a module swap, each module that has a bias is wrapped and learns a *bias delta* (zero-initialised):

    y = base_layer(x) + delta[name]        ==  the same module with bias b + delta

which is BitFit exactly (same function, same number of trainable numbers), while the original biases stay
untouched, so named adapters, `disable`, exact `unmerge` and mixed batches work as for LoRA.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import PeftError
from .layer import bypass, check_new, init_state, restore_original, row_shape, start_merge
from .rows import per_row


def has_bias(module: nn.Module) -> bool:
    bias = dict(module.named_parameters(recurse=False)).get("bias")
    return isinstance(bias, torch.Tensor) and bias.dim() == 1


class BiasAdapter(nn.Module):
    """A module with a bias (Linear, LayerNorm) plus named bias deltas."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        if not has_bias(base_layer):
            raise PeftError(f"BitFit wraps modules with a 1-D bias; {type(base_layer).__name__} has none")
        init_state(self, base_layer)
        self.bias_delta = nn.ParameterDict()

    @staticmethod
    def accepts(module: nn.Module) -> bool:
        return has_bias(module)

    def adapter_names(self) -> list[str]:
        return list(self.bias_delta.keys())

    def add_adapter(self, name: str) -> None:
        check_new(self, name)
        self.bias_delta[name] = nn.Parameter(torch.zeros_like(self.base_layer.bias.detach()))

    def delete_adapter(self, name: str) -> None:
        if self.merged == name:
            raise PeftError(f"adapter {name!r} is merged; unmerge(model) before deleting it")
        del self.bias_delta[name]
        if self.active == name:
            self.active = None

    def adapter_params(self, name: str) -> dict[str, nn.Parameter]:
        return {"bias_delta": self.bias_delta[name]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if bypass(self):
            return out
        if self.rows is None:
            return out + self.bias_delta[self.active].to(out.dtype)
        self.rows.check(out.shape[0], "BiasAdapter")
        neutral = torch.zeros_like(next(iter(self.bias_delta.values())))
        return out + row_shape(per_row(self.rows, dict(self.bias_delta), neutral), out).to(out.dtype)

    def merge(self, name: str, keep_original: bool = True) -> None:
        start_merge(self, name, keep_original, ("bias",))
        with torch.no_grad():
            self.base_layer.bias += self.bias_delta[name].detach().to(self.base_layer.bias.dtype)

    def unmerge(self) -> None:
        if self.merged is None:
            return
        if not restore_original(self):
            with torch.no_grad():
                self.base_layer.bias -= self.bias_delta[self.merged].detach().to(self.base_layer.bias.dtype)
        self.merged = None
