"""Measurements: process CPU and memory, decisions read back, rates, latencies, agreement.

>>> percentiles([5.0, 1.0, 3.0, 2.0, 4.0])["p50_ms"]
3.0
>>> throughput([1000, 1000, 1500, 2000])
2.0
>>> a = {"t-1": Decision("approve", 0.1, 0), "t-2": Decision("review", 0.9, 0)}
>>> b = {"t-1": Decision("approve", 0.1, 0), "t-2": Decision("approve", 0.4, 0)}
>>> agreement(a, b)["share"], agreement(a, b)["differing"]
(0.5, 1)
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from flagstream.streams.compat import internals as compat
from flagstream.streams.config import Settings

_TICK = os.sysconf("SC_CLK_TCK")


async def start_client(client, attempts: int = 5, pause_s: float = 1.0):
    """``await client.start()``, retried: a loaded broker may time out a first request."""
    for attempt in range(attempts):
        try:
            await client.start()
            return client
        except (KafkaError, OSError):  # (TimeoutError is an OSError)
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(pause_s)
    return client


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from ``/proc``."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        fields = fh.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def minor_faults(pid: int) -> int:
    """Minor page faults of a process so far (all its threads), from ``/proc``."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        return int(fh.read().rsplit(b")", 1)[1].split()[7])


def memory_bytes(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS) of a process in bytes, from ``/proc``."""
    rss = peak = 0
    with open(f"/proc/{pid}/status", "rb") as fh:
        for line in fh:
            if line.startswith(b"VmRSS:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith(b"VmHWM:"):
                peak = int(line.split()[1]) * 1024
    return rss, peak


class ProcessSampler(threading.Thread):
    """Samples a process's CPU seconds and memory every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.times: list[float] = []
        self.cpu: list[float] = []
        self.peak_rss = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval)

    def sample(self) -> None:
        try:
            cpu = cpu_seconds(self.pid)
            _, peak = memory_bytes(self.pid)
        except (OSError, IndexError, ValueError):
            return
        self.times.append(time.time())
        self.cpu.append(cpu)
        self.peak_rss = max(self.peak_rss, peak)

    def stop(self) -> None:
        self.sample()
        self._stop_event.set()
        self.join(2.0)

    def cpu_at(self, when: float) -> float:
        """CPU seconds used by ``when`` (epoch seconds), interpolated between samples."""
        if not self.times:
            return 0.0
        return float(np.interp(when, self.times, self.cpu))


@dataclass(frozen=True)
class Decision:
    """What a contender decided for one transaction, and when it landed (ms)."""

    decision: str
    score: float
    landed_ms: int


async def count_records(settings: Settings, topic: str, consumer: AIOKafkaConsumer) -> int:
    """Records on a topic so far (sum of its partitions' end offsets)."""
    name = settings.topic(topic)
    parts = consumer.partitions_for_topic(name)
    if not parts:
        await compat.refresh_metadata(consumer)
        parts = consumer.partitions_for_topic(name) or set()
    if not parts:
        return 0
    ends = await consumer.end_offsets([TopicPartition(name, p) for p in parts])
    return int(sum(ends.values()))


async def read_decisions(settings: Settings, topic: str) -> tuple[dict[str, Decision], int]:
    """Every decision on a topic by transaction id (the first one), and how many repeats."""
    name = settings.topic(topic)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.broker, enable_auto_commit=False,
        auto_offset_reset="earliest", max_partition_fetch_bytes=8_388_608, **settings.kafka_security(),
    )
    await start_client(consumer)
    try:
        await compat.refresh_metadata(consumer)
        tps = [TopicPartition(name, p) for p in consumer.partitions_for_topic(name) or ()]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        out: dict[str, Decision] = {}
        repeats = 0
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining:
            batch = await consumer.getmany(timeout_ms=1_000, max_records=20_000)
            for tp, records in batch.items():
                for rec in records:
                    d = orjson.loads(rec.value)
                    if d.get("fallback") is True:  # the scoring API's: nothing was scored
                        continue
                    tx = d["transaction_id"]
                    if tx in out:
                        repeats += 1
                    else:
                        out[tx] = Decision(d["decision"], float(d["score"]), int(rec.timestamp))
                if records and records[-1].offset + 1 >= ends[tp]:
                    remaining.discard(tp)
        return out, repeats
    finally:
        await consumer.stop()


async def wait_for_count(
    settings: Settings, topic: str, expected: int, stall_s: float, poll_s: float = 0.2
) -> tuple[int, bool]:
    """Wait until ``topic`` holds ``expected`` records, or nothing new came for ``stall_s``."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.broker, enable_auto_commit=False,
                                **settings.kafka_security())
    await start_client(consumer)
    try:
        last, last_change = -1, time.monotonic()
        while True:
            n = await count_records(settings, topic, consumer)
            if n >= expected:
                return n, True
            if n != last:
                last, last_change = n, time.monotonic()
            elif time.monotonic() - last_change > stall_s:
                return n, False
            await asyncio.sleep(poll_s)
    finally:
        await consumer.stop()


async def group_members(settings: Settings, group: str) -> int:
    """Members of a consumer group now (0 when it has none or is unknown)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.broker, **settings.kafka_security())
    await start_client(admin)
    try:
        for response in await admin.describe_consumer_groups([group]):
            for described in response.to_object()["groups"]:
                if described["group"] == group:
                    return len(described["members"])
    finally:
        await admin.close()
    return 0


async def wait_for_members(settings: Settings, group: str, members: int, timeout_s: float) -> int:
    """Wait until ``group`` has ``members`` members (or ``timeout_s``); how many it has."""
    deadline = time.monotonic() + timeout_s
    while True:
        n = await group_members(settings, group)
        if n >= members or time.monotonic() > deadline:
            return n
        await asyncio.sleep(0.5)


def throughput(landed_ms: Iterable[int]) -> float:
    """Events per second from the first decision to the last.

    Decisions stamped in the same millisecond as the first one are left out: they
    finished with it, and the window starts when it landed.
    """
    stamps = np.sort(np.fromiter(landed_ms, np.int64))
    if len(stamps) < 2 or stamps[-1] == stamps[0]:
        return float("nan")
    after_first = len(stamps) - int(np.searchsorted(stamps, stamps[0], side="right"))
    return float(after_first / ((stamps[-1] - stamps[0]) / 1000.0))


def percentiles(latencies_ms: Iterable[float]) -> dict[str, float]:
    """p50/p95/p99/max of a latency sample, in milliseconds."""
    arr = np.fromiter(latencies_ms, np.float64)
    if len(arr) == 0:
        return {"p50_ms": float("nan"), "p95_ms": float("nan"), "p99_ms": float("nan"),
                "max_ms": float("nan")}
    p50, p95, p99 = np.percentile(arr, (50, 95, 99))
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99),
            "max_ms": float(arr.max())}


def latencies(sent_ms: Mapping[str, int], decisions: Mapping[str, Decision]) -> list[float]:
    """From each record's produce timestamp to its decision landing on ``scores``."""
    return [decisions[tx].landed_ms - t for tx, t in sent_ms.items() if tx in decisions]


def agreement(
    reference: Mapping[str, Decision], other: Mapping[str, Decision], tolerance: float = 1e-9
) -> dict:
    """Share of the reference's transactions decided the same way, score within ``tolerance``."""
    same = differing = missing = 0
    examples: list[dict[str, Any]] = []
    for tx, ref in reference.items():
        got = other.get(tx)
        if got is None:
            missing += 1
        elif got.decision == ref.decision and abs(got.score - ref.score) <= tolerance:
            same += 1
        else:
            differing += 1
            if len(examples) < 5:
                examples.append({"transaction_id": tx, "reference": [ref.decision, ref.score],
                                 "other": [got.decision, got.score]})
    extra = sum(1 for tx in other if tx not in reference)
    total = len(reference)
    return {
        "share": same / total if total else float("nan"),
        "compared": total, "same": same, "differing": differing, "missing": missing,
        "extra": extra, "examples": examples,
    }


def window_cpu(sampler: ProcessSampler, first_ms: int, last_ms: int) -> float:
    """CPU seconds the process used between two epoch-millisecond instants."""
    return sampler.cpu_at(last_ms / 1000.0) - sampler.cpu_at(first_ms / 1000.0)
