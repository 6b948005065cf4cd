"""The stream path's latency tail: the worker's log level, its consumer's fetch wait, and
completions in bulk.

* A worker run at ``--loglevel warning`` keeps its root logger at WARNING: Faust's
  terminal spinner put it at DEBUG, and every debug record of aiokafka, Faust and mode
  (the repr of every request) was built and masked for card numbers — the event loop
  busy 96% of the time at 1,000 events/s.
* The broker holds a worker's fetch request at most ``fetch_max_wait_ms`` (20 ms, not
  Faust's fixed 1,500): a request holding only idle partitions kept the busy ones from
  being fetched for up to 1.5 s.
* Steps that queue up while a completion runs (outputs acknowledged, rows written, events
  acked) are completed together: one changelog batch and one RocksDB write per partition
  for all of them. Completing them one at a time made the agent wait for a free slot
  before taking the next fetched records.

(Timings are in ``perf/``, README "Throughput and latency"; here only the mechanisms.)
"""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import pytest
from scorer_helpers import home_accounts, scorer_app, tx

from flagstream.errors import ConfigurationError
from flagstream.streams.agents import build_app
from flagstream.streams.compat import faust_consumer
from flagstream.streams.compat.internals import DeadlineWorker, read_row
from flagstream.streams.config import Settings
from flagstream.streams.delivery import Outbox
from flagstream.streams.faust_batches import InOrder, PartitionRecords
from flagstream.streams.scorer_agent import Step


class BatchingProducer:
    """The part of an aiokafka producer an :class:`Outbox` uses; records each batch sent."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, int, list[tuple[bytes | None, bytes | None]]]] = []
        self.offsets: dict[tuple[str, int], int] = {}

    def create_batch(self):
        records: list[tuple[bytes | None, bytes | None]] = []

        def append(key, value, timestamp, headers):
            records.append((key, value))
            return True

        return SimpleNamespace(records=records, append=append, close=lambda: None)

    async def send_batch(self, batch, topic, partition):
        self.batches.append((topic, partition, list(batch.records)))
        first = self.offsets.get((topic, partition), 0)
        self.offsets[(topic, partition)] = first + len(batch.records)
        future = asyncio.get_running_loop().create_future()
        future.set_result(SimpleNamespace(offset=first))
        return future


def test_steps_queued_during_a_completion_are_completed_together_in_order():
    calls: list[list[int]] = []
    release = asyncio.Event

    async def main() -> None:
        gate = release()

        async def complete(items: list[int]) -> None:
            calls.append(list(items))
            if len(calls) == 1:
                await gate.wait()

        finish = InOrder(None, complete, depth=16)
        await finish.put(0)
        await asyncio.sleep(0)  # step 0's completion starts and waits on the broker
        for step in range(1, 6):
            await finish.put(step)
        gate.set()
        await finish.join()
        await finish.put(6)
        await finish.join()

    asyncio.run(main())
    assert calls == [[0], [1, 2, 3, 4, 5], [6]]


def test_a_full_queue_blocks_put_until_the_completion_takes_it():
    async def main() -> list[int]:
        gate = asyncio.Event()
        done: list[int] = []

        async def complete(items: list[int]) -> None:
            await gate.wait()
            done.extend(items)

        finish = InOrder(None, complete, depth=2)
        await finish.put(0)
        await asyncio.sleep(0)
        await finish.put(1)
        await finish.put(2)
        blocked = asyncio.ensure_future(finish.put(3))
        await asyncio.sleep(0.01)
        assert not blocked.done()  # back-pressure: two wait already
        gate.set()
        await blocked
        await finish.join()
        return done

    assert asyncio.run(main()) == [0, 1, 2, 3]


@pytest.fixture
def scorer(tmp_path):
    yield from scorer_app(tmp_path)


def test_rows_of_several_steps_are_written_once_per_partition_the_latest_winning(scorer):
    a, b = home_accounts(2, 2)
    c = home_accounts(3, 1)[0]
    steps = []
    for i, (partition, accounts) in enumerate([(2, [a, b]), (2, [a]), (3, [c])]):
        values = [tx(10 * i + k, acc, 10.0 + 5 * i + k, merchant="m-1") for k, acc in enumerate(accounts)]
        recs = PartitionRecords(partition, "transactions", values, [None] * len(values),
                                list(range(10 * i, 10 * i + len(values))), [0.0] * len(values))
        staged = scorer.stage(recs, Outbox(None, scorer.partition_counts))
        steps.append(Step([], [staged], [], None, 0.0))
    latest_a = scorer.core.accounts.row(a).tobytes()  # after step 1 (its second transaction)
    producer = BatchingProducer()
    for step in steps:
        step.producer = producer

    asyncio.run(scorer.complete_steps(steps))

    changelog = scorer.accounts.changelog_topic.get_topic_name()
    sent = [(part, sorted(k for k, _ in recs)) for topic, part, recs in producer.batches
            if topic == changelog]
    assert sorted(p for p, _ in sent) == [2, 3]  # one batch per partition for three steps
    assert dict(sent)[2] == sorted([a.encode(), b.encode()])
    assert steps[0].staged[0][2][a] != latest_a  # step 1 changed the row step 0 wrote
    assert read_row(scorer.accounts, 2, a.encode()) == latest_a
    assert read_row(scorer.accounts, 3, c.encode()) == scorer.core.accounts.row(c).tobytes()


def worker_consumer_fetch_wait(settings: Settings) -> int:
    """The ``fetch_max_wait_ms`` of the aiokafka consumer a scorer worker's Faust app creates."""
    p = build_app(settings, "scorer")
    consumer = p.app.consumer

    async def create() -> int:
        kafka = consumer._thread._create_worker_consumer(consumer.transport)
        try:
            return kafka._fetch_max_wait_ms
        finally:
            await kafka.stop()

    try:
        return asyncio.run(create())
    finally:
        asyncio.run(p.stop())


def test_the_worker_consumer_fetch_wait_is_the_setting_not_fausts_1500_ms(tmp_path):
    assert worker_consumer_fetch_wait(Settings(data_dir=str(tmp_path / "a"), partitions=4)) == 20
    assert worker_consumer_fetch_wait(Settings(data_dir=str(tmp_path / "b"), partitions=4,
                                               fetch_max_wait_ms=250)) == 250


def test_the_fetch_wait_comes_from_the_environment_and_is_bounded():
    assert Settings.from_env({"FLAGSTREAM_FETCH_MAX_WAIT_MS": "5"}).fetch_max_wait_ms == 5
    for bad in ("-1", "1501"):
        with pytest.raises(ConfigurationError):
            Settings.from_env({"FLAGSTREAM_FETCH_MAX_WAIT_MS": bad})


def chunks_before_pressure(size: int) -> int:
    """How many chunks Faust's own channel queue of ``size`` takes before it puts their
    partition under pressure (out of the consumer's active set)."""
    from mode.utils.queues import FlowControlEvent, FlowControlQueue

    async def fill() -> int:
        queue: FlowControlQueue = FlowControlQueue(size, flow_control=FlowControlEvent())
        for n in range(size):
            if queue.in_pressure_high_state(lambda: None):
                return n
            queue.force_put_nowait(n)
        return size

    return asyncio.run(fill())


@pytest.mark.parametrize("partitions", [1, 4, 8, 24])
def test_a_worker_is_many_fetches_behind_before_a_partition_is_paused(tmp_path, partitions):
    """A paused partition's fetched records wait in aiokafka, which then sends no fetch at
    all for 100 ms: the channel must take several fetches' worth of chunks (one per
    partition each) before Faust pauses one, so one slow step never stops the worker."""
    p = build_app(Settings(data_dir=str(tmp_path), partitions=partitions), "scorer")
    [agent] = [a for name, a in p.app.agents.items() if name.endswith("score")]
    size = agent.channel.maxsize
    assert size == faust_consumer.queue_chunks_for(partitions)
    assert chunks_before_pressure(size) >= 6 * partitions  # six fetches for every partition
    assert chunks_before_pressure(8) < 8  # the size before: one fetch of 8 partitions paused one


@pytest.fixture
def root_logging():
    """The root logger's level and handlers, restored after the test."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize(("loglevel", "level"), [("warning", logging.WARNING), ("error", logging.ERROR),
                                                 ("info", logging.INFO)])
def test_a_worker_keeps_the_log_level_asked_for_debug_records_are_never_built(
        tmp_path, root_logging, loglevel, level):
    p = build_app(Settings(data_dir=str(tmp_path), partitions=4), "scorer")
    try:
        worker = DeadlineWorker(p.app, deadline_s=30, loglevel=loglevel, quiet=True,
                                redirect_stdouts=False)
        worker._setup_logging()
        assert worker.spinner is None
        assert root_logging.level == level
        for name in ("aiokafka.conn", "aiokafka.consumer.fetcher", "faust", "mode"):
            assert not logging.getLogger(name).isEnabledFor(logging.DEBUG), name
    finally:
        asyncio.run(p.stop())
