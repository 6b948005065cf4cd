"""Prometheus metrics, all in one place, built against an injectable registry.

>>> from prometheus_client import CollectorRegistry
>>> m = PipelineMetrics(CollectorRegistry())
>>> m.events_in.inc(3)
>>> m.dead_letters.labels(topic="transactions.dlq", reason="invalid_json").inc()
>>> b"flagstream_events_in_total 3.0" in m.render()
True
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000)
API_STEP_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


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
        self.isolated = Counter(
            "flagstream_isolated_records",
            "Records that made processing fail, isolated and dead-lettered (internal_error)",
            registry=r,
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
        self.feedback_ignored = Counter(
            "flagstream_feedback_ignored",
            "Labels not learned although valid: repeats of a transaction's effective label",
            registry=r,
        )
        self.feedback_replaced = Counter(
            "flagstream_feedback_replaced",
            "Labels learned in place of a less trusted effective label", registry=r,
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
        self.api_step_size = Histogram(
            "flagstream_api_step_size",
            "API transactions staged per API step (FLAGSTREAM_WORKER_API)",
            buckets=API_STEP_BUCKETS, registry=r,
        )
        self.api_left_to_agent = Counter(
            "flagstream_api_left_to_agent",
            "API transactions out of turn on their partition, decided when the agent read them",
            registry=r,
        )
        #: Versions, the gate, rollbacks and snapshots.
        self.lifecycle = LifecycleMetrics(r)
        #: What the operating point estimates (the business metric, live).
        self.operating_point = OperatingPointMetrics(r)
        #: The model's own health: each feature's drift, the drift alarms, the targets.
        self.drift = DriftMetrics(r)
        self.feedback_store = FeedbackStoreMetrics(r)

    def render(self) -> bytes:
        """The metrics in Prometheus text format."""
        return generate_latest(self.registry)


class ApiCallCounts:
    """``flagstream_api_calls_total{outcome=…}``, read from the scoring API's own counts
    when the metrics are rendered (registered by the API served on a worker).

    >>> from prometheus_client import CollectorRegistry, generate_latest
    >>> registry, counts = CollectorRegistry(), {"answered": 3, "fallback": 1}
    >>> registry.register(ApiCallCounts(lambda: counts))
    >>> counts["answered"] += 1
    >>> b'flagstream_api_calls_total{outcome="answered"} 4.0' in generate_latest(registry)
    True
    """

    def __init__(self, counts: Callable[[], Mapping[str, int]]) -> None:
        self.counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "flagstream_api_calls",
            "Scoring API transactions by outcome (answered, fallback, refused, throttled, "
            "forwarded to the worker holding the account, handed to the stream path)",
            labels=["outcome"],
        )
        for outcome, n in sorted(self.counts().items()):
            family.add_metric([outcome], n)
        yield family


class OperatingPointMetrics:
    """The operating point's estimates: false-alarm share, recall, flags per day, target met.

    >>> from prometheus_client import CollectorRegistry, generate_latest
    >>> registry = CollectorRegistry()
    >>> OperatingPointMetrics(registry).show({"false_discovery_rate": 0.12, "target_met": True,
    ...                                       "recall": None, "move": "down"})
    >>> text = generate_latest(registry)
    >>> b"flagstream_false_discovery_rate 0.12" in text, b"flagstream_target_met 1.0" in text
    (True, True)
    """

    #: Estimate field → (metric name, help).
    GAUGES = {
        "false_discovery_rate": ("flagstream_false_discovery_rate",
                                 "Estimated share of flags that are legitimate, at the threshold"),
        "fdr_low": ("flagstream_false_discovery_rate_low", "Lower bound of its interval"),
        "fdr_high": ("flagstream_false_discovery_rate_high", "Upper bound of its interval"),
        "recall": ("flagstream_recall", "Estimated share of fraud flagged (mature labels)"),
        "recall_low": ("flagstream_recall_low", "Lower bound of its interval"),
        "recall_high": ("flagstream_recall_high", "Upper bound of its interval"),
        "flags_per_day": ("flagstream_flags_per_day", "Flags per day of event time at the threshold"),
        "capacity_threshold": ("flagstream_capacity_threshold",
                               "Lowest threshold within the review capacity"),
        "labels": ("flagstream_operating_point_labels", "Labels in the operating point's window"),
        "target_met": ("flagstream_target_met",
                       "1 when the operating point meets its target, 0 when not, NaN unknown"),
        "score_psi": ("flagstream_score_psi",
                      "Population stability of the last day's scores against the window before "
                      "(above 0.2: the score distribution shifted)"),
    }

    def __init__(self, registry: CollectorRegistry) -> None:
        self.gauges = {field: Gauge(name, text, registry=registry)
                       for field, (name, text) in self.GAUGES.items()}
        self.moves = Counter("flagstream_threshold_moves", "Threshold moves", ["move", "reason"],
                             registry=registry)

    def show(self, estimate: dict) -> None:
        """Export one estimate (``Estimate.as_dict()``); None is exported as NaN."""
        for field, gauge in self.gauges.items():
            value = estimate.get(field)
            gauge.set(float("nan") if value is None else float(value))
        if estimate.get("move", "hold") != "hold":
            self.moves.labels(move=estimate["move"], reason=estimate.get("reason", "")).inc()


class DriftMetrics:
    """Each feature's population stability index, and a 0/1 alarm per watched signal.

    >>> from prometheus_client import CollectorRegistry, generate_latest
    >>> registry = CollectorRegistry()
    >>> DriftMetrics(registry).show({"amount": 0.31, "is_night": 0.01}, score_psi=0.05, alert=0.2)
    >>> text = generate_latest(registry)
    >>> b'flagstream_feature_psi{feature="amount"} 0.31' in text
    True
    >>> b'flagstream_drift_alert{signal="features"} 1.0' in text
    True
    >>> b'flagstream_drift_alert{signal="score"} 0.0' in text
    True
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.feature_psi = Gauge(
            "flagstream_feature_psi",
            "Population stability of a feature over the last day against the fortnight before "
            "(bins: the reference's deciles)", ["feature"], registry=registry)
        self.alert = Gauge(
            "flagstream_drift_alert",
            "1 when a signal's population stability is above FLAGSTREAM_DRIFT_PSI_ALERT, 0 when "
            "not, NaN unknown (signal: score, features)", ["signal"], registry=registry)
        self.alert_threshold = Gauge(
            "flagstream_drift_psi_alert", "The population stability above which drift alarms",
            registry=registry)
        #: What the business metric is held to (for dashboards: target lines beside the estimates).
        self.target_fdr = Gauge(
            "flagstream_target_false_discovery_rate",
            "The operating point's false-discovery-rate target (NaN: a recall target)", registry=registry)
        self.target_recall = Gauge(
            "flagstream_target_recall", "The operating point's recall target (NaN: an FDR target)",
            registry=registry)
        self.capacity = Gauge(
            "flagstream_review_capacity_per_day", "Flags people can review per event day (NaN: no limit)",
            registry=registry)

    def targets(self, fdr: float | None, recall: float | None, capacity: float | None) -> None:
        """Export the targets (None: not set)."""
        for gauge, value in ((self.target_fdr, fdr), (self.target_recall, recall),
                             (self.capacity, capacity)):
            gauge.set(float("nan") if value is None else float(value))

    def show(self, features: dict[str, float] | None, score_psi: float | None,
             alert: float) -> None:
        """Export the features' PSI (None: not enough traffic yet) and the alarms."""
        self.alert_threshold.set(alert)
        for name, psi in (features or {}).items():
            self.feature_psi.labels(feature=name).set(psi)
        worst = max(features.values()) if features else None
        signals: tuple[tuple[str, float | None], ...] = (("score", score_psi), ("features", worst))
        for signal, value in signals:
            self.alert.labels(signal=signal).set(
                float("nan") if value is None else float(value > alert))


class LifecycleMetrics:
    """Counters and gauges of versions, the gate, rollbacks and snapshots (one per worker).

    Parameters
    ----------
    registry
        The Prometheus registry to register on (the worker's ``PipelineMetrics.registry``).

    Examples
    --------
    >>> from prometheus_client import CollectorRegistry, generate_latest
    >>> registry = CollectorRegistry()
    >>> LifecycleMetrics(registry).rollbacks.labels(by="drift").inc()
    >>> b'flagstream_model_rollbacks_total{by="drift"} 1.0' in generate_latest(registry)
    True
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.swaps = Counter("flagstream_model_swaps", "Hot swaps to another model version",
                             registry=r)
        self.refused = Counter(
            "flagstream_model_records_refused",
            "Model records or snapshots refused (unsigned, bad signature, corrupt, malformed)",
            ["source", "reason"], registry=r,
        )
        self.promotions = Counter(
            "flagstream_model_promotions", "Champion promotions applied", ["by"], registry=r
        )
        self.rollbacks = Counter(
            "flagstream_model_rollbacks", "Champion rollbacks applied", ["by"], registry=r
        )
        self.gate_refusals = Counter(
            "flagstream_gate_refusals", "Challengers refused promotion by the gate", registry=r
        )
        self.drift_alarms = Counter(
            "flagstream_drift_alarms", "Rises in the champion's error detected by ADWIN", registry=r
        )
        self.snapshots = Counter(
            "flagstream_learner_snapshots", "Learner snapshots written to disk", registry=r
        )
        self.replayed = Counter(
            "flagstream_feedback_replayed",
            "Feedback skipped after a restart because it was already learned", registry=r,
        )
        self.recorded = Counter(
            "flagstream_decisions_recorded", "Decisions stored by the learner for the feedback join",
            registry=r,
        )
        self.loss = Gauge(
            "flagstream_prequential_loss", "Mean gate loss on labels (champion and challengers)",
            ["model"], registry=r,
        )
        self.gate_labels = Gauge(
            "flagstream_gate_labels", "Labels each model has been judged on", ["model"], registry=r
        )


class FeedbackStoreMetrics:
    """The learner's stores and its waiting labels: sizes, waits, pruning (one per learner).

    Examples
    --------
    >>> from prometheus_client import CollectorRegistry, generate_latest
    >>> registry = CollectorRegistry()
    >>> FeedbackStoreMetrics(registry).waited.labels(outcome="learned").inc()
    >>> b'flagstream_feedback_waited_total{outcome="learned"} 1.0' in generate_latest(registry)
    True
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.decisions = Gauge(
            "flagstream_decisions_stored",
            "Decisions in the learner's decisions table (counted by the retention sweep)", registry=r,
        )
        self.labels = Gauge(
            "flagstream_labels_stored",
            "Effective labels in the learner's labels table (counted by the retention sweep)",
            registry=r,
        )
        self.waiting = Gauge(
            "flagstream_feedback_waiting", "Labels waiting for their decision to be recorded",
            registry=r,
        )
        self.waited = Counter(
            "flagstream_feedback_waited",
            "Labels that waited for their decision, by outcome (learned: joined and judged; "
            "expired: decision_never_arrived; full: feedback_wait_full; lost: unreadable after a restore)",
            ["outcome"], registry=r,
        )
        self.pruned = Counter(
            "flagstream_store_pruned", "Rows deleted from the learner's tables by retention",
            ["table"], registry=r,
        )
