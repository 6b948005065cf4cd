"""The retention sweep keeps pace with a learner that records decisions fast."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from flagstream.codec import dumps
from flagstream.sinks.metrics import FeedbackStoreMetrics
from flagstream.streams import retention


class Deleted:
    def apply(self, last):
        pass


def test_a_table_too_large_for_one_call_a_minute_is_swept_as_often_as_its_size_needs(monkeypatch):
    """30,000 decisions on one partition, a third of them expired, take six calls a pass
    (5,000 rows each) and leave 20,000: with a 400 s retention a pass over them must take at
    most 100 s, four calls, so calls come 25 s apart, not 60 (at one a minute the sweep could
    delete ~80 rows a second a partition at most, whatever the rate decisions came at)."""
    tables = {"decisions": {0: {}}, "labels": {0: {}}}
    monkeypatch.setattr(retention, "stored_partitions", lambda table: list(table))
    monkeypatch.setattr(retention, "scan_rows", lambda table, part, after, n: [
        (k, v) for k, v in sorted(table[part].items()) if after is None or k > after][:n])
    monkeypatch.setattr(retention, "read_row", lambda table, part, key: table[part].get(key))

    def delete(table, part, keys, outbox):
        for key in keys:
            del table[part][key]
        return Deleted()

    monkeypatch.setattr(retention, "stage_deletes", delete)
    now_ms = 1_000_000_000
    sweep = retention.RetentionSweep(tables["decisions"], tables["labels"], 400_000,
                                     FeedbackStoreMetrics(CollectorRegistry()), clock_ms=lambda: now_ms)
    assert sweep.interval_s == 60.0, "an empty table: the longest interval"
    for i in range(30_000):
        at = now_ms - (500_000 if i % 3 == 0 else 1_000)
        tables["decisions"][0][f"t-{i:05d}".encode()] = dumps({"scored_at_ms": at})
    deleted = sum(asyncio.run(sweep.run(None))["decisions"] for _ in range(7))
    assert deleted == 10_000 and len(tables["decisions"][0]) == 20_000
    assert sweep.interval_s == 25.0
