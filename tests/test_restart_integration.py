"""A worker killed with SIGKILL restarts with the state a replay gives and loses nothing."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from kafka_helpers import produce_json
from model_helpers import (
    decided,
    in_process,
    publish_champion,
    serving_version,
    train_offline,
    wait_until,
)

from flagstream.codec import loads
from flagstream.features.layout import N_FEATURES
from flagstream.streams.config import Settings

pytestmark = pytest.mark.integration


def stream(n: int, accounts: int = 40, prefix: str = "k", first: int = 0) -> list[dict]:
    """Small amounts, and a large one now and then (what the champion flags)."""
    return [
        {
            "transaction_id": f"{prefix}-{i:06d}",
            "account_id": f"{prefix}c-{i % accounts}",
            "merchant_id": f"m-{i % 13}",
            "amount": 900.0 if i % 97 == 0 else 10.0 + (i * 7) % 90,
            "timestamp": 1_522_540_800_000 + i * 20_000,
        }
        for i in range(first, first + n)
    ]


async def _offsets(settings: Settings, topic: str) -> tuple[int, int]:
    """(records on ``topic``, offsets of it the worker group has committed), over all partitions."""
    name = settings.topic(topic)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.broker, enable_auto_commit=False)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.broker)
    await consumer.start()
    await admin.start()
    try:
        tps = [TopicPartition(name, p) for p in range(settings.partitions)]
        end = sum((await consumer.end_offsets(tps)).values())
        group = await admin.list_consumer_group_offsets(f"{settings.topic_prefix}{settings.app_id}")
        done = sum(max(meta.offset, 0) for tp, meta in group.items() if tp.topic == name)
        return end, done
    finally:
        await admin.close()
        await consumer.stop()


def offsets(settings: Settings, topic: str) -> tuple[int, int]:
    return asyncio.run(_offsets(settings, topic))


async def _read_all(settings: Settings, topic: str) -> list:
    """Every record on ``topic`` up to its end offsets now."""
    name = settings.topic(topic)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.broker, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [TopicPartition(name, p) for p in range(settings.partitions)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        records: list = []
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining:
            for tp, recs in (await consumer.getmany(timeout_ms=1_000)).items():
                records.extend(r for r in recs if r.offset < ends[tp])
                if recs and recs[-1].offset + 1 >= ends[tp]:
                    remaining.discard(tp)
        return records
    finally:
        await consumer.stop()


def test_sigkill_mid_stream_then_restart_keeps_state_and_loses_nothing(settings, worker_factory):
    """Two crashes: one after a commit (the rows must come back from the table), one with
    nothing committed since (the tail is consumed again over the recovered rows)."""
    records = stream(6_000)
    a, b, c = records[:2_000], records[2_000:4_000], records[4_000:]
    state = train_offline(stream(1_500, prefix="h", first=100_000), lambda d: d["amount"] > 500)
    version = publish_champion(settings, state)

    first = worker_factory()
    wait_until(lambda: serving_version(first) == version, 30, "the published champion in use", first)
    produce_json(settings, "transactions", a, "account_id")
    wait_until(lambda: offsets(settings, "transactions") == (2_000, 2_000), 60, "part A committed", first)
    first.kill()

    second = worker_factory(commit_interval_s=3600.0)  # the second run commits nothing
    wait_until(lambda: serving_version(second) == version, 30, "the published champion in use", second)
    produce_json(settings, "transactions", b, "account_id")
    decided_before_kill = wait_until(
        lambda: (n := second.metric("flagstream_events_in_total")) >= 1_000 and n, 60,
        "part of B decided", second)
    second.kill()  # mid-stream: some batches sent, some rows written, offsets not committed
    assert offsets(settings, "transactions") == (4_000, 2_000), "the second run must commit nothing"
    produce_json(settings, "transactions", c, "account_id")
    third = worker_factory()  # same data dir and group: recovers tables, consumes B again
    # synchronise on the group's committed offsets: every record is then decided and delivered
    wait_until(lambda: offsets(settings, "transactions") == (6_000, 6_000), 180,
               "every transaction committed after the restarts", third)
    published = asyncio.run(_read_all(settings, "scores"))

    decisions: dict[str, list[dict]] = defaultdict(list)
    for record in published:
        d = loads(record.value)
        assert record.key == d["transaction_id"].encode(), "decisions are keyed by transaction id"
        decisions[d["transaction_id"]].append(d)
    assert set(decisions) == {r["transaction_id"] for r in records}, "no transaction may be lost"

    # a repeat is the same decision again: same id, same features, same score, same model
    repeats = len(published) - len(decisions)
    for tx, same_tx in decisions.items():
        distinct = {repr(sorted({**decided(d), "model": d["model_version"]}.items())) for d in same_tx}
        assert len(distinct) == 1, (tx, same_tx)

    # the state seen at scoring time equals an uninterrupted in-process run with the same model
    want = in_process([records], [state], [settings.threshold])
    for tx, (decision, *_) in decisions.items():
        assert decision["model_version"] == version, tx
        assert len(decision["features"]) == N_FEATURES
        assert decided(decision) == decided(want[tx]), tx
    assert sum(d["decision"] == "review" for d in want.values()) >= 50

    # what the second run did was consumed again: skipped as already applied, or decided again
    replayed = third.metric("flagstream_replayed_total")
    assert replayed + repeats >= decided_before_kill, (replayed, repeats, decided_before_kill)
    assert third.metric("flagstream_events_in_total") >= len(b) + len(c)
