"""Timestamps from inside Faust's consumer, for the benchmark's stage tracer (diagnostics only).

:func:`install` wraps the Faust and aiokafka internals a record passes through before it
reaches the scorer, and reports each passage to ``emit`` as a dict: ``fetch`` (the
consumer thread's fetch returned, per topic-partition), ``deliver`` (the drain loop handed
a chunk to the stream: start and end), ``wait`` (the drain loop waited for records: how
long, how many partitions were active, how many records came), ``buffer_full`` /
``buffer_drop`` (Faust stopped / resumed taking a partition's records), ``commit`` (an
offset commit: start and end). Used by :mod:`flagstream.perf.bench.stage_trace`; never
installed by the worker itself. ``emit`` is called from the consumer thread too.

>>> from faust.transport.consumer import Consumer
>>> getattr(Consumer.commit, "flagstream_traced", False)  # only where the tracer installs it
False
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

Emit = Callable[[dict], None]


def _traced(fn: Any) -> Any:
    fn.flagstream_traced = True
    return fn


def install(emit: Emit) -> None:
    """Wrap the consumer's stages so that each passage is reported to ``emit`` (once)."""
    from faust.transport.consumer import Consumer
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    from flagstream.streams.compat import faust_consumer

    if getattr(Consumer.commit, "flagstream_traced", False):
        return
    original_fetch = AIOKafkaConsumerThread._fetch_records
    original_deliver = faust_consumer._deliver_chunk
    original_wait = Consumer._wait_next_records
    original_full, original_drop = Consumer.on_buffer_full, Consumer.on_buffer_drop
    original_commit = Consumer.commit

    async def fetch_records(self, consumer, active_partitions, timeout=None, max_records=None):
        records = await original_fetch(self, consumer, active_partitions, timeout=timeout,
                                       max_records=max_records)
        now = time.time()
        for tp, chunk in (records or {}).items():
            if chunk:
                emit({"kind": "fetch", "t": now, "tp": [tp.topic, tp.partition],
                      "first": chunk[0].offset, "last": chunk[-1].offset,
                      "ts_ms": chunk[-1].timestamp, "n": len(chunk)})
        return records

    async def deliver_chunk(self, tuning, tp, chunk, callback, generation_id):
        t0 = time.time()
        await original_deliver(self, tuning, tp, chunk, callback, generation_id)
        emit({"kind": "deliver", "t0": t0, "t1": time.time(), "tp": [tp.topic, tp.partition],
              "first": chunk[0].offset, "last": chunk[-1].offset})

    async def wait_next_records(self, timeout):
        t0 = time.time()
        records, active = await original_wait(self, timeout)
        emit({"kind": "wait", "t0": t0, "t1": time.time(), "timeout": timeout,
              "active": len(active or ()), "got": sum(len(v) for v in (records or {}).values())})
        return records, active

    def on_buffer_full(self, tp):
        emit({"kind": "buffer_full", "t": time.time(), "tp": [tp.topic, tp.partition]})
        return original_full(self, tp)

    def on_buffer_drop(self, tp):
        emit({"kind": "buffer_drop", "t": time.time(), "tp": [tp.topic, tp.partition]})
        return original_drop(self, tp)

    async def commit(self, *args, **kwargs):
        t0 = time.time()
        result = await original_commit(self, *args, **kwargs)
        emit({"kind": "commit", "t0": t0, "t1": time.time(), "did": bool(result)})
        return result

    AIOKafkaConsumerThread._fetch_records = fetch_records  # type: ignore[method-assign]
    faust_consumer._deliver_chunk = deliver_chunk
    Consumer._wait_next_records = wait_next_records  # type: ignore[method-assign]
    Consumer.on_buffer_full = on_buffer_full  # type: ignore[method-assign]
    Consumer.on_buffer_drop = on_buffer_drop  # type: ignore[method-assign]
    Consumer.commit = _traced(commit)  # type: ignore[method-assign]
