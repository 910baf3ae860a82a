"""Peak resident memory of this process, and of a window of it (Linux: VmHWM, reset through clear_refs)."""

from __future__ import annotations

import resource
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's peak resident memory so far: VmHWM on Linux (ru_maxrss survives exec, so a child started
    by a big parent would report the parent's peak), else ru_maxrss."""
    return window_peak_mb() or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> bool:
    """Start a new peak-RSS window (Linux: writing 5 to clear_refs resets VmHWM, and with it what ru_maxrss reports
    from then on: read peak_rss_mb() before); False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def window_peak_mb() -> float | None:
    """Peak resident memory since reset_peak() (VmHWM), None off Linux."""
    return status_mb("VmHWM")


def status_mb(field: str) -> float | None:
    """A memory field of /proc/self/status (VmRSS, VmHWM, ...) in MB, None off Linux."""
    try:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    except (OSError, StopIteration):
        return None
    return int(line.split()[1]) / 1024
