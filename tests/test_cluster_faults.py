"""The fault suite on a real three-broker KRaft cluster: a broker SIGKILLed mid-stream.

``scripts/kafka.sh cluster start`` runs three combined broker+controller nodes on
loopback (one quorum of three voters; replication factor 3, ``min.insync.replicas``
2). A worker scores a mixed stream on it; mid-stream the broker coordinating the
worker's consumer group (it also leads some of the test's partitions) is SIGKILLed,
production and scoring go on against the two survivors, and the broker is started
again (the stream may have ended by then). Afterwards every valid transaction has a decision,
every invalid record one dead letter, repeats only for the same transaction id, and
every topic the pipeline created has three replicas back in sync. The accounting is
printed (``pytest -s``); ``make faults`` runs the long variant (``FAULTS_LONG=1``).
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from fault_helpers import MixedStream, produce_slowly, wait_until_accounted
from kafka_helpers import ROOT, WorkerProcess, free_port

from flagstream.streams.config import Secret, Settings
from flagstream.streams.topics import SCORES, TRANSACTIONS

LONG = os.environ.get("FAULTS_LONG") == "1"
VALID = 60_000 if LONG else 20_000
HOSTILE = 600 if LONG else 200
RATE = 1_000  # records a second: the default stream lasts ~20 s, the fault lands inside it

SCRIPT = str(ROOT / "scripts" / "kafka.sh")


def cluster(*args: str, timeout_s: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", SCRIPT, "cluster", *args], capture_output=True, text=True,
                          timeout=timeout_s)


@pytest.fixture(scope="module")
def kafka_cluster() -> str:
    """Three brokers on loopback, started by the project's script; stopped afterwards."""
    started = time.monotonic()
    result = cluster("start")
    if result.returncode != 0:
        pytest.fail(f"could not start the three-broker cluster:\n{result.stdout}\n{result.stderr}")
    servers = cluster("servers").stdout.strip()
    print(f"\n[cluster] {servers} ready in {time.monotonic() - started:.0f} s")
    yield servers
    stopped = cluster("stop")
    print(f"\n[cluster] {stopped.stderr.strip()}")


# --- what the cluster says --------------------------------------------------------------


async def _topics(settings: Settings) -> list[dict]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.broker)
    await admin.start()
    try:
        return [t for t in await admin.describe_topics()
                if t["topic"].startswith(settings.topic_prefix)]
    finally:
        await admin.close()


async def _min_isr(settings: Settings, names: list[str]) -> dict[str, str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.broker)
    await admin.start()
    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, n, {"min.insync.replicas": None})
             for n in names])
        out = {}
        for response in responses:
            for error, _msg, _type, name, entries in response.resources:
                assert error == 0, f"describe_configs {name}: error {error}"
                out[name] = {e[0]: e[1] for e in entries}.get("min.insync.replicas")
        return out
    finally:
        await admin.close()


async def _coordinator(settings: Settings, group: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.broker)
    await admin.start()
    try:
        return await admin.find_coordinator(group)
    finally:
        await admin.close()


async def _delete_topics(settings: Settings, names: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.broker)
    await admin.start()
    try:
        await admin.delete_topics(names)
    finally:
        await admin.close()


async def _end_total(settings: Settings, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.broker, enable_auto_commit=False,
                                request_timeout_ms=10_000)
    await consumer.start()
    try:
        tps = [TopicPartition(settings.topic(topic), p) for p in range(settings.partitions)]
        return sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()


def end_total(settings: Settings, topic: str) -> int | None:
    """Records on a topic (sum of its partitions' end offsets), None while it cannot tell."""
    try:
        return asyncio.run(_end_total(settings, topic))
    except Exception:  # a partition without a leader yet: ask again
        return None


def until(condition: Callable[[], bool], timeout_s: float) -> bool:
    """Poll until ``condition()`` or the timeout; returns whether it came true."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def wait_for(what: str, condition: Callable[[], bool], timeout_s: float,
             failed: Callable[[], str | None] = lambda: None) -> float:
    """Poll until ``condition()``; returns the seconds it took."""
    started = time.monotonic()
    while not condition():
        problem = failed()
        assert problem is None, f"while waiting for {what}: {problem}"
        assert time.monotonic() - started < timeout_s, f"{what}: not within {timeout_s:.0f} s"
        time.sleep(0.25)
    return time.monotonic() - started


def worker_log_summary(worker: WorkerProcess, show: int = 6) -> str:
    """How many warnings and errors the worker logged in this run, and the first few kinds."""
    lines = worker.run_log().decode(errors="replace").splitlines()
    noted = [ln for ln in lines if any(w in ln for w in ("WARN", "ERROR", "CRITICAL", "crashed",
                                                          "Restarting", "Traceback",
                                                          "Signal received"))]
    kinds = Counter(re.sub(r"\d+", "N", ln.split("]", 2)[-1].strip())[:110] for ln in noted)
    return (f"[worker log] {len(lines):,} lines, {len(noted):,} warnings/errors"
            + "".join(f"\n  {n:4d} x {kind}" for kind, n in kinds.most_common(show)))


def leaders(topics: list[dict]) -> Counter:
    return Counter(p["leader"] for t in topics for p in t["partitions"])


# --- the test ---------------------------------------------------------------------------


def produce_in_background(settings: Settings, stream: MixedStream) -> threading.Thread:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(produce_slowly(settings, stream.records, RATE))
        except BaseException as exc:  # reported after the join
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.errors = errors  # type: ignore[attr-defined]
    thread.start()
    return thread


@pytest.mark.integration
@pytest.mark.timeout(1_200 if LONG else 600)
def test_a_broker_sigkilled_mid_stream_loses_nothing(kafka_cluster, tmp_path):
    settings = Settings(
        broker=kafka_cluster,
        topic_prefix=f"c{uuid.uuid4().hex[:10]}.",
        partitions=4,
        replication_factor=3,
        min_insync_replicas=2,
        producer_idempotence=True,
        data_dir=str(tmp_path / "data"),
        web_port=free_port(),
        review_token=Secret("test-review-token-0001"),
        threshold=0.5,
    )
    stream = MixedStream.build(VALID, HOSTILE)
    total = len(stream.records)
    worker = WorkerProcess(settings, tmp_path / "worker.log", "all")
    t0 = time.monotonic()
    timeline: list[str] = []

    def mark(event: str) -> None:
        timeline.append(f"{time.monotonic() - t0:6.1f} s  {event}")
        print(f"\n[cluster fault] {timeline[-1]}", end="")

    def worker_died() -> str | None:
        if worker.proc is not None and worker.proc.poll() is not None:
            return f"the worker exited with {worker.proc.returncode}:\n{worker.log_tail(80)}"
        return None

    passed = False
    victim = None
    try:
        worker.start(timeout_s=180)
        mark("worker holds its partitions")

        # The topics the pipeline created: three replicas each, min.insync.replicas 2.
        topics = asyncio.run(_topics(settings))
        names = sorted(t["topic"] for t in topics)
        assert settings.topic(TRANSACTIONS) in names and settings.topic(SCORES) in names, names
        for t in topics:
            for p in t["partitions"]:
                assert len(p["replicas"]) == 3, f"{t['topic']}[{p['partition']}]: {p}"
        min_isr = asyncio.run(_min_isr(settings, names))
        assert min_isr == dict.fromkeys(names, "2"), min_isr
        mark(f"{len(names)} topics, replication 3, min.insync.replicas 2: {names}")

        producer = produce_in_background(settings, stream)
        mark(f"producing {total:,} records at {RATE:,}/s")

        # Kill mid-stream, once a fifth is produced and decisions are coming out (the first
        # batch compiles the kernels): the worker's group coordinator, which also leads
        # some of the test's partitions.
        wait_for("a fifth of the stream on transactions",
                 lambda: (end_total(settings, TRANSACTIONS) or 0) >= total // 5, 120, worker_died)
        wait_for("decisions coming out", lambda: (end_total(settings, SCORES) or 0) >= 1_000,
                 120, worker_died)
        before = asyncio.run(_topics(settings))
        victim = asyncio.run(_coordinator(settings, f"{settings.topic_prefix}{settings.app_id}"))
        assert victim in leaders(before), (victim, dict(leaders(before)))
        at_kill_tx = end_total(settings, TRANSACTIONS) or 0
        at_kill_scores = end_total(settings, SCORES) or 0
        killed = cluster("kill", str(victim), timeout_s=60)
        assert killed.returncode == 0, killed.stderr
        assert at_kill_tx < total, "the stream was all produced before the kill: not mid-stream"
        mark(f"SIGKILLed broker {victim}, the group coordinator (leaders before: {dict(leaders(before))}; "
             f"transactions {at_kill_tx:,}, scores {at_kill_scores:,})")

        # The survivors take over: leadership moves, production and decisions go on.
        def moved() -> bool:
            try:
                return victim not in leaders(asyncio.run(_topics(settings)))
            except Exception:
                return False

        wait_for(f"leadership to leave broker {victim}", moved, 120, worker_died)
        mark(f"leaders now {dict(leaders(asyncio.run(_topics(settings))))}")
        tx_goal = min(total, at_kill_tx + total // 4)
        wait_for("production to go on without the killed broker",
                 lambda: (end_total(settings, TRANSACTIONS) or 0) >= tx_goal, 180, worker_died)
        wait_for("decisions to go on without the killed broker",
                 lambda: (end_total(settings, SCORES) or 0) >= at_kill_scores + VALID // 10,
                 180, worker_died)
        mark(f"two brokers: transactions {end_total(settings, TRANSACTIONS)}, "
             f"scores {end_total(settings, SCORES)}")

        restarted = cluster("restart", str(victim))
        assert restarted.returncode == 0, restarted.stderr
        mark(f"broker {victim} restarted, transactions {end_total(settings, TRANSACTIONS)}")

        producer.join(300)
        assert not producer.is_alive(), "the producer did not finish"
        assert not producer.errors, f"the producer failed: {producer.errors}"  # type: ignore[attr-defined]
        mark("producer done")

        # Decisions for every valid record on scores (or the worker gone: then say so at once).
        until(lambda: worker_died() is not None or (end_total(settings, SCORES) or 0) >= VALID, 300)
        acc = wait_until_accounted(settings, stream, 10 if worker_died() else 120)
        mark("accounted")
        print("\n" + acc.line("three brokers, one killed"))
        print(worker_log_summary(worker))
        assert worker_died() is None, worker_died()
        assert acc.lost == [], f"{len(acc.lost)} valid transactions never decided, e.g. {acc.lost[:5]}"
        assert acc.dead_lettered == stream.hostile
        assert acc.conflicting_repeats == [], "a repeated decision differs from the first one"
        assert acc.valid_dead_lettered == []

        # The restarted broker caught up: every partition has three in-sync replicas again.
        def in_sync() -> bool:
            return all(len(p["isr"]) == 3 for t in asyncio.run(_topics(settings))
                       for p in t["partitions"])

        wait_for("every replica back in sync", in_sync, 120)
        mark("all partitions have 3 in-sync replicas again")
        passed = True
    finally:
        worker.stop()
        if passed:  # a broker restarted after a SIGKILL recovers every log it holds: keep few
            asyncio.run(_delete_topics(settings, [t["topic"] for t in asyncio.run(_topics(settings))]))
        else:  # the topics stay for a look: kafka.sh cluster logs N, or a consumer
            print("\n[cluster fault] timeline:\n  " + "\n  ".join(timeline))
            print(f"\n----- {worker.log_path} -----\n{worker.log_tail(150)}")
            print(cluster("status").stdout)
            if victim is not None and cluster("status").returncode != 0:
                cluster("restart", str(victim))  # leave three brokers for the next test
