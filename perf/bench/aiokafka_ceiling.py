"""The client's ceiling: a plain aiokafka ``getmany`` loop around the same ScoringCore.

No Faust: one consumer, one producer, the worker's own :class:`ScoringCore`,
:class:`~flagstream.streams.delivery.Outbox` and output formats. Each fetch is scored in one
core call (every partition's records, as the worker's steps), every output is sent as
record batches, and offsets are committed only after the broker acknowledged all outputs
(at-least-once); one step's delivery and commit overlap with the next step's scoring, as
the worker's completions do. What
it does *not* do is what Faust adds on top: account rows are kept in memory only (no table, no
changelog, no RocksDB), no web server, no sensors, no rebalance-safe flow control.

Run as ``python -m flagstream.perf.bench.aiokafka_ceiling`` with the worker's ``FLAGSTREAM_*``
environment; ``BENCH_MODEL_PATH`` names a JSON file holding the champion record
(as published on ``models``) to score with.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from flagstream.codec import dumps, loads
from flagstream.scoring.handle import ModelHandle, model_from_state
from flagstream.scoring.policy import FixedThreshold
from flagstream.sinks.dead_letter import dead_letter, headers
from flagstream.streams.config import Settings
from flagstream.streams.core import ScoringCore
from flagstream.streams.delivery import Outbox, activity_records
from flagstream.streams.scorer_agent import tune_allocator
from flagstream.streams.topics import (
    MERCHANT_ACTIVITY,
    REVIEW,
    SCORES,
    TRANSACTIONS,
    TRANSACTIONS_DLQ,
    create_topics,
    partition_for,
)

log = logging.getLogger(__name__)


def build_core(settings: Settings, model_path: str | None) -> ScoringCore:
    """The worker's core with the champion from ``model_path`` (or an untrained one)."""
    handle = ModelHandle(settings.champion_model())
    if model_path:
        with open(model_path, "rb") as fh:
            record = loads(fh.read())
        handle.adopt(model_from_state(record["state"]), record["lineage"], int(record["sequence"]))
    return ScoringCore(handle, FixedThreshold(settings.threshold), max_record_bytes=settings.max_record_bytes,
                       max_nesting=settings.max_nesting, max_lead_ms=settings.max_event_lead_s * 1000)


def stage(core: ScoringCore, settings: Settings, outbox: Outbox, batches, counts) -> None:
    """Score one fetch's records (``getmany``'s partition -> records) in one core call and
    queue every output in ``outbox``."""
    name = settings.topic
    fetched = [(tp, r) for tp, records in batches.items() for r in records]
    records = [r for _, r in fetched]
    values = [r.value for r in records]
    outcome = core.process(values, [r.offset for r in records], [tp.partition for tp, _ in fetched],
                           settings.partitions)
    core.accounts.take_touched()  # nothing durable to write them to
    for index, account in outcome.misrouted:
        outbox.add(name(TRANSACTIONS), partition_for(account, settings.partitions), account.encode(),
                   values[index])
    decisions, flagged = outcome.decisions, outcome.flagged
    outbox.add_keyed(name(SCORES), [d["transaction_id"] for d in decisions],
                     [dumps(d) for d in decisions], counts[name(SCORES)])
    outbox.add_keyed(name(REVIEW), [f["transaction_id"] for f in flagged],
                     [dumps(f) for f in flagged], counts[name(REVIEW)])
    for r in outcome.rejections:
        tp, rec = fetched[r.index]
        letter = dead_letter(values[r.index], r.reason, r.detail, tp.topic, tp.partition, rec.offset)
        part = partition_for(rec.key.decode(errors="replace"), settings.partitions) if rec.key else (
            tp.partition % settings.partitions)
        outbox.add(name(TRANSACTIONS_DLQ), part, rec.key, dumps(letter), headers(r.reason))
    for part, value in activity_records(outcome.activity, settings.partitions):
        outbox.add(name(MERCHANT_ACTIVITY), part, None, value)


async def run(settings: Settings, model_path: str | None, stop: asyncio.Event) -> int:
    """Consume, score, produce and commit until ``stop`` is set; returns records processed."""
    await create_topics(settings)
    tune_allocator()  # the same process-level setting the worker makes
    core = build_core(settings, model_path)
    consumer = AIOKafkaConsumer(
        settings.topic(TRANSACTIONS), bootstrap_servers=settings.broker,
        group_id=f"{settings.topic_prefix}{settings.app_id}-ceiling", enable_auto_commit=False,
        auto_offset_reset="earliest", max_partition_fetch_bytes=8 * 1_048_576,
        **settings.kafka_security(),
    )
    producer = AIOKafkaProducer(bootstrap_servers=settings.broker, linger_ms=5,
                                max_batch_size=1_048_576, **settings.producer_options(),
                                **settings.kafka_security())
    await consumer.start()
    await producer.start()
    done = 0
    counts: dict[str, int] = {}
    previous = None  # (delivery futures, offsets to commit) of the step before
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=5_000)
            step = None
            if batches:
                outbox = Outbox(producer, counts)
                for topic in (SCORES, REVIEW):
                    await outbox.partition_count(settings.topic(topic))
                stage(core, settings, outbox, batches, counts)
                done += sum(len(records) for records in batches.values())
                step = (await outbox.send(),
                        {tp: records[-1].offset + 1 for tp, records in batches.items()})
            if previous is not None:  # the step before: delivered → commit (in order)
                await asyncio.gather(*previous[0])
                await consumer.commit(previous[1])
            previous = step
        if previous is not None:
            await asyncio.gather(*previous[0])
            await consumer.commit(previous[1])
    finally:
        await consumer.stop()
        await producer.stop()
    return done


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()

    async def go() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await run(settings, os.environ.get("BENCH_MODEL_PATH"), stop)

    processed = asyncio.run(go())
    print(f"aiokafka_ceiling processed {processed} records", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
