"""The benchmark's input: a recorded stream slice, a trained champion, topics, producers.

Every contender gets exactly the same bytes in the same per-partition order: records
are keyed by ``account_id`` and sent to the partition Kafka's default partitioner
would pick, so each account's history is replayed in order wherever it runs.
Ground truth (``is_fraud``, ``fraud_scenario``) is stripped before anything reaches a
topic; it is used only to train the champion on an earlier, disjoint slice.

>>> recs = [{"transaction_id": "t-1", "account_id": "c-1", "merchant_id": "m-1",
...          "amount": 5.0, "timestamp": "2018-04-01T00:00:00Z", "is_fraud": 1}]
>>> [(r.key, r.partition, r.transaction_id) for r in encode(recs, 4)]
[(b'c-1', 3, 't-1')]
>>> b"is_fraud" in encode(recs, 4)[0].value
False
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from flagstream.codec import dumps
from flagstream.perf.bench.measure import start_client
from flagstream.scoring.handle import DEFAULT_KIND, LINEAGES, ModelHandle, new_model
from flagstream.scoring.registry import CHAMPION, version_record
from flagstream.scoring.snapshots import seal
from flagstream.simulation.simulator import SimulationConfig, read_stream, simulate, write_stream
from flagstream.streams.config import Settings
from flagstream.streams.core import ScoringCore
from flagstream.streams.schema import validate_transactions
from flagstream.streams.topics import MODELS, SCORES, create_topics, partition_for

#: Fields only a recorded stream has; contenders must never see them.
GROUND_TRUTH = ("is_fraud", "fraud_scenario")
#: The reference stream, when a previous step generated it.
REFERENCE_STREAM = Path("/tmp/ref_stream.jsonl.gz")


@dataclass(frozen=True)
class Record:
    """One transaction ready to produce: key, value, partition, and its id."""

    key: bytes
    value: bytes
    partition: int
    transaction_id: str


@dataclass
class Workload:
    """The slices of one run: training (with labels), pre-load, and one slice per rate."""

    train: list[dict]
    labels: list[int]
    preload: list[Record]
    phases: dict[int, list[Record]]

    def expected(self, records: Sequence[Record]) -> int:
        """How many decisions ``records`` must produce (the valid ones)."""
        return len(validate_transactions([r.value for r in records]))


def ensure_stream(path: str | Path | None, out_dir: Path, need: int) -> Path:
    """A stream file with at least ``need`` records: ``path``, the reference, or a new one."""
    if path:
        return Path(path)
    if REFERENCE_STREAM.exists():
        return REFERENCE_STREAM
    days = max(10, need // 1_000 + 5)  # ~1,150 transactions a day at this size
    # (named by its length: a stream generated for a smaller run is never reused for a larger one)
    out = out_dir / f"bench_stream_{days}d.jsonl.gz"
    if not out.exists():
        sim = simulate(SimulationConfig(customers=600, terminals=1_200, days=days))
        out.parent.mkdir(parents=True, exist_ok=True)
        write_stream(sim, out, progress=False)
    return out


def encode(records: Sequence[dict], partitions: int) -> list[Record]:
    """Wire records (ground truth removed), keyed and partitioned by account."""
    out = []
    for rec in records:
        clean = {k: v for k, v in rec.items() if k not in GROUND_TRUTH}
        account = str(clean.get("account_id", ""))
        out.append(
            Record(account.encode(), dumps(clean), partition_for(account, partitions),
                   str(clean.get("transaction_id", "")))
        )
    return out


def load_workload(
    path: Path, train: int, events: int, rates: Sequence[int], rate_seconds: float, partitions: int
) -> Workload:
    """Read the first ``train + events + Σ rate·seconds`` records and slice them."""
    sizes = [int(r * rate_seconds) for r in rates]
    need = train + events + sum(sizes)
    records = [rec for _, rec in islice(read_stream(path, on_error="skip"), need)]
    if len(records) < need:
        raise ValueError(f"{path} has {len(records)} records, the run needs {need}")
    head = records[:train]
    labels = [int(r.get("is_fraud", 0)) for r in head]
    pos = train + events
    phases = {}
    for rate, size in zip(rates, sizes, strict=True):
        phases[rate] = encode(records[pos : pos + size], partitions)
        pos += size
    return Workload(head, labels, encode(records[train : train + events], partitions), phases)


def train_champion(
    records: Sequence[dict], labels: Sequence[int], fraud_weight: float, kind: str = DEFAULT_KIND,
    learning_rate: float | None = None,
) -> dict:
    """Learn a champion of ``kind`` (the default champion's, unless told) from labelled
    history with the real core's features; its state. ``learning_rate`` None is the kind's."""
    model = new_model(kind, learning_rate, fraud_weight=fraud_weight)
    core = ScoringCore(ModelHandle(model))
    by_id = {str(r.get("transaction_id")): y for r, y in zip(records, labels, strict=True)}
    for lo in range(0, len(records), 2_000):
        chunk = encode(records[lo : lo + 2_000], 1)
        outcome = core.process([r.value for r in chunk])
        for decision, features in zip(outcome.decisions, outcome.features, strict=True):
            model.learn_one(features, by_id[decision["transaction_id"]])
    return model.to_state()


def champion_record(state: dict, version: str | None = None) -> dict:
    """The champion record the learner would publish on ``models`` for this state (by
    default the first version of the state's kind's lineage, ``gam-000001`` for a binned one)."""
    version = version or f"{LINEAGES[state['kind']]}-000001"
    sequence = int(version.rsplit("-", 1)[1])
    return version_record(version, sequence, state, "champion", "trained for the benchmark", "bench")


async def create_bench_topics(settings: Settings) -> None:
    """The pipeline's topics, with ``scores`` stamped by the broker (LogAppendTime).

    A decision's record timestamp is then the moment it landed on ``scores``, the end
    point of every latency measured here.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.broker, **settings.kafka_security())
    await start_client(admin)
    try:
        config = {"message.timestamp.type": "LogAppendTime"}
        await admin.create_topics([NewTopic(settings.topic(SCORES), settings.partitions, 1,
                                            topic_configs=config)])
    except TopicAlreadyExistsError:
        pass
    finally:
        await admin.close()
    await create_topics(settings)


async def delete_topics(settings: Settings) -> int:
    """Delete every topic under the run's prefix (inputs, outputs, Faust's changelogs).

    A broker that keeps every benchmark's topics ends up with tens of thousands of
    partitions and slows down (or runs out of heap) for everyone sharing it.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.broker, **settings.kafka_security())
    await start_client(admin)
    try:
        names = [t for t in await admin.list_topics() if t.startswith(settings.topic_prefix)]
        if names:
            await admin.delete_topics(names)
        return len(names)
    finally:
        await admin.close()


def _producer(settings: Settings, linger_ms: int) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=settings.broker, linger_ms=linger_ms, max_batch_size=1_048_576,
        max_request_size=8_388_608, **settings.producer_options(), **settings.kafka_security(),
    )


async def publish_champion(settings: Settings, state: dict) -> None:
    """Put the trained champion on the compacted ``models`` topic, sealed as the learner does."""
    producer = _producer(settings, 0)
    await start_client(producer)
    try:
        key = settings.model_key(create=True).get()  # the learner's key, made here if first
        await producer.send_and_wait(
            settings.topic(MODELS), seal(champion_record(state), key), key=CHAMPION, partition=0,
        )
    finally:
        await producer.stop()


async def preload(settings: Settings, topic: str, records: Sequence[Record]) -> float:
    """Produce every record and wait for all acknowledgements; returns seconds taken."""
    started = time.perf_counter()
    producer = _producer(settings, 20)
    await start_client(producer)
    try:
        name = settings.topic(topic)
        futures = [
            await producer.send(name, r.value, key=r.key, partition=r.partition) for r in records
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def replay_at_rate(
    settings: Settings, topic: str, records: Sequence[Record], rate: float
) -> dict[str, int]:
    """Produce ``records`` at ``rate`` per second; returns each record's timestamp (ms).

    The timestamp is given explicitly at send time, so it is the Kafka record
    timestamp the contender sees and the start point of its latency.
    """
    producer = _producer(settings, 0)
    await start_client(producer)
    sent: dict[str, int] = {}
    try:
        name = settings.topic(topic)
        loop = asyncio.get_running_loop()
        start, i, futures = loop.time(), 0, []
        while i < len(records):
            due = min(len(records), int((loop.time() - start) * rate) + 1)
            now_ms = int(time.time() * 1000)
            while i < due:
                r = records[i]
                futures.append(
                    await producer.send(name, r.value, key=r.key, partition=r.partition,
                                        timestamp_ms=now_ms)
                )
                sent[r.transaction_id] = now_ms
                i += 1
            await asyncio.sleep(0.001)
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return sent
