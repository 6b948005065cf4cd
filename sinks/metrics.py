"""Prometheus metrics, all in one place, built against an injectable registry.

>>> from prometheus_client import CollectorRegistry
>>> m = PipelineMetrics(CollectorRegistry())
>>> m.events_in.inc(3)
>>> m.dead_letters.labels(topic="transactions.dlq", reason="invalid_json").inc()
>>> b"flagstream_events_in_total 3.0" in m.render()
True
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000)


class PipelineMetrics:
    """Infrastructure, model and business metrics of one worker."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events_in = Counter("flagstream_events_in", "Transaction records consumed", registry=r)
        self.decisions = Counter(
            "flagstream_decisions", "Decisions recorded on scores", ["decision"], registry=r
        )
        self.flags = Counter("flagstream_flags", "Transactions flagged for review", registry=r)
        self.dead_letters = Counter(
            "flagstream_dead_letters", "Records sent to a dead-letter topic", ["topic", "reason"],
            registry=r,
        )
        self.replayed = Counter(
            "flagstream_replayed", "Records skipped as already applied after a restart", registry=r
        )
        self.rerouted = Counter(
            "flagstream_rerouted", "Records re-sent to their account's partition", registry=r
        )
        self.latency = Histogram(
            "flagstream_processing_latency_seconds",
            "From a record's Kafka timestamp to its decision being sent",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.batch_seconds = Histogram(
            "flagstream_batch_seconds", "Time to process one batch", buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "flagstream_batch_size", "Records per processed batch", buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.scores = Histogram(
            "flagstream_score", "Champion fraud probability",
            buckets=(0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 0.99), registry=r,
        )
        self.labels = Counter(
            "flagstream_feedback_labels", "Labels learned from feedback", ["label", "source"],
            registry=r,
        )
        self.model_updates = Counter(
            "flagstream_model_updates", "Model versions published by the learner", registry=r
        )
        self.model_version = Gauge(
            "flagstream_model_sequence", "Sequence number of the champion version in use",
            registry=r,
        )
        self.threshold = Gauge("flagstream_threshold", "Current decision threshold", registry=r)
        self.tracked_accounts = Gauge(
            "flagstream_tracked_accounts", "Accounts held in memory", registry=r
        )

    def render(self) -> bytes:
        """The metrics in Prometheus text format."""
        return generate_latest(self.registry)
