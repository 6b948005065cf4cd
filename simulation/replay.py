"""``flagstream replay FILE``: produce a recorded stream to the ``transactions`` topic.

Ground truth (``is_fraud``, ``fraud_scenario``) is stripped from every record, which is
keyed by ``account_id`` and sent to the partition Kafka's default partitioner would pick.
Records go out in aiokafka batches built by hand (one :class:`BatchBuilder` per partition,
each submitted when full), so the per-record cost is a JSON decode, a dict copy, a JSON
encode and a batch append — no future per message. Unpaced, the whole file goes out as
fast as the broker takes it; ``rate`` (events/s) or ``speedup`` (event time compressed by
that factor: 3600 = one hour of event time per second) pace it instead.

Reviewers read their ground truth from the same FILE (see :mod:`flagstream.simulation.reviewers`).

>>> strip_ground_truth({"transaction_id": "t-1", "amount": 5.0, "is_fraud": 1, "fraud_scenario": 2})
{'transaction_id': 't-1', 'amount': 5.0}
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from collections import deque
from collections.abc import Iterable, Sized
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from operator import itemgetter
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from flagstream.codec import dumps
from flagstream.errors import InvalidRecord
from flagstream.extras import progress_bar
from flagstream.simulation.simulator import MalformedLineError, read_stream
from flagstream.streams.config import Settings
from flagstream.streams.kafka_access import require_access
from flagstream.streams.schema import parse_timestamp_ms
from flagstream.streams.topics import TRANSACTIONS, create_topics, partition_for

#: Fields only a recorded stream has (as in :data:`flagstream.evaluation.backtest.GROUND_TRUTH`).
GROUND_TRUTH = ("is_fraud", "fraud_scenario")
#: Largest batch built per partition, bytes (the broker accepts ~1 MiB per batch).
MAX_BATCH_BYTES = 512 * 1024
#: A paced replay sleeps only when it is this far ahead of schedule, seconds.
MIN_SLEEP_S = 0.002
#: Malformed lines kept (with their numbers) in the summary.
MAX_REPORTED_LINES = 100


def strip_ground_truth(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` without ground-truth fields (a copy when it had any; never mutated)."""
    if "is_fraud" in record or "fraud_scenario" in record:
        record = record.copy()
        for name in GROUND_TRUTH:
            record.pop(name, None)
    return record


class Pacer:
    """When each record is due, in seconds after the first one, from a rate and/or a speedup.

    With both, a record is due at the later of the two times (both limits hold).

    >>> Pacer(rate=100).due(50, None)
    0.5
    >>> p = Pacer(speedup=3600)
    >>> p.due(0, 1_522_540_800_000), p.due(1, 1_522_540_800_000 + 7_200_000)
    (0.0, 2.0)
    >>> Pacer().due(10, None) is None
    True
    """

    def __init__(self, rate: float | None = None, speedup: float | None = None) -> None:
        for name, value in (("rate", rate), ("speedup", speedup)):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0")
        self.rate = rate
        self.speedup = speedup
        self.first_ms: int | None = None

    @property
    def paced(self) -> bool:
        return self.rate is not None or self.speedup is not None

    def due(self, index: int, event_ms: int | None) -> float | None:
        """Seconds after the start when record ``index`` (0-based) with ``event_ms`` is due."""
        due = None if self.rate is None else index / self.rate
        if self.speedup is not None and event_ms is not None:
            if self.first_ms is None:
                self.first_ms = event_ms
            by_time = (event_ms - self.first_ms) / 1000.0 / self.speedup
            due = by_time if due is None else max(due, by_time)
        return due


@dataclass
class ReplayStats:
    """What a replay did; ``events_per_s`` is ``sent / seconds``."""

    sent: int = 0
    malformed: int = 0
    filtered: int = 0
    bad_timestamp: int = 0
    seconds: float = 0.0
    events_per_s: float = 0.0
    first_event: str | None = None
    last_event: str | None = None
    malformed_lines: list[tuple[int, str]] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_bound(text: str, end: bool = False) -> int:
    """Epoch ms of a ``--start``/``--end`` bound: a day (an ``--end`` day is included) or an instant.

    >>> parse_bound("2018-04-01"), parse_bound("2018-04-01", end=True)
    (1522540800000, 1522627200000)
    >>> parse_bound("2018-04-01T06:00:00Z")
    1522562400000
    """
    if len(text) == 10:
        day = date.fromisoformat(text) + timedelta(days=1 if end else 0)
        return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)
    try:
        return parse_timestamp_ms(text)
    except InvalidRecord as exc:
        raise ValueError(f"bad date {text!r}: {exc}") from None


async def _sleep(seconds: float, stop_event: asyncio.Event | None) -> None:
    """Sleep, waking early when ``stop_event`` is set."""
    if stop_event is None:
        await asyncio.sleep(seconds)
    else:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop_event.wait(), seconds)


async def _open_producer(settings: Settings, batch_bytes: int) -> tuple[AIOKafkaProducer, int]:
    """Create missing topics, start a producer, return it and the partition count.

    Right after creating a topic the broker may answer ``NotLeaderForPartition`` for a
    moment; aiokafka logs a warning and retries, nothing is lost.
    """
    await create_topics(settings)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.broker, max_batch_size=batch_bytes, linger_ms=5,
        **settings.producer_options(), **settings.kafka_security(),
    )
    await producer.start()
    try:
        return producer, len(await producer.partitions_for(settings.topic(TRANSACTIONS)))
    except BaseException:
        await producer.stop()
        raise


async def replay_records(
    settings: Settings,
    records: Iterable[dict[str, Any]],
    rate: float | None = None,
    speedup: float | None = None,
    limit: int | None = None,
    start_ms: int | None = None,
    end_ms: int | None = None,
    progress: bool = False,
    stop_event: asyncio.Event | None = None,
    stats: ReplayStats | None = None,
    batch_bytes: int = MAX_BATCH_BYTES,
) -> ReplayStats:
    """Produce ``records`` to the ``transactions`` topic, ground truth stripped.

    Parameters
    ----------
    settings
        Broker, topic prefix and security; missing topics are created.
    records
        Transaction dicts in event-time order (the caller's dicts are never mutated).
    rate, speedup
        Pacing: events per second, and/or event time compressed by this factor.
        Neither: as fast as possible.
    limit
        Stop after this many records are sent.
    start_ms, end_ms
        Send only records with ``start_ms <= timestamp < end_ms``. Records whose
        timestamp cannot be parsed are still sent (the worker dead-letters them) and
        counted in ``bad_timestamp``.
    progress
        Show a progress bar on stderr (needs the ``report`` extra).
    stop_event
        Stop early (after flushing) when set.
    stats
        Filled in as the replay goes, so a caller still has the counts if it raises.

    Returns
    -------
    ReplayStats
        Every record sent has been acknowledged by the broker.
    """
    stats = stats if stats is not None else ReplayStats()
    pacer = Pacer(rate, speedup)
    paced = pacer.paced
    needs_time = pacer.speedup is not None or start_ms is not None or end_ms is not None
    topic = settings.topic(TRANSACTIONS)
    producer, n_parts = await _open_producer(settings, batch_bytes)
    builders = [producer.create_batch() for _ in range(n_parts)]
    in_flight: deque[asyncio.Future] = deque()
    routes: dict[str, tuple[bytes, int]] = {}
    unkeyed = 0
    total = limit if limit is not None else (len(records) if isinstance(records, Sized) else None)
    closing = ExitStack()
    bar = closing.enter_context(progress_bar(total, "tx", progress))
    shown = 0
    last: dict[str, Any] | None = None

    async def submit(part: int) -> None:
        in_flight.append(await producer.send_batch(builders[part], topic, partition=part))
        builders[part] = producer.create_batch()
        while in_flight and in_flight[0].done():
            in_flight.popleft().result()  # raises a delivery error

    async def flush() -> None:
        nonlocal shown
        for part, builder in enumerate(builders):
            if builder.record_count():
                await submit(part)
        bar.update(stats.sent - shown)
        shown = stats.sent

    started = time.perf_counter()
    try:
        for record in records:
            if limit is not None and stats.sent >= limit:
                break
            event_ms = None
            if needs_time:
                try:
                    event_ms = parse_timestamp_ms(record.get("timestamp"))
                except InvalidRecord:
                    stats.bad_timestamp += 1
                else:
                    if (start_ms is not None and event_ms < start_ms) or (
                        end_ms is not None and event_ms >= end_ms
                    ):
                        stats.filtered += 1
                        continue
            if paced:
                due = pacer.due(stats.sent, event_ms)
                if due is not None:
                    wait = started + due - time.perf_counter()
                    if wait > MIN_SLEEP_S:
                        await flush()
                        await _sleep(wait, stop_event)
                if stop_event is not None and stop_event.is_set():
                    break
            if stats.first_event is None:
                stats.first_event = record.get("timestamp")
            value = dumps(strip_ground_truth(record))
            account = record.get("account_id")
            route: tuple[bytes | None, int] | None = routes.get(account) if isinstance(account, str) else None
            if route is None:
                if isinstance(account, str) and account:
                    route = routes[account] = (account.encode(), partition_for(account, n_parts))
                else:  # unkeyed: spread evenly, the worker repartitions by account
                    route, unkeyed = (None, unkeyed % n_parts), unkeyed + 1
            key, part = route
            if builders[part].append(timestamp=None, key=key, value=value) is None:
                await submit(part)
                if builders[part].append(timestamp=None, key=key, value=value) is None:
                    raise ValueError(f"record of {len(value)} bytes exceeds the batch limit")
            stats.sent += 1
            last = record
            if stats.sent & 0x3FFF == 0:
                bar.update(stats.sent - shown)
                shown = stats.sent
                if stop_event is not None and stop_event.is_set():
                    break
                await asyncio.sleep(0)  # let the sender run on long unpaced stretches
    finally:
        if last is not None:
            stats.last_event = last.get("timestamp")
        try:
            await flush()
            if in_flight:
                await asyncio.gather(*in_flight)
        finally:
            closing.close()
            await producer.stop()
            stats.seconds = round(time.perf_counter() - started, 3)
            stats.events_per_s = round(stats.sent / stats.seconds, 1) if stats.seconds else 0.0
    return stats


async def replay_file(
    settings: Settings, path: str | Path, on_error: str = "skip", **options: Any
) -> ReplayStats:
    """Replay a recorded JSON Lines file (gzip or plain) with :func:`replay_records`.

    Malformed lines are counted and listed with their line numbers; with
    ``on_error="raise"`` the first one stops the replay (what was read before it is
    still sent) and is reported in ``stats.error``.
    """
    reader = read_stream(path, on_error=on_error)
    stats = ReplayStats()
    try:
        await replay_records(settings, map(itemgetter(1), reader), stats=stats, **options)
    except MalformedLineError as exc:
        stats.error = str(exc)
        stats.malformed_lines.append((exc.line_number, exc.reason))
    finally:
        reader.close()
    stats.malformed_lines[:0] = reader.malformed[:MAX_REPORTED_LINES]
    stats.malformed = len(reader.malformed) + (stats.error is not None)
    return stats


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``flagstream replay`` options to ``parser``."""
    parser.add_argument("file", help="recorded stream: JSON Lines, optionally gzip")
    parser.add_argument("--broker", help="bootstrap servers (default: FLAGSTREAM_BROKER)")
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, help="events per second (default: as fast as possible)")
    pace.add_argument("--speedup", type=float, help="event-time compression, e.g. 3600 = 1 h/s")
    parser.add_argument("--limit", type=int, help="send at most N records")
    parser.add_argument("--start", help="first day (YYYY-MM-DD) or instant to send")
    parser.add_argument("--end", help="last day (YYYY-MM-DD, included) or instant (excluded)")
    parser.add_argument("--on-error", choices=("skip", "raise"), default="skip",
                        help="malformed lines: report and skip, or stop at the first")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--no-progress", dest="progress", action="store_false")


def run(args: argparse.Namespace) -> int:
    """Replay ``args.file``; print a summary; exit 1 when a malformed line stopped it."""
    try:
        settings = Settings.from_env(**({"broker": args.broker} if args.broker else {}))
        require_access(settings)
        start_ms = parse_bound(args.start) if args.start else None
        end_ms = parse_bound(args.end, end=True) if args.end else None
        Pacer(args.rate, args.speedup)
        if args.limit is not None and args.limit < 0:
            raise ValueError("limit must be >= 0")
    except ValueError as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return 2
    if not Path(args.file).is_file():
        print(f"replay: no such file {args.file}", file=sys.stderr)
        return 2

    async def main() -> ReplayStats:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await replay_file(
            settings, args.file, on_error=args.on_error, rate=args.rate, speedup=args.speedup,
            limit=args.limit, start_ms=start_ms, end_ms=end_ms, progress=args.progress,
            stop_event=stop,
        )

    stats = asyncio.run(main())
    for number, reason in stats.malformed_lines[:20]:
        print(f"replay: {args.file}:{number}: {reason}", file=sys.stderr)
    if stats.malformed > 20:
        print(f"replay: ... {stats.malformed - 20} more malformed lines", file=sys.stderr)
    if args.json:
        sys.stdout.write(orjson.dumps(stats.to_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(
            f"sent {stats.sent} records in {stats.seconds:.2f} s ({stats.events_per_s:,.0f}/s); "
            f"malformed {stats.malformed}, filtered {stats.filtered}"
        )
    if stats.error:
        print(f"replay: stopped: {stats.error}", file=sys.stderr)
        return 1
    return 0
