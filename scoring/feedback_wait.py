"""Early feedback waits for its decision: bounded by count and by time, never lost.

The learner joins a label to the decision it recorded from ``scores``; a label can come
first (a fast reviewer or chargeback feed, the learner lagging on ``scores``, a learner
that just restarted). Such a label is held here instead of being refused: released as
soon as its decision is recorded (:meth:`WaitingRoom.arrived`), or given up after
``wait_ms`` (``decision_never_arrived``). When ``limit`` labels already wait, a new one
is refused at once (``feedback_wait_full``). Both go to ``feedback.dlq`` with the reason.

Durability: a waiting label is a feedback record whose offset the feedback group has
acknowledged, so its bytes are kept by the feedback topic, not here. The learner
snapshot (saved before each acknowledgement) holds only the positions of the waiting
labels (:meth:`WaitingRoom.to_state`: partition, offsets, how long each waited); a
restored learner reads those records again from the topic (:meth:`WaitingRoom.load`).
The snapshot is a consistent cut: its models have learned none of the labels that
wait in it, so a label learned after waiting is learned exactly once whichever
snapshot a learner resumes from.

>>> room = WaitingRoom(limit=2, wait_ms=1_000)
>>> room.hold(b'{"transaction_id": "t-1"}', "t-1", 0, 5, now_ms=0)
True
>>> room.hold(b'{"transaction_id": "t-2"}', "t-2", 0, 6, now_ms=10)
True
>>> room.hold(b'{"transaction_id": "t-3"}', "t-3", 0, 7, now_ms=20)  # full
False
>>> room.arrived("t-2")
>>> ready, expired = room.due(now_ms=500, known=lambda tx: tx == "t-2")
>>> [w.transaction_id for w in ready], expired
(['t-2'], [])
>>> [w.transaction_id for w in room.due(now_ms=1_000, known=lambda tx: False)[1]]
['t-1']
>>> len(room)
0
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from flagstream.codec import decode_object
from flagstream.errors import InvalidRecord

#: Reason of a label whose decision was not recorded within the wait.
NEVER_ARRIVED = "decision_never_arrived"
#: Reason of a label refused because the waiting room was full.
WAIT_FULL = "feedback_wait_full"


@dataclass
class Waiting:
    """One label waiting for its decision: the feedback record and where it was read."""

    partition: int
    offset: int
    since_ms: int
    #: the transaction id (empty until :meth:`WaitingRoom.load` after a restore)
    transaction_id: str = ""
    #: the feedback record's bytes (None until loaded again after a restore)
    value: bytes | None = None


class WaitingRoom:
    """Labels waiting for their decisions, in arrival order.

    Parameters
    ----------
    limit
        The most labels that may wait at once (a new one past it is refused).
    wait_ms
        How long a label waits, counted while a learner runs (a restore resumes the
        count where its snapshot left it).
    """

    def __init__(self, limit: int, wait_ms: int) -> None:
        self.limit = limit
        self.wait_ms = wait_ms
        #: by (partition, offset), in arrival order
        self.entries: dict[tuple[int, int], Waiting] = {}
        self.by_transaction: dict[str, set[tuple[int, int]]] = {}
        #: labels whose decision may be there now (checked at the next :meth:`due`)
        self.ready: set[tuple[int, int]] = set()
        self._cursor = 0  # where the next :meth:`recheck` starts

    def __len__(self) -> int:
        return len(self.entries)

    def hold(self, value: bytes | None, transaction_id: str, partition: int, offset: int,
             now_ms: int) -> bool:
        """Hold a label; False (not held) when ``limit`` labels already wait."""
        at = (partition, offset)
        if at in self.entries:  # already waiting (read again after a restore)
            return True
        if len(self.entries) >= self.limit:
            return False
        self.entries[at] = Waiting(partition, offset, now_ms, transaction_id, value)
        self.by_transaction.setdefault(transaction_id, set()).add(at)
        return True

    def waits_for(self, transaction_id: str) -> bool:
        """Whether a label waits for this transaction's decision."""
        return transaction_id in self.by_transaction

    def arrived(self, transaction_id: str) -> None:
        """A decision for ``transaction_id`` was recorded: its labels are ready."""
        self.ready.update(self.by_transaction.get(transaction_id, ()))

    def due(self, now_ms: int, known: Callable[[str], bool]) -> tuple[list[Waiting], list[Waiting]]:
        """Take out the ready labels whose decision is ``known`` now (in arrival order) and
        those whose wait is over (oldest first). A ready label whose decision is still
        unknown keeps its place; a position not read again yet stays."""
        ready = []
        for at in sorted(self.ready, key=self._rank):
            w = self.entries.get(at)
            if w is not None and w.value is not None and known(w.transaction_id):
                ready.append(w)
        self.ready.clear()
        for w in ready:
            self._forget((w.partition, w.offset))
        expired: list[Waiting] = []
        found_late: list[Waiting] = []
        for w in self.entries.values():  # arrival order: the oldest first
            if w.since_ms + self.wait_ms > now_ms:
                break
            if w.value is not None:
                # its decision may be there without this learner having recorded it (restored
                # from the changelog): learn it rather than give it up
                (found_late if known(w.transaction_id) else expired).append(w)
        for w in expired + found_late:
            self._forget((w.partition, w.offset))
        return ready + found_late, expired

    def recheck(self, known: Callable[[str], bool], limit: int) -> int:
        """Look again, for at most ``limit`` waiting labels (taken in turn, so every one is
        looked at), whether their decision is ``known`` now; mark those ready. A decision
        can be in the table without this learner recording it (a restore from the
        changelog, a lookup that failed for a moment). Returns how many became ready."""
        if not self.entries or limit <= 0:
            return 0
        keys = list(self.entries)
        start = self._cursor % len(keys)
        turn = (keys[start:] + keys[:start])[:limit]
        self._cursor = start + len(turn)
        found = 0
        for at in turn:
            w = self.entries[at]
            if at not in self.ready and w.value is not None and known(w.transaction_id):
                self.ready.add(at)
                found += 1
        return found

    def has_ready(self) -> bool:
        """Whether a decision was recorded for a waiting label since the last :meth:`due`."""
        return bool(self.ready)

    def oldest_ms(self) -> int | None:
        """When the label waiting longest started to wait (None: none waits)."""
        for w in self.entries.values():
            return w.since_ms
        return None

    def _rank(self, at: tuple[int, int]) -> tuple[int, int, int]:
        w = self.entries.get(at)
        return (w.since_ms if w else 0, *at)

    def _forget(self, at: tuple[int, int]) -> None:
        w = self.entries.pop(at)
        keys = self.by_transaction.get(w.transaction_id)
        if keys is not None:
            keys.discard(at)
            if not keys:
                del self.by_transaction[w.transaction_id]
        self.ready.discard(at)

    # --- durability ---------------------------------------------------------------------
    def to_state(self, now_ms: int) -> dict[str, Any]:
        """Positions only (the records stay on the feedback topic): per partition the
        offsets (each as its distance from the previous one) and the seconds each waited.

        >>> room = WaitingRoom(10, 60_000)
        >>> for off in (100, 103, 104):
        ...     _ = room.hold(b"{}", "t", 2, off, now_ms=1_000)
        >>> room.to_state(now_ms=4_000)
        {'2': {'offsets': [100, 3, 1], 'waited_s': [3, 3, 3]}}
        """
        state: dict[str, dict[str, list[int]]] = {}
        for p, group in _by_partition(self.entries.values()).items():
            offsets, waited, last = [], [], 0
            for w in sorted(group, key=lambda w: w.offset):
                offsets.append(w.offset - last)
                waited.append(max(0, (now_ms - w.since_ms) // 1000))
                last = w.offset
            state[str(p)] = {"offsets": offsets, "waited_s": waited}
        return state

    def restore(self, state: Mapping[str, Any], now_ms: int) -> None:
        """Resume from :meth:`to_state`: positions whose records :meth:`load` must read again.

        >>> room = WaitingRoom(10, 60_000)
        >>> room.restore({'2': {'offsets': [100, 3], 'waited_s': [5, 1]}}, now_ms=10_000)
        >>> room.unloaded(2), room.oldest_ms()
        ([100, 103], 5000)
        """
        self.entries.clear()
        self.by_transaction.clear()
        self.ready.clear()
        restored = []
        for p, group in state.items():
            offsets, waited = list(group["offsets"]), list(group["waited_s"])
            if len(offsets) != len(waited):
                raise ValueError("waiting labels: offsets and waited_s differ in length")
            offset = 0
            for delta, seconds in zip(offsets, waited, strict=True):
                offset += int(delta)
                restored.append(Waiting(int(p), offset, now_ms - int(seconds) * 1000))
        for w in sorted(restored, key=lambda w: (w.since_ms, w.partition, w.offset)):
            self.entries[(w.partition, w.offset)] = w

    def unloaded(self, partition: int) -> list[int]:
        """Offsets of the labels in ``partition`` whose records must be read again."""
        return sorted(o for (p, o), w in self.entries.items() if p == partition and w.value is None)

    def load(self, partition: int, offset: int, value: bytes | None) -> None:
        """The record of a restored position, read again: ready to be tried."""
        w = self.entries.get((partition, offset))
        if w is None or w.value is not None:
            return
        w.value = value if value is not None else b""
        w.transaction_id = _transaction_id(w.value)
        self.by_transaction.setdefault(w.transaction_id, set()).add((partition, offset))
        self.ready.add((partition, offset))

    def drop_unloaded(self) -> list[tuple[int, int]]:
        """Forget the restored positions whose records could not be read again."""
        gone = [at for at, w in self.entries.items() if w.value is None]
        for at in gone:
            self._forget(at)
        return gone


def _by_partition(entries: Iterable[Waiting]) -> dict[int, list[Waiting]]:
    groups: dict[int, list[Waiting]] = {}
    for w in entries:
        groups.setdefault(w.partition, []).append(w)
    return groups


def _transaction_id(value: bytes) -> str:
    try:
        tx = decode_object(value, 16_384, 8).get("transaction_id")
    except InvalidRecord:
        return ""
    return tx if isinstance(tx, str) else ""
