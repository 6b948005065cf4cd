"""What a demo run achieved, live and in a backtest of the same events with the same policy.

The live figures come from the run's own ``scores`` topic joined to the stream's ground
truth; the backtest replays the same events (up to the last one the run decided)
through :class:`~flagstream.evaluation.backtest.Backtest` with the live policy and the
run's settings. Both are summarised by :func:`figures`, over the whole run and over its
second half (by event time), so the two can be compared number for number.

>>> import numpy as np
>>> ts = np.array([0, 1, 2, 3]) * 43_200_000          # four transactions over 1.5 event days
>>> f = figures(ts, np.array([1, 0, 1, 0]), np.array([True, True, False, False]),
...             np.array([0.5, 0.5, 0.4, 0.4]), target_fdr=0.5, capacity=10)
>>> f["all"]["recall"], f["all"]["false_discovery_rate"], f["second_half"]["threshold_min"]
(0.5, 0.5, 0.4)
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition

from flagstream.codec import loads
from flagstream.evaluation.backtest import Backtest, BacktestConfig
from flagstream.features.layout import DAY_MS
from flagstream.simulation.reviewers import Truth
from flagstream.streams.config import Settings
from flagstream.streams.topics import SCORES


def summary(ts_ms: np.ndarray, labels: np.ndarray, flagged: np.ndarray, thresholds: np.ndarray,
            target_fdr: float, capacity: float,
            declined: np.ndarray | None = None) -> dict[str, Any]:
    """Recall, false-discovery rate, flags per event day (mean, and the busiest day), threshold
    range, target met, and the automated share (decisions made without a person: not sent to
    review)."""
    if len(ts_ms) == 0:
        return {"events": 0, "recall": None, "false_discovery_rate": None, "flags_per_day": None,
                "threshold_min": None, "threshold_max": None, "target_met": None,
                "declined": None, "automated_share": None, "automated_share_of_flags": None,
                "reviews_per_day": None, "reviews_busiest_day": None}
    y, f = labels.astype(bool), flagged.astype(bool)
    d = np.zeros_like(f) if declined is None else declined.astype(bool) & f
    reviews = f & ~d
    days = max((int(ts_ms.max()) - int(ts_ms.min())) / DAY_MS, 1 / 24)
    caught, n_flagged, frauds = int((f & y).sum()), int(f.sum()), int(y.sum())
    recall = caught / frauds if frauds else None
    fdr = (n_flagged - caught) / n_flagged if n_flagged else None
    per_day = n_flagged / days
    reviews_per_day = int(reviews.sum()) / days
    met = fdr is not None and fdr <= target_fdr and reviews_per_day <= capacity
    return {"events": int(len(ts_ms)), "frauds": frauds, "flagged": n_flagged, "recall": recall,
            "false_discovery_rate": fdr, "flags_per_day": round(per_day, 2),
            "threshold_min": float(thresholds.min()), "threshold_max": float(thresholds.max()),
            "target_met": met, "declined": int(d.sum()),
            "automated_share": 1 - int(reviews.sum()) / len(ts_ms),
            "automated_share_of_flags": int(d.sum()) / n_flagged if n_flagged else None,
            "reviews_per_day": round(reviews_per_day, 2),
            "reviews_busiest_day": int(np.bincount((ts_ms[reviews] // DAY_MS).astype(np.int64)).max())
            if reviews.any() else 0}


def figures(ts_ms: np.ndarray, labels: np.ndarray, flagged: np.ndarray, thresholds: np.ndarray,
            target_fdr: float, capacity: float,
            declined: np.ndarray | None = None) -> dict[str, dict[str, Any]]:
    """:func:`summary` over the whole span and over its second half (event time)."""
    declined = np.zeros(len(ts_ms), dtype=bool) if declined is None else declined
    if len(ts_ms) == 0:
        empty = summary(ts_ms, labels, flagged, thresholds, target_fdr, capacity)
        return {"all": empty, "second_half": empty}
    middle = (int(ts_ms.min()) + int(ts_ms.max())) / 2
    late = ts_ms >= middle
    return {
        "all": summary(ts_ms, labels, flagged, thresholds, target_fdr, capacity, declined),
        "second_half": summary(ts_ms[late], labels[late], flagged[late], thresholds[late],
                               target_fdr, capacity, declined[late]),
    }


async def read_decisions(settings: Settings) -> tuple[dict[str, tuple[int, bool, float, bool]], int]:
    """Every decision on the run's ``scores`` topic: id → (event time ms, flagged, threshold,
    declined); a repeated decision (after a restart) counts once, as first made. Also the
    event time every partition has decided up to (the minimum over partitions of the newest
    decision): a partition that lags when the run stops leaves later events undecided."""
    name = settings.topic(SCORES)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.broker, enable_auto_commit=False,
                                **settings.kafka_security())
    await consumer.start()
    out: dict[str, tuple[int, bool, float, bool]] = {}
    newest: dict[int, int] = {}
    try:
        partitions = sorted(consumer.partitions_for_topic(name) or range(settings.partitions))
        tps = [TopicPartition(name, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            for tp, records in (await consumer.getmany(timeout_ms=1_000, max_records=20_000)).items():
                for r in records:
                    d = loads(r.value)
                    if d.get("fallback") is True:  # the scoring API's (not run by the demo)
                        continue
                    newest[tp.partition] = max(newest.get(tp.partition, 0), int(d["event_time_ms"]))
                    out.setdefault(d["transaction_id"], (int(d["event_time_ms"]),
                                                          d["decision"] != "approve",
                                                          float(d["threshold"]),
                                                          d["decision"] == "decline"))
    finally:
        await consumer.stop()
    return out, min(newest.values(), default=0)


def live(settings: Settings, stream: Path, capacity: float) -> tuple[dict[str, Any], int]:
    """The run's figures from its ``scores`` topic, up to the event time every partition has
    decided; also that event time (the backtest is cut there too)."""
    decided, cut_ms = asyncio.run(read_decisions(settings))
    ids = [t for t, d in decided.items() if d[0] <= cut_ms]
    truth = Truth.load(str(stream)).lookup(ids)
    known = truth >= 0
    rows = np.array([decided[t] for t in ids], dtype=np.float64).reshape(-1, 4)[known]
    ts, flagged, thresholds = rows[:, 0].astype(np.int64), rows[:, 1] > 0, rows[:, 2]
    out = figures(ts, truth[known], flagged, thresholds,
                  settings.target_false_discovery_rate, capacity, rows[:, 3] > 0)
    return out, cut_ms


def backtest(settings: Settings, stream: Path, capacity: float, last_ms: int,
             review_delay_hours: float, chargeback_delay_days: float) -> dict[str, Any]:
    """The same events through the backtest, with the same policy and settings."""
    first = datetime.fromtimestamp(0, UTC).date().isoformat()
    last = datetime.fromtimestamp(last_ms / 1000, UTC).date().isoformat()
    config = BacktestConfig(
        policy="live", threshold=settings.threshold, review_capacity_per_day=int(capacity),
        target_false_discovery_rate=settings.target_false_discovery_rate,
        review_delay_hours=review_delay_hours, chargeback_delay_days=chargeback_delay_days,
        test_start=first, test_end=last, protocol="all",
    )
    run = Backtest(config, settings)  # the worker's settings, not this process's environment
    run.run(str(stream))
    ts, labels, flagged, thresholds = run.decided_arrays()
    upto = ts <= last_ms
    out: dict[str, Any] = figures(ts[upto], labels[upto], flagged[upto], thresholds[upto],
                                  settings.target_false_discovery_rate, capacity,
                                  run.decided_declined[upto])
    changes = run.lifecycle.changes if run.lifecycle is not None else []
    out["promotions"] = sum(c["action"] == "promote" for c in changes)
    out["rollbacks"] = sum(c["action"] == "rollback" for c in changes)
    return out
