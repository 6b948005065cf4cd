"""Faust's consumer on the worker's event loop: no second thread, the same consumer.

The worker runs Faust's aiokafka consumer service on its own loop
(``FLAGSTREAM_CONSUMER_IN_LOOP``, on by default; see
:mod:`flagstream.streams.compat.in_loop_consumer`). Here: the setting picks the class;
calls that Faust sends "to the thread" run here, sync and async alike; a real consumer
started and stopped on a real broker starts no thread, fetches what was produced, and
leaves the loop's other tasks running when it stops. The worker-level guarantees (every
record decided on a first start, commits never past an undecided record across SIGKILL,
rebalances) run on the in-loop consumer in ``test_compat_faust_consumer.py``,
``test_faults.py`` and ``test_cluster_faults.py``; the first-start test runs on Faust's
thread too.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.types import TP
from kafka_helpers import produce

from flagstream.streams.agents import build_app
from flagstream.streams.compat.in_loop_consumer import InLoopConsumerThread
from flagstream.streams.config import Settings
from flagstream.streams.topics import partition_for


@pytest.mark.parametrize(("enabled", "kind"), [(True, InLoopConsumerThread), (False, AIOKafkaConsumerThread)])
def test_the_setting_chooses_where_the_consumer_runs(tmp_path, enabled, kind):
    p = build_app(Settings(data_dir=str(tmp_path), partitions=4, consumer_in_loop=enabled), "scorer")
    try:
        thread = p.app.consumer._thread
        assert type(thread) is kind
        if enabled:
            assert thread.thread_loop is thread.parent_loop
    finally:
        asyncio.run(p.stop())


def test_the_setting_is_read_from_the_environment():
    assert Settings.from_env({}).consumer_in_loop is True
    assert Settings.from_env({"FLAGSTREAM_CONSUMER_IN_LOOP": "off"}).consumer_in_loop is False


def test_calls_meant_for_the_thread_run_here_sync_and_async(tmp_path):
    p = build_app(Settings(data_dir=str(tmp_path), partitions=4), "scorer")
    thread = p.app.consumer._thread
    seen: list[tuple[str, int]] = []

    def plain(x: int) -> int:
        seen.append(("plain", x))
        return x + 1

    async def coroutine(x: int) -> int:
        await asyncio.sleep(0)
        seen.append(("coroutine", x))
        return x * 2

    async def run() -> tuple[int, int]:
        got = await thread.call_thread(plain, 1), await thread.call_thread(coroutine, x=4)
        await thread.cast_thread(plain, 7)
        return got

    try:
        assert asyncio.run(run()) == (2, 8)
        assert seen == [("plain", 1), ("coroutine", 4), ("plain", 7)]
    finally:
        asyncio.run(p.stop())


def service_threads() -> set[str]:
    """Live threads but asyncio's executor (a name lookup may start one of those)."""
    return {t.name for t in threading.enumerate() if not t.name.startswith("asyncio_")}


@pytest.mark.integration
def test_a_real_consumer_fetches_on_this_thread_and_stops_without_touching_other_tasks(settings):
    """Start the worker's consumer service on a real broker, assign it a partition, fetch
    what was produced, stop it: no thread was started, a task of the caller's survives."""
    p = build_app(settings, "scorer")
    topic = settings.topic("transactions")
    tp = TP(topic, partition_for("c-1", settings.partitions))

    async def run() -> list[bytes]:
        await produce(settings, "transactions", [(b"c-1", f"r{i}".encode()) for i in range(5)])
        threads_before = service_threads()
        bystander = asyncio.ensure_future(asyncio.sleep(3600))
        thread = p.app.consumer._thread
        await thread.start()
        try:
            assert service_threads() == threads_before
            consumer = thread._ensure_consumer()
            consumer.assign([tp])
            got: list[bytes] = []
            for _ in range(50):
                batch = await thread.getmany({tp}, timeout=0.2)
                got += [r.value for r in batch.get(tp, [])]
                if len(got) >= 5:
                    break
        finally:
            await thread.stop()
        assert not bystander.done(), "stopping the consumer cancelled a task that was not its own"
        bystander.cancel()
        assert service_threads() == threads_before
        return got

    try:
        assert asyncio.run(run()) == [f"r{i}".encode() for i in range(5)]
    finally:
        asyncio.run(p.stop())
