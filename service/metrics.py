"""Prometheus metrics, one registry per app so that tests can build many apps."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)


class Metrics:
    """The service's counters, histograms and gauges."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "liverseg_requests", "HTTP requests by route and status code.", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "liverseg_request_seconds", "HTTP request latency by route.", ["route"], buckets=STAGE_BUCKETS,
            registry=self.registry,
        )
        self.stage = Histogram(
            "liverseg_stage_seconds", "Seconds per pipeline stage (decode, preprocess, inference, ...).", ["stage"],
            buckets=STAGE_BUCKETS, registry=self.registry,
        )
        self.queue_depth = Gauge("liverseg_queue_depth", "Segmentations waiting for the worker.", registry=self.registry)
        self.jobs = Gauge("liverseg_jobs", "Asynchronous jobs by state.", ["state"], registry=self.registry)
        self.gpu_memory = Gauge(
            "liverseg_gpu_memory_bytes", "CUDA memory of the worker's device.", ["kind"], registry=self.registry
        )

    def observe_stages(self, timings_s: dict[str, float]) -> None:
        for stage, seconds in timings_s.items():
            self.stage.labels(stage).observe(seconds)
