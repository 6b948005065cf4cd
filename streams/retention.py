"""The learner's tables pruned by retention: a sweep bounded per call, deletes in the changelog.

The ``decisions`` table keeps each decision the learner recorded (for the feedback join),
the ``labels`` table each transaction's effective label
(:mod:`flagstream.streams.label_table`). Feedback on a decision scored longer ago than
``feature_retention_s`` is refused (``expired_transaction``), so neither row is needed
after that, and without pruning both tables would grow for ever.

:class:`RetentionSweep` walks each partition of both tables in key order, at most
:data:`ROWS_PER_CALL` rows per partition and table per call, one call every
``min(60 s, retention / 4)``, or more often while the largest partition is too large to
go round in a quarter of the retention at that pace (down to one call a second: a table
takes ``n / ROWS_PER_CALL`` calls a pass, and at one a minute the sweep could delete at
most ~80 rows a second a partition, so a learner recording decisions faster kept them for
ever). No call scans a whole table. It deletes

- a decision scored longer ago than the retention;
- a label row written longer ago than the retention whose decision is gone.

A label is only learned while its decision is within the retention, so its row outlives
the decision by up to one more retention: a label for a transaction whose decision was
pruned but whose label row is kept is refused ``expired_transaction`` (not left to wait),
and no transaction can ever get a second effective label (without a decision there is
nothing to learn). Later than that, nothing is left of the transaction: its label waits
like early feedback and is ``decision_never_arrived``.

Deletes are tombstones on the tables' changelogs, acknowledged by the broker before the
local store forgets the rows (:func:`flagstream.streams.compat.internals.stage_deletes`),
so a restarted worker recovers the tables without them. Each pass counts the rows it
kept: ``flagstream_decisions_stored`` and ``flagstream_labels_stored`` (as of the sweep's
latest pass), ``flagstream_store_pruned_total{table}``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from flagstream.codec import JSONDecodeError, loads
from flagstream.sinks.metrics import FeedbackStoreMetrics
from flagstream.streams.compat.internals import read_row, scan_rows, stage_deletes, stored_partitions
from flagstream.streams.delivery import Outbox

#: Rows of one table partition looked at per call.
ROWS_PER_CALL = 5_000
#: The longest time between two calls (shorter when the retention is short).
MAX_INTERVAL_S = 60.0
#: The shortest time between two calls (a table too large for the longest).
MIN_INTERVAL_S = 1.0


def paced_interval_s(largest: int, retention_s: float, rows_per_call: int = ROWS_PER_CALL) -> float:
    """Seconds between calls for a pass over a partition of ``largest`` rows to take at
    most a quarter of the retention, within ``MIN_INTERVAL_S``..``min(60 s, retention / 4)``.

    >>> paced_interval_s(2_000, 35 * 86_400)  # one call a pass: the longest interval
    60.0
    >>> paced_interval_s(60_000_000, 35 * 86_400)  # 12,000 calls a pass: still one a minute
    60.0
    >>> paced_interval_s(200_000_000, 35 * 86_400)  # 40,000 calls: ~19 s apart
    18.9
    >>> paced_interval_s(10**10, 35 * 86_400)  # more than it can: as often as allowed
    1.0
    """
    longest = min(MAX_INTERVAL_S, retention_s / 4)
    calls = max(1, -(-largest // rows_per_call))
    return max(MIN_INTERVAL_S, min(longest, retention_s / 4 / calls))


class TableSweep:
    """One table's walk: a cursor per partition and the rows it kept on its latest pass.

    ``expired(key, value)`` says whether a row goes.

    >>> sweep = TableSweep(lambda key, value: value < b"5", rows_per_call=2)
    >>> rows = {b"a": b"9", b"b": b"1", b"c": b"7"}
    >>> scan = lambda after, n: [(k, v) for k, v in sorted(rows.items()) if after is None or k > after][:n]
    >>> sweep.step(0, scan(sweep.after(0), 2)), sweep.stored()
    ([b'b'], 1)
    >>> sweep.step(0, scan(sweep.after(0), 2)), sweep.stored()  # the end: a pass is complete
    ([], 2)
    """

    def __init__(self, expired: Callable[[bytes, bytes], bool], rows_per_call: int = ROWS_PER_CALL
                 ) -> None:
        self.expired = expired
        self.rows_per_call = rows_per_call
        self.cursors: dict[int, bytes | None] = {}
        #: rows kept so far in the current pass, and in the latest complete pass
        self.counting: dict[int, int] = {}
        self.counted: dict[int, int] = {}

    def after(self, partition: int) -> bytes | None:
        """The key the next call starts after (None: from the start)."""
        return self.cursors.get(partition)

    def step(self, partition: int, rows: list[tuple[bytes, bytes]]) -> list[bytes]:
        """The keys among ``rows`` (the next slice of ``partition``) to delete."""
        gone = [key for key, value in rows if self.expired(key, value)]
        kept = self.counting.get(partition, 0) + len(rows) - len(gone)
        if len(rows) < self.rows_per_call:  # the end of the partition: the pass is complete
            self.counted[partition], self.counting[partition] = kept, 0
            self.cursors[partition] = None
        else:
            self.counting[partition] = kept
            self.cursors[partition] = rows[-1][0]
        return gone

    def largest(self) -> int:
        """Rows of the largest partition (as :meth:`stored` counts them)."""
        parts = set(self.counted) | set(self.counting)
        return max((max(self.counted.get(p, 0), self.counting.get(p, 0)) for p in parts), default=0)

    def stored(self) -> int:
        """Rows kept: the latest complete pass of each partition, or the current one if more."""
        parts = set(self.counted) | set(self.counting)
        return sum(max(self.counted.get(p, 0), self.counting.get(p, 0)) for p in parts)


def _time(value: bytes, name: str) -> float:
    try:
        row = loads(value)
    except JSONDecodeError:
        return float("-inf")
    at = row.get(name) if isinstance(row, dict) else None
    return at if isinstance(at, int | float) and not isinstance(at, bool) else float("-inf")


class RetentionSweep:
    """Prunes the learner's ``decisions`` and ``labels`` tables (see the module docstring).

    Parameters
    ----------
    decisions, labels
        The two RocksDB-backed Faust tables (bytes keys and values).
    retention_ms
        Rows older than this go (decisions by scoring time, labels by labelling time).
    metrics
        Where the sizes and the deletes are counted.
    clock_ms
        Current time in epoch ms (injectable for tests).
    """

    def __init__(self, decisions: Any, labels: Any, retention_ms: int,
                 metrics: FeedbackStoreMetrics, clock_ms: Callable[[], int] | None = None) -> None:
        self.tables = {"decisions": decisions, "labels": labels}
        self.retention_ms = retention_ms
        self.metrics = metrics
        self.clock_ms = clock_ms or (lambda: int(time.time() * 1000))
        self.interval_s = paced_interval_s(0, retention_ms / 1000)
        self.last = float("-inf")
        self.horizon = 0
        self.sweeps = {
            "decisions": TableSweep(lambda k, v: _time(v, "scored_at_ms") < self.horizon),
            "labels": TableSweep(lambda k, v: _time(v, "at_ms") < self.horizon
                                 and not self._has_decision(k)),
        }
        self._partition = 0

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.interval_s

    def _has_decision(self, key: bytes) -> bool:
        return read_row(self.tables["decisions"], self._partition, key) is not None

    async def run(self, producer: Any) -> dict[str, int]:
        """One call: a slice of every partition of both tables; returns the rows deleted."""
        self.last = time.monotonic()
        self.horizon = self.clock_ms() - self.retention_ms
        outbox = Outbox(producer)
        staged = []
        deleted = {}
        for name, table in self.tables.items():
            sweep, count = self.sweeps[name], 0
            for partition in stored_partitions(table):
                self._partition = partition
                rows = scan_rows(table, partition, sweep.after(partition), sweep.rows_per_call)
                gone = sweep.step(partition, rows)
                if gone:
                    staged.append(stage_deletes(table, partition, gone, outbox))
                    count += len(gone)
            deleted[name] = count
        if staged:
            last = outbox.last_offsets(await asyncio.gather(*await outbox.send()))
            for write in staged:
                write.apply(last)
        largest = max(sweep.largest() for sweep in self.sweeps.values())
        self.interval_s = paced_interval_s(largest, self.retention_ms / 1000)
        m = self.metrics
        m.decisions.set(self.sweeps["decisions"].stored())
        m.labels.set(self.sweeps["labels"].stored())
        for name, count in deleted.items():
            m.pruned.labels(table=name).inc(count)
        return deleted
