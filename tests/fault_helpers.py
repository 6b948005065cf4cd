"""Fault-suite tools: a mixed stream of valid and hostile records, and its accounting.

The accounting reads ``scores`` and ``transactions.dlq`` back from the broker and
checks the pipeline's promise: every valid transaction has a decision, every invalid
record a dead letter, repeats only for the same transaction id (same decision),
nothing lost. It prints one line a person can read in the test log.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from flagstream.codec import dumps, loads
from flagstream.streams.config import Settings
from flagstream.streams.topics import SCORES, TRANSACTIONS, TRANSACTIONS_DLQ, partition_for

BASE_MS = 1_522_540_800_000


def hostile_records(n: int, seed: int = 7) -> list[bytes]:
    """``n`` records that must each end as one dead letter: the nasties seen in production."""
    rng = random.Random(seed)
    deep = b"[" * 1_000 + b"]" * 1_000
    shapes = [
        lambda i: b'{"transaction_id": "h-%d", "extra": ' % i + b'{"a": ' * 900 + b"1" + b"}" * 900 + b"}",
        lambda i: deep,
        lambda i: b"\xff\xfe not json %d" % i,
        lambda i: b'{"transaction_id": "h-%d"}' % i,
        lambda i: dumps({"transaction_id": f"h-{i}", "account_id": "c-1", "merchant_id": "m-1",
                         "amount": "NaN", "timestamp": BASE_MS}),
        lambda i: b'{"transaction_id": "h-%d", "account_id": "c-1", "merchant_id": "m-1", '
                  b'"amount": 1e999, "timestamp": 0}' % i,
        lambda i: dumps({"transaction_id": f"h-{i}", "account_id": "c-1", "merchant_id": "m-1",
                         "amount": 10.0, "timestamp": "9999-12-31T23:59:59+14:00"}),
        lambda i: b"x" * 20_000 + b"4111 1111 1111 1111",  # over the size limit, with a card number
        lambda i: b"",
        lambda i: dumps([i, "not an object"]),
    ]
    return [shapes[rng.randrange(len(shapes))](i) for i in range(n)]


def valid_records(n: int, accounts: int = 500, seed: int = 3) -> list[tuple[str, bytes]]:
    """``n`` valid transactions as ``(account_id, value)``; ids ``v-0`` .. ``v-{n-1}``."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        account = f"c-{rng.randrange(accounts)}"
        out.append((account, dumps({
            "transaction_id": f"v-{i}", "account_id": account, "merchant_id": f"m-{rng.randrange(200)}",
            "amount": round(rng.uniform(1, 500), 2), "timestamp": BASE_MS + i * 1_000,
        })))
    return out


@dataclass
class MixedStream:
    """Valid and hostile records interleaved, as ``(key, value)`` in production order."""

    records: list[tuple[bytes | None, bytes]]
    valid_ids: set[str]
    hostile: int

    @classmethod
    def build(cls, valid: int, hostile: int, seed: int = 11) -> MixedStream:
        rng = random.Random(seed)
        good = [(a.encode(), v) for a, v in valid_records(valid)]
        bad: list[tuple[bytes | None, bytes]] = [(None, v) for v in hostile_records(hostile)]
        records = good + bad
        rng.shuffle(records)
        return cls(records, {f"v-{i}" for i in range(valid)}, hostile)


async def produce_slowly(settings: Settings, records: list[tuple[bytes | None, bytes]],
                         per_second: float) -> None:
    """Produce at about ``per_second`` records a second (so faults land mid-stream)."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.broker, linger_ms=5,
                                max_request_size=4 * 1_048_576, **settings.producer_options(),
                                request_timeout_ms=120_000)
    await producer.start()
    try:
        topic, chunk = settings.topic(TRANSACTIONS), max(1, int(per_second / 10))
        pending = []
        for lo in range(0, len(records), chunk):
            started = time.monotonic()
            for key, value in records[lo:lo + chunk]:
                part = partition_for(key.decode(), settings.partitions) if key else None
                pending.append(await producer.send(topic, value, key=key, partition=part))
            await asyncio.sleep(max(0.0, 0.1 - (time.monotonic() - started)))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


def produce_in_background(settings, stream: MixedStream, rate: float = 5_000) -> threading.Thread:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(produce_slowly(settings, stream.records, rate))
        except BaseException as exc:  # reported by the join below
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.errors = errors  # type: ignore[attr-defined]
    thread.start()
    return thread


def joined(thread: threading.Thread, timeout_s: float = 300) -> None:
    thread.join(timeout_s)
    assert not thread.is_alive(), "the producer did not finish"
    assert not thread.errors, f"the producer failed: {thread.errors}"  # type: ignore[attr-defined]


@dataclass
class Accounting:
    """What came out for a mixed stream."""

    valid_in: int
    hostile_in: int
    decided: int = 0
    repeated: int = 0
    dead_lettered: int = 0
    dead_letter_repeats: int = 0
    dead_letter_reasons: Counter = field(default_factory=Counter)
    valid_dead_lettered: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    conflicting_repeats: list[str] = field(default_factory=list)
    #: (first, repeat) decisions of a few conflicting repeats, to show what differed.
    conflict_examples: list[tuple[dict, dict]] = field(default_factory=list)

    def line(self, fault: str) -> str:
        return (f"[{fault}] records in {self.valid_in + self.hostile_in:,} (valid {self.valid_in:,}, "
                f"hostile {self.hostile_in:,}) | decided {self.decided:,} | repeated {self.repeated:,} "
                f"| dead-lettered {self.dead_lettered:,} (+{self.dead_letter_repeats:,} repeats) "
                f"| lost {len(self.lost):,} "
                f"| reasons {dict(self.dead_letter_reasons)}")


async def _read_all(settings: Settings, topic: str) -> list:
    name = settings.topic(topic)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.broker, enable_auto_commit=False,
                                auto_offset_reset="earliest", max_partition_fetch_bytes=8_388_608)
    await consumer.start()
    try:
        tps = [TopicPartition(name, p) for p in range(settings.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list = []
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            for recs in (await consumer.getmany(timeout_ms=500)).values():
                out.extend(recs)
        return out
    finally:
        await consumer.stop()


def account(settings: Settings, stream: MixedStream) -> Accounting:
    """Read ``scores`` and ``transactions.dlq`` back and account for every record."""
    scores = asyncio.run(_read_all(settings, SCORES))
    letters = asyncio.run(_read_all(settings, TRANSACTIONS_DLQ))
    acc = Accounting(len(stream.valid_ids), stream.hostile)
    first: dict[str, tuple] = {}
    first_records: dict[str, dict] = {}
    for r in scores:
        d = loads(r.value)
        tx = d["transaction_id"]
        seen = (d["score"], d["decision"], tuple(d["features"]))
        if tx in first:
            acc.repeated += 1
            if first[tx] != seen:
                acc.conflicting_repeats.append(tx)
                if len(acc.conflict_examples) < 3:
                    acc.conflict_examples.append((first_records[tx], d))
        else:
            first[tx] = seen
            first_records[tx] = {**d, "_partition": r.partition, "_offset": r.offset}
    acc.decided = len(first)
    acc.lost = sorted(stream.valid_ids - set(first))
    sources: dict[tuple, str] = {}
    for r in letters:
        letter = loads(r.value)
        where = (letter["source"]["partition"], letter["source"]["offset"])
        if where in sources:
            acc.dead_letter_repeats += 1
            continue
        sources[where] = letter["reason"]
        acc.dead_letter_reasons[letter["reason"]] += 1
        original = letter.get("original", "")
        if original.startswith('{"transaction_id":"v-'):
            acc.valid_dead_lettered.append(original[:40])
    acc.dead_lettered = len(sources)
    return acc


def wait_until_accounted(settings: Settings, stream: MixedStream, timeout_s: float) -> Accounting:
    """Poll until every valid record is decided and every hostile one dead-lettered (or timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        acc = account(settings, stream)
        done = not acc.lost and acc.dead_lettered >= stream.hostile
        if done or time.monotonic() > deadline:
            return acc
        time.sleep(2.0)
