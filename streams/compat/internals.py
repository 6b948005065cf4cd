"""Private names of Faust, aiokafka and prometheus-client, each behind one small function.

Nothing else in flagstream reads or replaces a private attribute of these libraries;
:func:`flagstream.streams.compat.check_versions` refuses to start on versions these
were not written and tested against.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import faust
import numpy as np
import rocksdict
from faust.streams import _current_event
from faust.types import TP, EventT, TopicT

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from flagstream.streams.delivery import Outbox


# --- Faust app and tables ---------------------------------------------------------------
def kafka_producer(app: Any) -> Any:
    """The ``aiokafka.AIOKafkaProducer`` under a Faust app's producer."""
    return app.producer._ensure_producer()


@contextmanager
def current_event(event: EventT) -> Iterator[None]:
    """Make ``event`` Faust's current event, so table writes go to its partition."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


class SharedGlobalTable(faust.GlobalTable):
    """A global table replicated from a changelog topic with a name of our choosing.

    Scorer and learner apps have different ids, so they cannot share Faust's default
    ``<app id>-<table>-changelog`` name. faust-streaming 0.15.3's partition assignor
    looks the changelog up by that default name even when ``changelog_topic`` is
    given (a KeyError that silently stalls the rebalance), so the name is overridden.
    """

    def _changelog_topic_name(self) -> str:
        return self.changelog_topic.get_topic_name()


def shared_table(app: faust.App, name: str, topic: TopicT, options: dict) -> SharedGlobalTable:
    """Register a :class:`SharedGlobalTable` the way ``app.GlobalTable`` registers its own."""
    table = SharedGlobalTable(
        app, name=name, beacon=app.tables.beacon, standby_buffer_size=1, recovery_buffer_size=1,
        is_global=True, changelog_topic=topic, **options,
    )
    return cast(SharedGlobalTable, app.tables.add(table))


def idempotent_producers() -> None:
    """Every Faust producer in this process is idempotent with ``acks=all``.

    Faust (0.15.3) turns idempotence on only for exactly-once transactions; the
    producer's extra settings are where it does so, and here for every producer.
    """
    from faust.transport.drivers import aiokafka as driver

    original = driver.Producer._settings_extra
    if getattr(original, "flagstream_idempotent", False):
        return

    def settings_extra(self: Any) -> Mapping[str, Any]:
        return {**original(self), "acks": "all", "enable_idempotence": True}

    settings_extra.flagstream_idempotent = True  # type: ignore[attr-defined]
    driver.Producer._settings_extra = settings_extra  # type: ignore[method-assign]


#: Attribute of a Faust app holding its worker consumer's ``fetch_max_wait_ms``.
_FETCH_WAIT_ATTR = "_flagstream_fetch_max_wait_ms"


def fetch_max_wait(app: faust.App, ms: int) -> None:
    """The app's worker consumer lets the broker hold a fetch request at most ``ms``.

    Faust (0.15.3) creates its aiokafka consumer with ``fetch_max_wait_ms=1500``. A
    worker's fetch requests carry every partition it reads, idle ones too (``models``,
    merchant state), and aiokafka keeps one request in flight per broker and leaves out
    of it any partition whose records still wait to be taken by the drain loop. A
    request built while the busy partitions had records waiting holds only idle ones,
    and the broker keeps it the full wait: the busy partitions are not fetched again
    until it returns. Measured as a tail of 1.5–2 s at 5,000 events/s, gone at 20 ms.
    Costs: an idle worker sends one fetch request per ``ms`` (instead of per 1.5 s).

    >>> app = faust.App("fetch-wait-example")
    >>> fetch_max_wait(app, 20)
    >>> app._flagstream_fetch_max_wait_ms
    20
    """
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    setattr(app, _FETCH_WAIT_ATTR, int(ms))
    original = AIOKafkaConsumerThread._create_worker_consumer
    if getattr(original, "flagstream_fetch_wait", False):
        return

    def create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        wait_ms = getattr(self.app, _FETCH_WAIT_ATTR, None)
        if wait_ms is not None:
            consumer._fetch_max_wait_ms = wait_ms  # read when the consumer starts its fetcher
        return consumer

    create_worker_consumer.flagstream_fetch_wait = True  # type: ignore[attr-defined]
    AIOKafkaConsumerThread._create_worker_consumer = create_worker_consumer  # type: ignore[method-assign]


def no_builtin_web_views(app: faust.App) -> None:
    """Serve none of Faust's own web views: only the routes flagstream registers answer.

    Faust (0.15.3) mounts its blueprints (``/table``, ``/router``, ``/stats``,
    ``/graph``, ``/performance``, an index at ``/``) when the web server starts; the
    ``web_*_enabled`` settings turn off all but the index. An empty set of blueprints
    leaves nothing of Faust's to answer, whatever those settings or ``APP_WEB_*``
    environment variables say.
    """
    from faust.web.base import BlueprintManager

    app.web.blueprints = BlueprintManager()


def on_replicated(table: Any, note: Callable[[Iterable[bytes]], None]) -> None:
    """Call ``note(keys)`` with the keys of every changelog batch ``table`` replicates."""
    replicate = table.apply_changelog_batch

    def replicate_and_note(batch: Iterable[Any]) -> None:
        events = list(batch)
        replicate(events)
        note(e.message.key for e in events)

    table.apply_changelog_batch = replicate_and_note


def read_row(table: Any, partition: int, key: bytes) -> bytes | None:
    """The value stored under ``key`` in ``partition`` of a RocksDB-backed table.

    ``table.get(key)`` looks in the partition of whatever event Faust holds as current
    (``RocksDBStore._get``); a batch spans partitions, so the hot path names the
    partition itself: the one its key lives on.
    """
    store = table.data
    raw = store._db_for_partition(partition).get(store._encode_key(key))
    return None if raw is None else store._decode_value(raw)


def can_write_rows(table: Any, app: Any) -> bool:
    """True when :func:`stage_rows` applies: a RocksDB-backed table, no transactions."""
    store = table.data
    return (
        hasattr(store, "_db_for_partition")
        and hasattr(store, "set_persisted_offset")
        and getattr(store, "use_rocksdict", False)
        and not app.in_transaction
        and not table.use_partitioner
    )


@dataclass
class StagedRows:
    """Table rows of one partition whose changelog records wait in an :class:`Outbox`."""

    table: Any
    partition: int
    items: list[tuple[bytes, bytes | None]]
    topic: str

    def apply(self, last_offsets: Mapping[tuple[str, int], int]) -> None:
        """Write the rows to the local store, then record the changelog offset reached.

        Call once the changelog records are acknowledged: the local store is never
        ahead of the changelog, so a crash at any point recovers a consistent table.
        """
        store = self.table.data
        batch = rocksdict.WriteBatch(raw_mode=True)
        index = store._key_index
        for key, value in self.items:
            if value is None:  # a tombstone
                batch.delete(key)
                index.pop(key, None)
                continue
            batch.put(key, value)
            index[key] = self.partition
        store._db_for_partition(self.partition).write(batch)
        last = last_offsets.get((self.topic, self.partition))
        if last is not None:
            store.set_persisted_offset(TP(self.topic, self.partition), last)


def stage_rows(table: Any, partition: int, rows: Mapping[bytes, bytes], outbox: Outbox) -> StagedRows:
    """Queue table rows' changelog records in ``outbox``; apply them after delivery.

    Together with :meth:`StagedRows.apply` this is ``table[key] = row`` for each row
    while an event of ``partition`` is current — the same store bytes, the same
    changelog records and persisted offset — with one changelog batch and one
    RocksDB write batch per partition instead of a send and a put per row.
    """
    store = table.data
    encode_key, encode_value = store._encode_key, store._encode_value
    items = [(encode_key(key), encode_value(row)) for key, row in rows.items()]
    topic = table.changelog_topic.get_topic_name()
    for key, value in items:
        outbox.add(topic, partition, key, value)
    return StagedRows(table, partition, items, topic)


def scan_rows(table: Any, partition: int, after: bytes | None,
              limit: int) -> list[tuple[bytes, bytes]]:
    """Up to ``limit`` rows of ``partition`` of a RocksDB-backed table in key order, from the
    first key after ``after`` (from the start when None); Faust's offset row is skipped."""
    store = table.data
    db = store._db_for_partition(partition)
    rows: list[tuple[bytes, bytes]] = []
    start = None if after is None else store._encode_key(after)
    for key, value in db.items(from_key=start):
        if key == store.offset_key or key == start:
            continue
        rows.append((store._decode_key(key), store._decode_value(value)))
        if len(rows) >= limit:
            break
    return rows


def stored_partitions(table: Any) -> list[int]:
    """The partitions of a RocksDB-backed table that this worker has open."""
    return sorted(table.data._dbs)


def stage_deletes(table: Any, partition: int, keys: Iterable[bytes], outbox: Outbox) -> StagedRows:
    """Queue tombstones for ``keys`` in ``outbox``; :meth:`StagedRows.apply` deletes them from
    the local store once the changelog has them (a restarted worker does not bring them back)."""
    store = table.data
    items: list[tuple[bytes, bytes | None]] = [(store._encode_key(key), None) for key in keys]
    topic = table.changelog_topic.get_topic_name()
    for key, _ in items:
        outbox.add(topic, partition, key, None)
    return StagedRows(table, partition, items, topic)


# --- the worker process ---------------------------------------------------------------------
#: Exit status of a worker the shutdown deadline stopped.
DEADLINE_EXIT = 3
#: Seconds a worker whose app crashed is given to stop before it exits (as a kill would:
#: what was not durable is read again after the restart).
CRASH_STOP_S = 5.0


class DeadlineWorker(faust.Worker):
    """A Faust worker that a stop signal ends within ``deadline_s`` whatever it is doing.

    On SIGTERM or SIGINT Faust stops the app gracefully; a watchdog thread armed by
    the same signal ends the process with status :data:`DEADLINE_EXIT` if that takes
    longer than ``deadline_s`` (a crash loop, a rebalance, a broker that is gone).
    Nothing is lost either way: what was not durable is replayed after a restart.

    It never draws Faust's terminal spinner. Faust (0.15.3) keeps the spinner at log
    levels from WARNING up and, to spin it on every log message, sets the **root logger to
    DEBUG** (its own handler stays at the level asked for): every ``log.debug`` of
    aiokafka, Faust and mode then builds a record, and the card-number masking
    (:func:`flagstream.cards.install_log_masking`) formats it — the repr of every
    produce and fetch request and response. Profiled at ``--loglevel warning`` (the
    benchmark's): the event loop was busy 96% of the time at 1,000 events/s, and
    decisions took 3–4 times the plain client's latency. Without the spinner the root
    logger keeps the level asked for.
    """

    def __init__(self, *args: Any, deadline_s: float = 30.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spinner = None  # (see above: it would put the root logger at DEBUG)
        self.deadline_s = deadline_s
        self._watchdog: threading.Timer | None = None

    def install_signal_handlers(self) -> None:
        super().install_signal_handlers()
        self.loop.add_signal_handler(signal.SIGTERM, self._stop_within_deadline, signal.SIGTERM)
        self.loop.add_signal_handler(signal.SIGINT, self._stop_within_deadline, signal.SIGINT)

    @faust.Service.task
    async def _stop_when_the_app_crashed(self) -> None:
        """A part of the app crashed (a step or a completion Kafka refused a send of): Faust
        marks the app crashed and stops consuming, but the process would live on, holding
        nothing and answering ``/healthz``. Stop it within the deadline instead, with a
        failure status (mode re-raises the crash reason), so it is restarted and reads again
        from the last commit."""
        app = cast(Any, self.app)
        await app._crashed.wait()
        log.error("the app crashed (%r): the worker stops", app.crash_reason)
        self.crash_reason = app.crash_reason
        # (its unacknowledged events will never be: stopping commits what is safe, no waiting)
        app.conf.stream_wait_empty = False
        # (a crashed agent can hold Faust's stop up: not for long, nothing depends on it)
        self._stop_within_deadline(signal.SIGTERM, min(self.deadline_s, CRASH_STOP_S))

    def _stop_within_deadline(self, signum: signal.Signals, deadline_s: float | None = None) -> None:
        if self._watchdog is None:
            deadline_s = self.deadline_s if deadline_s is None else deadline_s
            self._watchdog = threading.Timer(deadline_s, _exit_now, (deadline_s,))
            self._watchdog.daemon = True
            self._watchdog.start()
        self._schedule_shutdown(signum)


def _exit_now(deadline_s: float) -> None:
    os.write(2, f"flagstream: not stopped {deadline_s:g}s after the signal; exiting now\n".encode())
    os._exit(DEADLINE_EXIT)


# --- aiokafka ------------------------------------------------------------------------------
async def refresh_metadata(consumer: Any) -> None:
    """Ask the broker for fresh cluster metadata now (topics created a moment ago)."""
    await consumer._client.force_metadata_update()


# --- prometheus-client ---------------------------------------------------------------------
def observe_many(histogram: Any, values: np.ndarray) -> None:
    """``histogram.observe(v)`` for every value, with one bucket update per bucket.

    >>> from prometheus_client import CollectorRegistry, Histogram
    >>> h = Histogram("h", "h", buckets=(1, 2), registry=CollectorRegistry())
    >>> observe_many(h, np.array([0.5, 1.0, 1.5, 9.0]))
    >>> [s.value for s in h.collect()[0].samples if s.name == "h_bucket"]
    [2.0, 3.0, 4.0]
    """
    if len(values) == 0:
        return
    bounds = np.asarray(histogram._upper_bounds)
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    for bucket, count in zip(histogram._buckets, counts.tolist(), strict=False):
        if count:
            bucket.inc(count)
    histogram._sum.inc(float(np.sum(values)))
