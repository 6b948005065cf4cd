"""The chunked Faust consumer path keeps at-least-once: acks, commits, kills, first starts.

Unit tests drive Faust's own consumer bookkeeping with :class:`BatchMessage` acks; the
integration tests run real ``flagstream worker`` processes (chunks on, the default)
against the real broker and check, after a SIGKILL, that every transaction below the
committed offset has its decision on ``scores`` — offsets are committed only for
processed events — and that nothing is lost across restarts or on a first start
over a pre-loaded topic.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import faust
import pytest
from faust.types import TP
from kafka_helpers import committed_offsets, read_topic

from flagstream.codec import dumps
from flagstream.perf.bench.measure import read_decisions
from flagstream.streams.compat import faust_consumer as faust_tuning
from flagstream.streams.compat.faust_consumer import BatchMessage
from flagstream.streams.topics import partition_for


def rec(offset: int) -> SimpleNamespace:
    return SimpleNamespace(offset=offset, value=b"{}", key=None, timestamp=0)


def chunk(tp: TP, first: int, last: int, generation: int = 1, processed: bool = True) -> BatchMessage:
    message = BatchMessage.from_records(tp, [rec(o) for o in range(first, last + 1)], generation)
    message.processed = processed
    message.incref()
    return message


@pytest.fixture
def consumer():
    """Faust's consumer object of an app that is never started (bookkeeping only)."""
    app = faust.App("tuning-unit", broker="kafka://127.0.0.1:1", web_enabled=False)
    app.consumer_generation_id = 1
    c = app.consumer
    c.app.topics.acks_enabled_for = lambda topic: True
    return c


def test_acking_a_chunk_acks_each_offset_and_commits_stop_at_the_first_unacked(consumer):
    tp = TP("tx", 0)
    consumer._committed_offset[tp] = 100
    first, second, third = chunk(tp, 100, 104), chunk(tp, 105, 109), chunk(tp, 110, 114)
    assert first.ack(consumer) and third.ack(consumer)
    assert consumer._new_offset(tp) == 105  # 105..109 not acked: the commit stops there
    consumer._committed_offset[tp] = 105
    assert consumer._new_offset(tp) is None  # still waiting for 105..109
    assert second.ack(consumer)
    assert consumer._new_offset(tp) == 115
    assert consumer._n_acked == 15


def test_a_chunk_is_acked_once_and_offsets_below_the_commit_are_ignored(consumer):
    tp = TP("tx", 1)
    consumer._committed_offset[tp] = 10
    message = chunk(tp, 5, 14)
    assert message.ack(consumer)
    assert not message.ack(consumer)
    assert sorted(consumer._acked[tp]) == list(range(10, 15))


def test_a_chunk_from_an_older_generation_is_never_counted_as_processed(consumer):
    tp = TP("tx", 2)
    stale = chunk(tp, 0, 9, generation=0)
    stale.ack(consumer)
    assert consumer._acked[tp] == [] and consumer._new_offset(tp) is None


def test_a_chunk_acked_without_being_processed_is_not_committed(consumer):
    """Faust's stream acks the events it skips during a rebalance; those were not scored."""
    tp = TP("tx", 3)
    skipped = chunk(tp, 0, 9, processed=False)
    skipped.ack(consumer)
    assert consumer._acked[tp] == [] and skipped not in consumer._unacked_messages


def test_the_offset_to_commit_is_the_one_faust_would_pick(consumer):
    import random

    faust_tuning.install(consumer.app, ["tx"])
    rng = random.Random(7)
    for case in range(200):
        tp = TP("tx", 100 + case)
        acked = [o for o in range(rng.randrange(60, 400)) if rng.random() > 0.01 * (case % 5)]
        rng.shuffle(acked)
        committed = rng.choice([None, 0, acked and min(acked), acked and min(acked) - 2])
        results = []
        for impl in (faust_tuning._original_new_offset, faust_tuning._new_offset):
            consumer._acked[tp], consumer._acked_index[tp] = list(acked), set(acked)
            consumer._committed_offset[tp] = committed
            results.append((impl(consumer, tp), list(consumer._acked[tp]), set(consumer._acked_index[tp])))
        assert results[0] == results[1], case
    faust_tuning.uninstall(consumer.app)


def test_install_batches_only_the_named_topics_and_bounds_their_buffer():
    app = faust.App("tuning-install", broker="kafka://127.0.0.1:1", web_enabled=False)
    topic = app.topic("tx", value_serializer="raw")
    tuning = faust_tuning.install(app, [topic], queue_chunks=4)
    try:
        assert faust_tuning.tuning_of(app) is tuning and tuning.topics == {"tx"}
        assert topic.maxsize == 4
    finally:
        faust_tuning.uninstall(app)
    assert faust_tuning.tuning_of(app) is None


# --- on the real broker --------------------------------------------------------------


def transactions(n: int, accounts: int = 400) -> list[tuple[bytes, bytes, int, str]]:
    """(key, value, partition, transaction id) of ``n`` valid transactions."""
    out = []
    for i in range(n):
        account, tx = f"c-{i % accounts}", f"t-{i:07d}"
        value = dumps({
            "transaction_id": tx, "account_id": account, "merchant_id": f"m-{i % 37}",
            "amount": 10.0 + i % 90, "currency": "USD",
            "timestamp": f"2018-04-{1 + (i // 86_400) % 28:02d}T{(i // 3600) % 24:02d}:"
                         f"{(i // 60) % 60:02d}:{i % 60:02d}Z",
        })
        out.append((account.encode(), value, partition_for(account, 4), tx))
    return out


async def preload(settings, records) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=settings.broker, linger_ms=10)
    await producer.start()
    try:
        name = settings.topic("transactions")
        futures = [await producer.send(name, v, key=k, partition=p) for k, v, p, _ in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def decided(settings, expect: int, timeout_s: float = 120.0) -> list[str]:
    records = asyncio.run(read_topic(settings, "scores", expect, timeout_s, settle_s=0.5))
    return [r.key.decode() for r in records]


def wait_for_commit(settings, group: str, before: dict[int, int], ends: dict[int, int],
                    timeout_s: float = 120.0) -> None:
    """Until this run commits: some partition's committed offset moves past where it was
    (``before``), or every partition is committed to its end (nothing was left to do)."""
    deadline = time.monotonic() + timeout_s
    while True:
        now = asyncio.run(committed_offsets(settings, group))
        if any(now.get(p, 0) > before.get(p, 0) for p in ends) or all(
                now.get(p, 0) >= end for p, end in ends.items()):
            return
        assert time.monotonic() < deadline, f"no new commit past {before} in {timeout_s}s"
        time.sleep(0.1)


@pytest.mark.integration
@pytest.mark.parametrize(("chunks", "in_loop"), [(True, True), (False, True), (True, False)],
                         ids=["chunks", "faust-per-record", "faust-consumer-thread"])
def test_first_start_over_a_preloaded_topic_decides_everything(settings, worker_factory, chunks, in_loop):
    """Records already waiting when a new group starts are all scored (none dropped), with the
    chunked hand-off and with Faust's own per-record path (``FLAGSTREAM_FAUST_CHUNKS=0``), and
    with Faust's consumer in its own thread (``FLAGSTREAM_CONSUMER_IN_LOOP=0``)."""
    records = transactions(20_000)
    asyncio.run(preload(settings, records))
    worker_factory(role="scorer", faust_chunks=chunks, consumer_in_loop=in_loop)
    ids = decided(settings, len(records))
    assert set(ids) == {tx for *_, tx in records}


@pytest.mark.integration
def test_sigkill_never_leaves_a_committed_offset_past_an_undecided_record(settings, worker_factory):
    """At-least-once across kills: commits only cover decided records, restarts lose nothing."""
    records = transactions(60_000)
    asyncio.run(preload(settings, records))
    group = f"{settings.topic_prefix}{settings.app_id}-scorer"
    by_partition: dict[int, list[str]] = {p: [] for p in range(4)}
    for _, _, p, tx in records:
        by_partition[p].append(tx)  # produced in order: list position == offset
    ends = {p: len(txs) for p, txs in by_partition.items()}
    committed: dict[int, int] = {}
    for _round in range(2):
        worker = worker_factory(role="scorer")
        wait_for_commit(settings, group, committed, ends)  # a commit of this run has landed
        worker.kill()
        seen, _ = asyncio.run(read_decisions(settings, "scores"))  # everything landed so far
        committed = asyncio.run(committed_offsets(settings, group))
        for partition, offset in committed.items():
            undecided = [tx for tx in by_partition[partition][:offset] if tx not in seen]
            assert not undecided, f"partition {partition} committed {offset} before deciding {undecided[:3]}"
    assert sum(committed.values()) > 0
    worker_factory(role="scorer")
    ids = decided(settings, len(records))
    assert set(ids) == {tx for txs in by_partition.values() for tx in txs}
