"""The learner's label memory in a Faust table: each transaction's effective label, durable.

Rows are keyed by transaction id on the partition the id hashes to, like the feedback
and the recorded decisions (:class:`flagstream.scoring.label_ledger.LabelLedger` writes
them). A row written while a batch is judged waits in memory, where later labels of the
same batch see it; :meth:`LabelTable.write` sends the waiting rows' changelog records,
waits until the broker has them, then writes the local store. The learner calls it
after the batch's outputs are delivered and before it snapshots and acknowledges, so a
batch it acknowledged is always in the table.

A row outlives the decision it labels by at most one retention: a label that comes after
the decision's retention is refused (``expired_transaction``) before the memory is read
(or, once the decision is pruned, because its row is still here), and there is at most
one row per recorded decision. :mod:`flagstream.streams.retention` prunes both tables.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

from flagstream.codec import JSONDecodeError, dumps, loads
from flagstream.streams.compat.internals import read_row, stage_rows
from flagstream.streams.delivery import Outbox
from flagstream.streams.topics import partition_for


class LabelTable:
    """A :class:`flagstream.scoring.label_ledger.LabelMemory` on a RocksDB-backed Faust table.

    Parameters
    ----------
    table
        The ``labels`` table (keys and values are bytes).
    partitions
        Partitions of the feedback topic (rows live on their transaction's partition).
    """

    def __init__(self, table: Any, partitions: int) -> None:
        self.table = table
        self.partitions = partitions
        self.pending: dict[str, dict] = {}

    def get(self, transaction_id: str) -> dict | None:
        """The transaction's remembered label (waiting rows first), or None."""
        row = self.pending.get(transaction_id)
        if row is not None:
            return row
        home = partition_for(transaction_id, self.partitions)
        raw = read_row(self.table, home, transaction_id.encode())
        if raw is None:
            return None
        try:
            value = loads(raw)
        except JSONDecodeError:  # not a row we wrote: the ledger treats it as absent
            return None
        return value if isinstance(value, dict) else None

    def put(self, transaction_id: str, row: dict) -> None:
        """Remember a row; it is durable once :meth:`write` returns."""
        self.pending[transaction_id] = row

    async def write(self, producer: Any) -> int:
        """Changelog first (acknowledged), then the local store; returns the rows written."""
        if not self.pending:
            return 0
        rows: dict[int, dict[bytes, bytes]] = defaultdict(dict)
        for tx, row in self.pending.items():
            rows[partition_for(tx, self.partitions)][tx.encode()] = dumps(row)
        outbox = Outbox(producer)
        staged = [stage_rows(self.table, part, part_rows, outbox) for part, part_rows in rows.items()]
        last = outbox.last_offsets(await asyncio.gather(*await outbox.send()))
        for write in staged:
            write.apply(last)
        written = len(self.pending)
        self.pending.clear()
        return written
