"""Run telemetry: a metrics CSV, a tqdm progress bar, and the loss-curve plot.

(Named metrics.py, not logging.py, so it never shadows the standard library's `logging`.)

CSV columns: step, loss, lr, tokens_per_s, val_loss, val_ppl, then the objective's own logged metrics (an
objective's `logged` names, e.g. alignment's reward and KL). One row per step that logged (every `log_every`
steps), evaluated (every `eval_every` steps) or finished the run; `loss` and the logged metrics are means since
the previous row, empty cells mean "not measured at this step".
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

CSV_FIELDS = ("step", "loss", "lr", "tokens_per_s", "val_loss", "val_ppl")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


class MetricsCSV:
    """Appends metric rows to a CSV file. On resume, rows past the resumed step are dropped first,
    so a crashed run's tail does not duplicate the steps the resumed run redoes. `last_step` is the step
    of the last row kept (the resumed step when there is no file), where the next row's mean loss starts."""

    def __init__(self, path: str | Path, resume_step: int | None = None, extra: tuple[str, ...] = ()) -> None:
        self.path, self.fields = Path(path), CSV_FIELDS + tuple(extra)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if resume_step is not None and self.path.is_file():
            kept = [r for r in read_metrics(self.path) if r["step"] is not None and r["step"] <= resume_step]
        with self.path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(self.fields)
            for row in kept:
                writer.writerow([_cell(_int_step(row.get(k)) if k == "step" else row.get(k)) for k in self.fields])
        self.last_step = int(kept[-1]["step"]) if kept else (resume_step or 0)

    def write(self, row: dict[str, Any]) -> None:
        unknown = sorted(set(row) - set(self.fields))
        if unknown:
            raise KeyError(f"metrics row has unknown column(s) {unknown}; columns are {list(self.fields)}")
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([_cell(row.get(k)) for k in self.fields])


def _int_step(value: Any) -> Any:
    return int(value) if value is not None else None


def read_metrics(path: str | Path) -> list[dict[str, float | None]]:
    """Rows of a metrics CSV as dicts of floats (None for empty cells); 'step' as a number too. Every column of
    the file, and CSV_FIELDS always (None where an older file lacks one)."""
    rows = []
    with Path(path).open(newline="") as f:
        reader = csv.DictReader(f)
        keys = list(CSV_FIELDS) + [k for k in reader.fieldnames or () if k not in CSV_FIELDS]
        for raw in reader:
            rows.append({k: (float(raw[k]) if raw.get(k) not in (None, "") else None) for k in keys})
    return rows


def perplexity(loss: float) -> float:
    """exp(loss), saturating to inf instead of raising on overflow."""
    try:
        return math.exp(loss)
    except OverflowError:
        return float("inf")


class Progress:
    """A tqdm bar showing loss and tokens/s; with the bar off (progress=False), one printed line per metrics row
    when `lines`; a no-op when both are off (non-zero ranks)."""

    def __init__(self, total: int, initial: int, enabled: bool, lines: bool = False, extra: tuple[str, ...] = ()
                 ) -> None:
        self.bar, self.total, self.lines, self.extra = None, total, lines and not enabled, extra
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def show(self, row: dict[str, Any]) -> None:
        """Show a metrics row: in the bar's postfix, or as one line."""
        if self.bar is not None:
            values = {"loss": row["loss"], **{k: row.get(k) for k in self.extra}, "tok_s": row.get("tokens_per_s"),
                      "val": row.get("val_loss")}
            shown = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in values.items() if v is not None}
            self.bar.set_postfix(shown, refresh=False)
        elif self.lines:
            print(f"[groundup.train] {log_line(row, self.total, self.extra)}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def log_line(row: dict[str, Any], total: int, extra: tuple[str, ...] = ()) -> str:
    """'step 10/200 | loss 2.3456 | lr 3.00e-04 | val_loss 2.2100 | 1.2e+04 tok/s' (val_loss when evaluated),
    the `extra` metrics after the loss."""
    parts = [f"step {row['step']}/{total}", f"loss {row['loss']:.4f}",
             *(f"{k} {row[k]:.4g}" for k in extra if row.get(k) is not None), f"lr {row['lr']:.2e}"]
    if row.get("val_loss") is not None:
        parts.append(f"val_loss {row['val_loss']:.4f}")
    if row.get("tokens_per_s") is not None:
        parts.append(f"{row['tokens_per_s']:.3g} tok/s")
    return " | ".join(parts)


def plot_loss_curve(csv_path: str | Path, png_path: str | Path) -> Path:
    """Plot train loss and val loss against step from a metrics CSV into a PNG, and below it one panel per
    logged metric of the objective (the CSV's columns after CSV_FIELDS: e.g. reward and KL).

    Uses a bare matplotlib Figure (Agg canvas), so no pyplot global state or backend switch.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = read_metrics(csv_path)
    extra = [k for k in (rows[0] if rows else {}) if k not in CSV_FIELDS]
    fig = Figure(figsize=(7, 4 + 2.5 * len(extra)))
    FigureCanvasAgg(fig)
    ax, *panels = fig.subplots(1 + len(extra), 1, squeeze=False)[:, 0]
    for panel, key in zip(panels, extra, strict=True):
        points = [(r["step"], r[key]) for r in rows if r[key] is not None]
        if points:
            panel.plot(*zip(*points, strict=True))
        panel.set_xlabel("step")
        panel.set_ylabel(key)
        panel.grid(alpha=0.3)
    for key, label, style in (("loss", "train", "-"), ("val_loss", "val", "o-")):
        points = [(r["step"], r[key]) for r in rows if r[key] is not None]
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, style, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("loss curve")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=100, bbox_inches="tight")
    return png_path
