"""Prometheus metrics of one registry process, served at `/metrics`.

Requests are counted by route, method and status, with a latency histogram per route.
S3 requests and cache hits are plain integers kept by the storage and the caches,
read only when the metrics are scraped, so the hot path pays nothing for them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

# Latency buckets in seconds: hot responses take well under a millisecond, S3 round trips tens of them.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

CounterSource = Callable[[], dict[tuple[str, ...], int]]


class RegistryMetrics:
    """The registry's metrics, in a CollectorRegistry of its own."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            "stratus_http_requests", "HTTP requests answered, by route, method and status.",
            ["route", "method", "status"], registry=self.registry,
        )
        self._latency = Histogram(
            "stratus_http_request_duration_seconds", "Time to answer an HTTP request, by route.",
            ["route"], buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.s3_errors = Counter(
            "stratus_s3_errors", "S3 calls that failed after retries, by kind (throttled, unavailable).",
            ["kind"], registry=self.registry,
        )
        self._request_children: dict[tuple[str, str, int], Counter] = {}
        self._latency_children: dict[str, Histogram] = {}

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        counter = self._request_children.get(key)
        if counter is None:
            counter = self._requests.labels(route, method, str(status))
            self._request_children[key] = counter
        counter.inc()

        histogram = self._latency_children.get(route)
        if histogram is None:
            histogram = self._latency.labels(route)
            self._latency_children[route] = histogram
        histogram.observe(seconds)

    def add_counters(self, name: str, documentation: str, labels: list[str], source: CounterSource) -> None:
        """Export integers that `source` returns at scrape time as a labelled counter."""
        self.registry.register(_CallbackCounter(name, documentation, labels, source))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _CallbackCounter(Collector):
    def __init__(self, name: str, documentation: str, labels: list[str], source: CounterSource) -> None:
        self._name = name
        self._documentation = documentation
        self._labels = labels
        self._source = source

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labels)
        for label_values, value in sorted(self._source().items()):
            family.add_metric(list(label_values), value)
        yield family
