"""Prometheus metrics of one server; endpoint labels are route templates, never raw paths."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from tasks.engine.protocol import GenerationEngine

UNMATCHED = "unmatched"  # the endpoint label of requests no route matches (404s)


class Metrics:
    """Request, token and engine metrics in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("slmops_requests_total", "Requests by route template and status",
                                ["endpoint", "status"], registry=self.registry)
        self.tokens = Counter("slmops_tokens_total", "Tokens of finished requests", ["kind"], registry=self.registry)
        self.latency = Histogram("slmops_request_latency_seconds", "Request latency by route template",
                                 ["endpoint"], registry=self.registry)
        self.ttft = Histogram("slmops_time_to_first_token_seconds", "Time to first token", registry=self.registry)
        self.batch_size = Histogram("slmops_batch_size", "Rows per decoding step (continuous) or per static batch",
                                    buckets=(1, 2, 4, 8, 16, 32), registry=self.registry)
        self.queue_depth = Gauge("slmops_queue_depth", "Requests waiting for the engine", registry=self.registry)

    def watch_tracer(self, counts: dict[str, int]) -> None:
        """Export the tracer's ``counts`` (recorded, dropped, failed) as ``slmops_traces_total{outcome}``."""
        self.registry.register(_CountsCollector("slmops_traces", "Served requests sampled as MLflow traces, by "
                                                "outcome", "outcome", counts))

    def watch(self, engine: GenerationEngine) -> None:
        """Export ``engine``'s queue depth, batch sizes and counters."""
        self.queue_depth.set_function(engine.queue_depth)
        if hasattr(engine, "on_batch"):
            engine.on_batch = self.batch_size.observe
        self.registry.register(_EngineCollector(engine))


class _CountsCollector(Collector):
    def __init__(self, name: str, doc: str, label: str, counts: dict[str, int]):
        self.name, self.doc, self.label, self.counts = name, doc, label, counts

    def collect(self) -> Iterator:
        family = CounterMetricFamily(self.name, self.doc, labels=[self.label])
        for key, value in self.counts.items():
            family.add_metric([key], value)
        yield family


class _EngineCollector(Collector):
    def __init__(self, engine: GenerationEngine):
        self.engine = engine

    def collect(self) -> Iterator:
        stats = self.engine.stats
        yield CounterMetricFamily("slmops_engine_batches", "Batches the engine ran", value=stats.batches)
        yield CounterMetricFamily("slmops_engine_tokens", "Tokens decoded for live rows", value=stats.tokens)
        yield CounterMetricFamily("slmops_engine_cancelled", "Requests dropped because their client went away",
                                  value=stats.cancelled)
        yield GaugeMetricFamily("slmops_engine_active_rows", "Rows of the running batches", value=stats.active)
