"""Prometheus metrics of one registry process, served at `/metrics`.

Requests are counted by route, method and status, with a latency histogram per route.
The hot path only bumps plain integers, and needs no lock because the registry runs one
event loop per process. prometheus_client turns them into metric families at scrape time.
S3 requests and cache hits are integers kept by the storage and the caches.

NOTE: with several uvicorn workers each process counts on its own. A scrape of /metrics
reads whichever worker accepts it, because prometheus_client's multiprocess mode is not used.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

# Latency buckets in seconds: hot responses take well under a millisecond, S3 round trips tens of them.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

CounterSource = Callable[[], dict[tuple[str, ...], int]]


class _Histogram:
    """Observation counts per latency bucket (the last one is +Inf) and their sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*map(str, LATENCY_BUCKETS), "+Inf"), self.counts):
            running += count
            buckets.append((bound, running))
        return buckets


class RegistryMetrics:
    """The registry's metrics, in a CollectorRegistry of its own."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.s3_errors = Counter(
            "stratus_s3_errors", "S3 calls that failed after retries, by kind (throttled, unavailable).",
            ["kind"], registry=self.registry,
        )
        self._requests: dict[tuple[str, str, int], int] = {}
        self._latency: dict[str, _Histogram] = {}
        self.registry.register(_RequestCollector(self._requests, self._latency))

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        self._requests[key] = self._requests.get(key, 0) + 1
        histogram = self._latency.get(route)
        if histogram is None:
            histogram = self._latency[route] = _Histogram()
        histogram.observe(seconds)

    def add_counters(self, name: str, documentation: str, labels: list[str], source: CounterSource) -> None:
        """Export integers that `source` returns at scrape time as a labelled counter."""
        self.registry.register(_CallbackCounter(name, documentation, labels, source))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _RequestCollector(Collector):
    def __init__(self, requests: dict[tuple[str, str, int], int], latency: dict[str, _Histogram]) -> None:
        self._requests = requests
        self._latency = latency

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "stratus_http_requests", "HTTP requests answered, by route, method and status.",
            labels=["route", "method", "status"],
        )
        for (route, method, status), count in sorted(self._requests.items()):
            requests.add_metric([route, method, str(status)], count)
        yield requests

        latency = HistogramMetricFamily(
            "stratus_http_request_duration_seconds", "Time to answer an HTTP request, by route.", labels=["route"]
        )
        for route, histogram in sorted(self._latency.items()):
            latency.add_metric([route], histogram.cumulative(), histogram.total)
        yield latency


class _CallbackCounter(Collector):
    def __init__(self, name: str, documentation: str, labels: list[str], source: CounterSource) -> None:
        self._name = name
        self._documentation = documentation
        self._labels = labels
        self._source = source

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labels)
        for label_values, value in sorted(self._source().items()):
            family.add_metric(list(label_values), value)
        yield family
