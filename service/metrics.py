"""A small metrics registry with Prometheus text exposition (format 0.0.4).

Counters and histograms are labelled and thread-safe (they are updated from
the event loop and from the model worker threads); gauges are read from a
callback at scrape time, so the gallery size is never stale.
"""
from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

Labels = tuple[str, ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Counter:
    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = ()) -> None:
        self.name, self.help, self.label_names = name, help_text, tuple(label_names)
        self._values: dict[Labels, float] = {}
        self._lock = threading.Lock()

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + amount

    def value(self, *labels: str) -> float:
        return self._values.get(labels, 0.0)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        with self._lock:
            for labels, value in sorted(self._values.items()):
                lines.append(f"{self.name}{_labels(self.label_names, labels)} {_number(value)}")
        return lines


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: Sequence[float],
                 label_names: Sequence[str] = ()) -> None:
        self.name, self.help, self.label_names = name, help_text, tuple(label_names)
        self.buckets = tuple(sorted(buckets))
        self._series: dict[Labels, list[float]] = {}  # bucket counts..., +Inf count, sum
        self._lock = threading.Lock()

    def observe(self, value: float, *labels: str) -> None:
        with self._lock:
            series = self._series.setdefault(labels, [0.0] * (len(self.buckets) + 2))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    series[i] += 1
            series[-2] += 1
            series[-1] += value

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        with self._lock:
            for labels, series in sorted(self._series.items()):
                for bound, count in zip(self.buckets, series):
                    le = f'le="{_number(bound)}"'
                    lines.append(f"{self.name}_bucket{_labels(self.label_names, labels, le)} {_number(count)}")
                inf = _labels(self.label_names, labels, 'le="+Inf"')
                lines.append(f"{self.name}_bucket{inf} {_number(series[-2])}")
                lines.append(f"{self.name}_sum{_labels(self.label_names, labels)} {_number(series[-1])}")
                lines.append(f"{self.name}_count{_labels(self.label_names, labels)} {_number(series[-2])}")
        return lines


class Gauge:
    """A value read at scrape time: ``read()`` returns ``{label values: value}``."""

    def __init__(self, name: str, help_text: str, read: Callable[[], dict[Labels, float]],
                 label_names: Sequence[str] = ()) -> None:
        self.name, self.help, self.label_names, self.read = name, help_text, tuple(label_names), read

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge"]
        for labels, value in sorted(self.read().items()):
            lines.append(f"{self.name}{_labels(self.label_names, labels)} {_number(value)}")
        return lines


class Metrics:
    """The service's metrics; gauges are attached once the parts they read exist."""

    def __init__(self) -> None:
        self.requests = Counter("shopmatch_requests_total", "HTTP requests by route, method and status.",
                                ("route", "method", "status"))
        self.errors = Counter("shopmatch_request_errors_total", "Refused or failed requests by route and error code.",
                              ("route", "code"))
        self.latency = Histogram("shopmatch_request_duration_seconds", "Request latency by route.",
                                 LATENCY_BUCKETS, ("route",))
        self.batch_size = Histogram("shopmatch_model_batch_size", "Pictures or crops per model call.",
                                    BATCH_BUCKETS, ("model",))
        self.batch_requests = Histogram("shopmatch_model_batch_requests", "Requests sharing one model call.",
                                        BATCH_BUCKETS, ("model",))
        self.gauges: list[Gauge] = []

    def gauge(self, name: str, help_text: str, read: Callable[[], dict[Labels, float]],
              label_names: Sequence[str] = ()) -> None:
        self.gauges.append(Gauge(name, help_text, read, label_names))

    def render(self) -> str:
        lines: list[str] = []
        for metric in (self.requests, self.errors, self.latency, self.batch_size, self.batch_requests,
                       *self.gauges):
            lines += metric.render()
        return "\n".join(lines) + "\n"
