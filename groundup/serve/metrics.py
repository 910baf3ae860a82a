"""Server metrics in the Prometheus text format (version 0.0.4), written by hand: counters, gauges and
histograms behind one lock, updated from the web app and the engine thread alike."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Sequence

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                     for k, v in sorted(labels.items()))
    return "{" + inner + "}"


class Histogram:
    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)
        self.total, self.n = 0.0, 0

    def observe(self, value: float) -> None:
        for i, edge in enumerate(self.buckets):
            if value <= edge:
                self.counts[i] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str) -> list[str]:
        out = [f'{name}_bucket{{le="{edge}"}} {c}' for edge, c in zip(self.buckets, self.counts, strict=True)]
        return out + [f'{name}_bucket{{le="+Inf"}} {self.n}', f"{name}_sum {self.total}", f"{name}_count {self.n}"]


class Metrics:
    """Everything /metrics reports. Gauges are read at scrape time from callables (queue depth, batch)."""

    HELP = {
        "groundup_requests_total": ("counter", "HTTP requests by endpoint and status code"),
        "groundup_prompt_tokens_total": ("counter", "prompt tokens processed (prefill)"),
        "groundup_generation_tokens_total": ("counter", "tokens generated"),
        "groundup_queue_depth": ("gauge", "requests waiting for a slot"),
        "groundup_running_requests": ("gauge", "requests in the running batch"),
        "groundup_batch_size": ("histogram", "rows per decode step"),
        "groundup_time_to_first_token_seconds": ("histogram", "arrival to first generated token"),
        "groundup_inter_token_latency_seconds": ("histogram", "time between a request's successive tokens"),
        "groundup_request_latency_seconds": ("histogram", "arrival to last token"),
    }

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.counters = {"groundup_prompt_tokens_total": 0, "groundup_generation_tokens_total": 0}
        self.histograms = {
            "groundup_batch_size": Histogram(BATCH_BUCKETS),
            "groundup_time_to_first_token_seconds": Histogram(LATENCY_BUCKETS),
            "groundup_inter_token_latency_seconds": Histogram(LATENCY_BUCKETS),
            "groundup_request_latency_seconds": Histogram(LATENCY_BUCKETS),
        }
        self.gauges: dict[str, Callable[[], float]] = {}

    def count_request(self, endpoint: str, status: int) -> None:
        with self.lock:
            self.requests[(endpoint, status)] += 1

    def add(self, counter: str, value: int) -> None:
        with self.lock:
            self.counters[counter] += value

    def observe(self, histogram: str, value: float) -> None:
        with self.lock:
            self.histograms[histogram].observe(value)

    def render(self) -> str:
        lines: list[str] = []
        with self.lock:
            for name, (kind, text) in self.HELP.items():
                lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
                if name == "groundup_requests_total":
                    lines += [f"{name}{_labels({'endpoint': e, 'status': str(s)})} {n}"
                              for (e, s), n in sorted(self.requests.items())]
                elif name in self.counters:
                    lines.append(f"{name} {self.counters[name]}")
                elif name in self.gauges:
                    lines.append(f"{name} {self.gauges[name]()}")
                elif name in self.histograms:
                    lines += self.histograms[name].lines(name)
        return "\n".join(lines) + "\n"
