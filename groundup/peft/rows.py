"""Mixed batches: one forward pass in which each row uses its own adapter (or none).

A RowPlan is built once per `adapter_rows(...)` context and shared by every wrapper. It groups the rows
by adapter so each wrapper does one matmul (or one gather) per adapter present, never a loop per row:

    rows   ["a", None, "b", "a"]
    order  ("a", "b")                      adapters present, first-seen order
    codes  [1, 0, 2, 1]                    0 = no adapter, k = order[k - 1]
    groups {"a": [0, 3], "b": [2]}         row indices per adapter
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .config import PeftError


@dataclass(frozen=True)
class RowPlan:
    rows: tuple[str | None, ...]
    order: tuple[str, ...]
    codes: torch.Tensor  # (B,) long
    groups: dict[str, torch.Tensor]  # adapter -> (n_rows,) long

    @classmethod
    def build(cls, rows: Sequence[str | None]) -> RowPlan:
        rows = tuple(rows)
        if not rows:
            raise PeftError("adapter_rows needs one entry per batch row (an adapter name or None); got none")
        bad = [r for r in rows if r is not None and not isinstance(r, str)]
        if bad:
            raise PeftError(f"adapter_rows entries must be adapter names or None; got {bad[:4]}")
        order = tuple(dict.fromkeys(r for r in rows if r is not None))
        codes = torch.tensor([0 if r is None else order.index(r) + 1 for r in rows], dtype=torch.long)
        groups = {name: torch.nonzero(codes == i + 1).flatten() for i, name in enumerate(order)}
        return cls(rows, order, codes, groups)

    def check(self, batch: int, where: str) -> None:
        if batch != len(self.rows):
            raise PeftError(
                f"{where}: the batch has {batch} rows but adapter_rows names {len(self.rows)}; "
                "give exactly one adapter name (or None) per row"
            )

    def codes_on(self, device: torch.device) -> torch.Tensor:
        return self.codes.to(device)


def per_row(plan: RowPlan, table: dict[str, torch.Tensor], neutral: torch.Tensor) -> torch.Tensor:
    """(B, *neutral.shape): row b gets table[its adapter], or `neutral` when it has none / this layer lacks it.
    One stack + one gather, differentiable in every table entry."""
    stacked = torch.stack([neutral] + [table.get(name, neutral) for name in plan.order])  # (1 + G, ...)
    return stacked[plan.codes_on(neutral.device)]
