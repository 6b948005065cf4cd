"""Hot-swapping to the champion the registry names, and the model-lifecycle metrics.

Every worker replicates the compacted ``models`` topic (a global table). The seat
record says who is champion; the champion record carries that lineage's newest
version (see :mod:`scoring.registry`). A worker swaps when the seat changes (a
promotion or a rollback, even to an older version) or when the champion record
under the same seat is newer than what it holds: within one batch, no restart.
A record that fails its integrity check is refused, logged and counted once, and
the worker keeps scoring with the version it has.
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import Counter, Gauge

from scoring.handle import model_from_state, parse_version
from scoring.registry import CHAMPION, SEAT, choose_champion
from scoring.snapshots import IntegrityError, hmac_key, unseal
from streams.app import Pipeline

log = logging.getLogger(__name__)


class LifecycleMetrics:
    """Counters and gauges of versions, the gate, rollbacks and snapshots (one per worker).

    Parameters
    ----------
    registry
        The Prometheus registry to register on (the worker's ``p.metrics.registry``).

    Examples
    --------
    >>> from prometheus_client import CollectorRegistry, generate_latest
    >>> registry = CollectorRegistry()
    >>> LifecycleMetrics(registry).rollbacks.labels(by="drift").inc()
    >>> b'flagstream_model_rollbacks_total{by="drift"} 1.0' in generate_latest(registry)
    True
    """

    def __init__(self, registry: Any) -> None:
        r = registry
        self.swaps = Counter("flagstream_model_swaps", "Hot swaps to another model version",
                             registry=r)
        self.refused = Counter(
            "flagstream_model_records_refused",
            "Model records or snapshots refused by the integrity check", ["source"], registry=r,
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


def lifecycle_metrics(p: Pipeline) -> LifecycleMetrics:
    """The pipeline's lifecycle metrics, registered on ``p.metrics.registry`` once."""
    found = p.__dict__.get("_lifecycle_metrics")
    if found is None:
        found = p.__dict__["_lifecycle_metrics"] = LifecycleMetrics(p.metrics.registry)
    return found


def read_record(p: Pipeline, key: bytes) -> dict | None:
    """A verified record from the models table; None if absent or refused (logged once)."""
    raw = p.tables["models"].get(key)
    if raw is None:
        return None
    cache = p.__dict__.setdefault("_sealed_cache", {})
    hit = cache.get(key)
    if hit is not None and hit[0] == raw:
        return hit[1]
    if "_hmac_key" not in p.__dict__:
        p.__dict__["_hmac_key"] = hmac_key()
    try:
        payload = unseal(raw, p.__dict__["_hmac_key"], what=f"models[{key.decode(errors='replace')}]")
    except IntegrityError as exc:
        log.error("refusing %s; keeping the previous good version", exc)
        lifecycle_metrics(p).refused.labels(source="models_topic").inc()
        payload = None
    cache[key] = (raw, payload)
    return payload


def sync_model(p: Pipeline) -> bool:
    """Swap ``p.handle`` to the champion the registry names, if that is a change."""
    seat = read_record(p, SEAT)
    chosen = choose_champion(seat, read_record(p, CHAMPION))
    if chosen is None:
        return False
    h = p.handle
    epoch, seat_id = (seat["epoch"], seat["id"]) if seat else (0, "")
    if (epoch, seat_id) != (h.epoch, h.seat):
        if epoch < h.epoch:  # our own newer seat change, not replicated yet
            return False
    elif chosen["sequence"] <= h.sequence:
        return False
    try:
        model = model_from_state(chosen["state"])
        lineage = chosen.get("lineage") or parse_version(chosen["version"])[0]
    except (KeyError, TypeError, ValueError) as exc:
        key = (chosen.get("version"), epoch, seat_id)
        if p.__dict__.get("_unloadable") != key:
            p.__dict__["_unloadable"] = key
            log.error("cannot load model %s: %s; keeping %s", chosen.get("version"), exc, h.version)
            lifecycle_metrics(p).refused.labels(source="unloadable").inc()
        return False
    h.adopt(model, lineage, int(chosen["sequence"]), epoch, seat_id)
    p.metrics.model_version.set(h.sequence)
    lifecycle_metrics(p).swaps.inc()
    log.info("model now %s (seat epoch %d)", h.version, epoch)
    return True


def register_model_sync(p: Pipeline) -> None:
    lifecycle_metrics(p)
    # Faust applies a global table's changelog in buffers of ``recovery_buffer_size``
    # records (default 1000) even after recovery: the registry must apply every record
    # as it arrives, or a promotion would wait for 999 more records.
    p.tables["models"].recovery_buffer_size = 1

    @p.app.timer(0.5)
    async def model_sync() -> None:
        sync_model(p)

    _ = model_sync
