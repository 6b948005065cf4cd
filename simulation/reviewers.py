"""``flagstream reviewers FILE``: simulated reviewers and late labels, answering on ``feedback``.

Labels come from the recorded FILE's ground truth (``transaction_id`` → ``is_fraud``):

* **review**: a flagged decision (``review`` topic) is answered ``review_delay_s`` later
  (wall seconds; event seconds with ``speedup``), at most ``capacity_per_day`` per day of
  event time (the rest expire unanswered), wrongly with probability ``error_rate``;
* **chargeback**: a fraud *not* flagged (decision on ``scores`` other than ``review``) is
  reported ``chargeback_delay_days`` of event time later, measured against the newest
  event time seen on ``scores`` (so accelerated replays work);
* **auto** (optional): unflagged legit transactions are labelled after the same delay.

Feedback is keyed by transaction id; ``decided_at`` is the event time of the answer.
Only pending answers are kept (memory is bounded by the delays), in memory: a restarted
simulator loses those it had not sent (its consumer offsets are committed as it reads).
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import logging
import random
import signal
import sys
import time
from array import array
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from flagstream.codec import JSONDecodeError, dumps, loads
from flagstream.errors import InvalidRecord
from flagstream.features.layout import DAY_MS
from flagstream.simulation.simulator import read_stream
from flagstream.streams.config import Settings
from flagstream.streams.kafka_access import require_access
from flagstream.streams.schema import parse_timestamp_ms
from flagstream.streams.topics import FEEDBACK, REVIEW, SCORES, create_topics

log = logging.getLogger(__name__)


class Truth:
    """Ground truth by transaction id, kept compact: sorted 64-bit id hashes and 0/1 labels.

    Hashes are Python's ``hash`` of the id (salted per process), so a ``Truth`` is only
    meaningful in the process that built it; ~9 bytes per transaction.

    >>> truth = Truth.from_records([{"transaction_id": "t-1", "is_fraud": 1},
    ...                             {"transaction_id": "t-2", "is_fraud": 0}])
    >>> truth.get("t-1"), truth.get("t-2"), truth.get("t-3"), len(truth), truth.n_fraud
    (1, 0, None, 2, 1)
    >>> truth.lookup(["t-2", "t-9", "t-1"]).tolist()
    [0, -1, 1]
    """

    def __init__(self, hashes: np.ndarray, labels: np.ndarray) -> None:
        order = np.argsort(hashes, kind="stable")
        self._hashes = np.asarray(hashes, np.int64)[order]
        self._labels = np.asarray(labels, np.int8)[order]

    @classmethod
    def from_records(cls, records: Iterable[dict[str, Any]]) -> Truth:
        """Truth from transaction dicts; records without an id or a 0/1 ``is_fraud`` are ignored."""
        hashes, labels = array("q"), array("b")
        for record in records:
            tx, label = record.get("transaction_id"), record.get("is_fraud")
            if isinstance(tx, str) and label in (0, 1):
                hashes.append(hash(tx))
                labels.append(int(label))
        return cls(np.frombuffer(hashes, np.int64), np.frombuffer(labels, np.int8))

    @classmethod
    def load(cls, path: str, on_error: str = "skip") -> Truth:
        """Truth from a recorded stream file (JSON Lines, optionally gzip)."""
        reader = read_stream(path, on_error=on_error)
        truth = cls.from_records(record for _, record in reader)
        if reader.malformed:
            log.warning("%s: %d malformed lines skipped", path, len(reader.malformed))
        return truth

    def __len__(self) -> int:
        return len(self._hashes)

    @property
    def n_fraud(self) -> int:
        return int(self._labels.sum())

    def lookup(self, transaction_ids: Sequence[str]) -> np.ndarray:
        """Labels of many ids at once: 0, 1, or -1 when unknown."""
        if not len(self._hashes) or not transaction_ids:
            return np.full(len(transaction_ids), -1, np.int8)
        keys = np.fromiter(map(hash, transaction_ids), np.int64, len(transaction_ids))
        pos = np.minimum(np.searchsorted(self._hashes, keys), len(self._hashes) - 1)
        return np.where(self._hashes[pos] == keys, self._labels[pos], -1).astype(np.int8)

    def get(self, transaction_id: str) -> int | None:
        label = int(self.lookup([transaction_id])[0])
        return None if label < 0 else label


@dataclass(frozen=True)
class ReviewerConfig:
    """How the simulated reviewers and late labels behave (see the module doc).

    >>> ReviewerConfig(review_delay_s=3600, speedup=3600).review_wall_delay_s
    1.0
    """

    reviewer: str = "simulated"
    review_delay_s: float = 0.0
    capacity_per_day: int | None = None
    error_rate: float = 0.0
    chargeback_delay_days: float = 7.0
    chargebacks: bool = True
    auto_legit: bool = False
    speedup: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.review_delay_s < 0 or self.chargeback_delay_days < 0:
            raise ValueError("delays must be >= 0")
        if self.capacity_per_day is not None and self.capacity_per_day < 0:
            raise ValueError("capacity_per_day must be >= 0")
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError("error_rate must be in [0, 1]")
        if self.speedup is not None and not self.speedup > 0:
            raise ValueError("speedup must be > 0")

    @property
    def review_wall_delay_s(self) -> float:
        return self.review_delay_s / (self.speedup or 1.0)


@dataclass
class ReviewerCounts:
    """What the reviewers saw and answered."""

    flagged: int = 0  #: flagged decisions received on ``review``
    answered: int = 0  #: review answers sent
    wrong: int = 0  #: answers given with the wrong label (``error_rate``)
    expired: int = 0  #: flagged beyond the day's capacity, never answered
    decisions: int = 0  #: decisions received on ``scores``
    chargebacks: int = 0  #: chargebacks sent
    auto_legit: int = 0  #: automatic legit labels sent
    unknown: int = 0  #: transactions without ground truth
    duplicates: int = 0  #: decisions for a transaction already pending
    invalid: int = 0  #: undecodable records


def _event_ms(decision: dict) -> int | None:
    value = decision.get("event_time_ms")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return parse_timestamp_ms(decision.get("event_time"))
    except InvalidRecord:
        return None


def _decode(record: Any) -> dict | None:
    try:
        value = loads(record.value)
    except (JSONDecodeError, TypeError):
        return None
    return value if isinstance(value, dict) else None


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


class ReviewDesk:
    """The reviewers' logic without Kafka: decisions in, feedback records out when due.

    ``now`` is a monotonic wall clock in seconds; event time comes from the decisions.

    >>> truth = Truth.from_records([{"transaction_id": t, "is_fraud": f}
    ...                             for t, f in [("t-1", 1), ("t-2", 0), ("t-3", 1)]])
    >>> desk = ReviewDesk(truth, ReviewerConfig(review_delay_s=10, chargeback_delay_days=7))
    >>> day0 = 1_522_540_800_000
    >>> desk.on_flagged([{"transaction_id": "t-1", "event_time_ms": day0}], now=100.0)
    >>> desk.due(now=105.0)
    []
    >>> [(f["label"], f["source"], f["decided_at"]) for f in desk.due(now=110.0)]
    [('fraud', 'review', '2018-04-01T00:00:10Z')]
    >>> desk.on_scores([{"transaction_id": "t-3", "decision": "approve", "event_time_ms": day0}])
    >>> desk.due(now=200.0)  # event time has not moved on yet
    []
    >>> desk.on_scores([{"transaction_id": "t-2", "decision": "approve",
    ...                  "event_time_ms": day0 + 7 * 86_400_000}])
    >>> [(f["transaction_id"], f["label"], f["source"]) for f in desk.due(now=200.0)]
    [('t-3', 'fraud', 'chargeback')]
    >>> desk.counts.answered, desk.counts.chargebacks
    (1, 1)
    """

    def __init__(self, truth: Truth, config: ReviewerConfig | None = None) -> None:
        self.truth = truth
        self.config = config or ReviewerConfig()
        self.counts = ReviewerCounts()
        self.watermark_ms: int | None = None
        self._rng = random.Random(self.config.seed)
        self._reviews: deque[tuple[float, str, int, int]] = deque()  # (due, tx, label, decided)
        self._late: list[tuple[int, str, int]] = []  # heap of (due event ms, tx, label)
        self._pending: set[str] = set()
        self._used: dict[int, int] = {}  # answers accepted per event day

    def pending(self) -> dict[str, int]:
        """Answers waiting: reviews (wall-clock delay) and late labels (event-time delay)."""
        return {"pending_reviews": len(self._reviews), "pending_late": len(self._late)}

    def _known(self, decisions: Sequence[dict]) -> list[tuple[int, str, int]]:
        """(index, id, true label) of new transactions with ground truth; counts the rest."""
        ids = [d.get("transaction_id") for d in decisions]
        valid = [(i, tx) for i, tx in enumerate(ids) if isinstance(tx, str)]
        self.counts.invalid += len(ids) - len(valid)
        labels = self.truth.lookup([tx for _, tx in valid]).tolist()
        out: list[tuple[int, str, int]] = []
        seen: set[str] = set()
        for (i, tx), label in zip(valid, labels, strict=True):
            if label < 0:
                self.counts.unknown += 1
            elif tx in self._pending or tx in seen:
                self.counts.duplicates += 1
            else:
                seen.add(tx)
                out.append((i, tx, label))
        return out

    def on_flagged(self, decisions: Sequence[dict], now: float) -> None:
        """Flagged decisions arrived (from ``review``) at wall time ``now``."""
        cfg = self.config
        self.counts.flagged += len(decisions)
        due = now + cfg.review_wall_delay_s
        for i, tx, label in self._known(decisions):
            event_ms = _event_ms(decisions[i])
            if event_ms is None:  # no event time: count it against today
                event_ms = int(time.time() * 1000)
            if cfg.capacity_per_day is not None:
                day = event_ms // DAY_MS
                if day not in self._used:
                    self._used = {d: n for d, n in self._used.items() if d >= day - 2}
                used = self._used.setdefault(day, 0)
                if used >= cfg.capacity_per_day:
                    self.counts.expired += 1
                    continue
                self._used[day] = used + 1
            if cfg.error_rate and self._rng.random() < cfg.error_rate:
                label, self.counts.wrong = 1 - label, self.counts.wrong + 1
            decided_ms = event_ms + int(cfg.review_delay_s * 1000)
            self._reviews.append((due, tx, label, decided_ms))
            self._pending.add(tx)

    def on_scores(self, decisions: Sequence[dict]) -> None:
        """Decisions arrived (from ``scores``): queue chargebacks (and auto labels)."""
        cfg = self.config
        self.counts.decisions += len(decisions)
        unflagged, times = [], []
        for d in decisions:
            event_ms = _event_ms(d)
            if event_ms is None:
                continue
            if self.watermark_ms is None or event_ms > self.watermark_ms:
                self.watermark_ms = event_ms
            if d.get("decision") != "review":
                unflagged.append(d)
                times.append(event_ms)
        if not (cfg.chargebacks or cfg.auto_legit):
            return
        delay_ms = int(cfg.chargeback_delay_days * DAY_MS)
        for i, tx, label in self._known(unflagged):
            if (cfg.chargebacks and label) or (cfg.auto_legit and not label):
                heapq.heappush(self._late, (times[i] + delay_ms, tx, label))
                self._pending.add(tx)

    def next_due_in(self, now: float) -> float | None:
        """Seconds until the next review answer is due (None: none pending)."""
        return max(self._reviews[0][0] - now, 0.0) if self._reviews else None

    def _feedback(self, tx: str, label: int, source: str, decided_ms: int) -> dict[str, str]:
        self._pending.discard(tx)
        return {
            "transaction_id": tx,
            "label": "fraud" if label else "legit",
            "source": source,
            "reviewer": self.config.reviewer,
            "decided_at": _iso(decided_ms),
        }

    def due(self, now: float) -> list[dict[str, str]]:
        """Feedback records due at wall time ``now`` and at the current event-time watermark."""
        out = []
        while self._reviews and self._reviews[0][0] <= now:
            _, tx, label, decided_ms = self._reviews.popleft()
            out.append(self._feedback(tx, label, "review", decided_ms))
            self.counts.answered += 1
        while self._late and self.watermark_ms is not None and self._late[0][0] <= self.watermark_ms:
            due_ms, tx, label = heapq.heappop(self._late)
            out.append(self._feedback(tx, label, "chargeback" if label else "auto", due_ms))
            if label:
                self.counts.chargebacks += 1
            else:
                self.counts.auto_legit += 1
        return out


class SimulatedReviewers:
    """:class:`ReviewDesk` on Kafka: consumes ``review`` and ``scores``, answers on ``feedback``.

    Parameters
    ----------
    settings
        Broker, topic prefix (the consumer group is ``<prefix><app_id>-reviewers``), security.
    truth
        Ground truth of the replayed stream, e.g. ``Truth.load(FILE)``.
    config, **options
        A :class:`ReviewerConfig`, or its fields as keywords.

    Use ``await start()`` / ``await stop()`` around :meth:`poll`, or ``await run(stop_event)``
    for all three; :meth:`counts` can be read at any time.

    >>> from flagstream.streams.config import Settings
    >>> truth = Truth.from_records([{"transaction_id": "t-1", "is_fraud": 1}])
    >>> sim = SimulatedReviewers(Settings(topic_prefix="demo."), truth, review_delay_s=60)
    >>> sim.group_id, sim.config.review_delay_s, sim.counts()["answered"]
    ('demo.flagstream-reviewers', 60, 0)
    """

    def __init__(
        self, settings: Settings, truth: Truth, config: ReviewerConfig | None = None, **options: Any
    ) -> None:
        self.settings = settings
        self.config = config or ReviewerConfig(**options)
        self.desk = ReviewDesk(truth, self.config)
        self.group_id = f"{settings.topic_prefix}{settings.app_id}-reviewers"
        self._review_topic = settings.topic(REVIEW)
        self._feedback_topic = settings.topic(FEEDBACK)
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None

    def counts(self) -> dict[str, int]:
        """The counters, plus answers still pending."""
        return {**asdict(self.desk.counts), **self.desk.pending()}

    async def start(self) -> None:
        """Create missing topics, start the producer and the consumer group."""
        s = self.settings
        await create_topics(s)
        topics = [self._review_topic]
        if self.config.chargebacks or self.config.auto_legit:
            topics.append(s.topic(SCORES))
        self._producer = AIOKafkaProducer(bootstrap_servers=s.broker, linger_ms=5,
                                          **s.producer_options(), **s.kafka_security())
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(
            *topics, bootstrap_servers=s.broker, group_id=self.group_id,
            auto_offset_reset="earliest", **s.kafka_security(),
        )
        try:
            await self._consumer.start()
        except BaseException:
            await self._producer.stop()
            raise

    async def stop(self) -> None:
        """Stop the consumer, then the producer (flushing what was sent)."""
        consumer, producer, self._consumer, self._producer = self._consumer, self._producer, None, None
        try:
            if consumer is not None:
                await consumer.stop()
        finally:
            if producer is not None:
                await producer.stop()

    async def poll(self, timeout_ms: int = 100) -> int:
        """Read what arrived (waiting at most ``timeout_ms``), send what is due; returns sent."""
        assert self._consumer is not None and self._producer is not None, "call start() first"
        wait = self.desk.next_due_in(time.monotonic())
        if wait is not None:
            timeout_ms = min(timeout_ms, int(wait * 1000))
        batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=5000)
        for tp, records in batches.items():
            decoded = [v for v in map(_decode, records) if v is not None]
            self.desk.counts.invalid += len(records) - len(decoded)
            if tp.topic == self._review_topic:
                self.desk.on_flagged(decoded, time.monotonic())
            else:
                self.desk.on_scores(decoded)
        out = self.desk.due(time.monotonic())
        pending = [
            await self._producer.send(self._feedback_topic, dumps(f), key=f["transaction_id"].encode())
            for f in out
        ]
        if pending:
            await asyncio.gather(*pending)
        return len(out)

    async def run(self, stop_event: asyncio.Event | None = None, report_every_s: float | None = None) -> None:
        """Start, answer until ``stop_event`` is set (forever without one), stop."""
        await self.start()
        try:
            next_report = time.monotonic() + (report_every_s or 0)
            while stop_event is None or not stop_event.is_set():
                await self.poll()
                if report_every_s and time.monotonic() >= next_report:
                    log.info("reviewers: %s", self.counts())
                    next_report += report_every_s
        finally:
            await self.stop()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``flagstream reviewers`` options to ``parser``."""
    d = ReviewerConfig()
    parser.add_argument("file", help="the recorded stream that was replayed (ground truth)")
    parser.add_argument("--broker", help="bootstrap servers (default: FLAGSTREAM_BROKER)")
    parser.add_argument("--reviewer", default=d.reviewer, help="name put on the answers")
    parser.add_argument("--review-delay", dest="review_delay_s", metavar="SECONDS", type=float,
                        default=d.review_delay_s,
                        help="seconds until a flagged item is answered (event time with --speedup)")
    parser.add_argument("--speedup", type=float, help="the replay's event-time compression")
    parser.add_argument("--capacity-per-day", type=int, help="answers per day of event time")
    parser.add_argument("--error-rate", type=float, default=d.error_rate,
                        help="probability a reviewer gives the wrong label")
    parser.add_argument("--chargeback-delay-days", type=float, default=d.chargeback_delay_days,
                        help="event-time days until an unflagged fraud is charged back")
    parser.add_argument("--no-chargebacks", dest="chargebacks", action="store_false")
    parser.add_argument("--auto-legit", action="store_true",
                        help="label unflagged legit transactions 'legit' after the chargeback delay")
    parser.add_argument("--seed", type=int, default=d.seed, help="seed of reviewer errors")
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    parser.add_argument("--report-every", type=float, default=30.0, help="log counts every N s")
    parser.add_argument("--json", action="store_true", help="print the final counts as JSON")


def run(args: argparse.Namespace) -> int:
    """Load the truth, answer until SIGINT/SIGTERM or ``--duration``, print the counts."""
    try:
        settings = Settings.from_env(**({"broker": args.broker} if args.broker else {}))
        require_access(settings)
        names = {f.name for f in fields(ReviewerConfig)}
        config = ReviewerConfig(**{k: v for k, v in vars(args).items() if k in names})
        truth = Truth.load(args.file)
    except (OSError, ValueError) as exc:
        print(f"reviewers: {exc}", file=sys.stderr)
        return 2
    log.info("ground truth: %d transactions, %d frauds", len(truth), truth.n_fraud)
    reviewers = SimulatedReviewers(settings, truth, config)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if args.duration is not None:
            loop.call_later(args.duration, stop.set)
        await reviewers.run(stop, report_every_s=args.report_every)

    asyncio.run(main())
    counts = reviewers.counts()
    if args.json:
        sys.stdout.write(orjson.dumps(counts, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0
