"""Topic creation returns only once the broker's metadata lists every topic with its leaders."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer

from flagstream.streams.app import create_pipeline
from flagstream.streams.config import Settings
from flagstream.streams.topics import _ready, create_topics, topic_specs


def described(name: str, error_code: int = 0, leaders: tuple[int, ...] = (1, 1)) -> dict:
    return {"topic": name, "error_code": error_code, "is_internal": False,
            "partitions": [{"error_code": 0, "partition": i, "leader": leader}
                           for i, leader in enumerate(leaders)]}


def test_a_topic_is_ready_only_when_every_partition_has_a_leader():
    wanted = {"a": 2, "b": 2, "c": 2, "d": 2}
    metadata = [
        described("a"),
        described("b", error_code=3, leaders=()),  # unknown topic or partition: not listed yet
        described("c", leaders=(1, -1)),  # one partition without a leader yet
        described("d", leaders=(1,)),  # fewer partitions than asked for
        described("other"),  # not one of ours
    ]
    assert _ready(metadata, wanted) == {"a"}


def test_the_worker_refreshes_its_consumer_metadata_within_seconds(tmp_path):
    """A topic missing from the metadata when the group formed is assigned at the next refresh."""
    pipeline = create_pipeline(Settings(broker="127.0.0.1:9", data_dir=str(tmp_path)))
    assert pipeline.app.conf.consumer_metadata_max_age_ms <= 10_000


@pytest.mark.integration
def test_a_consumer_sees_every_topic_with_all_partitions_as_soon_as_creation_returns(settings):
    async def scenario() -> None:
        created = await create_topics(settings)
        specs = topic_specs(settings)
        assert sorted(created) == sorted(s.name for s in specs)
        producer = AIOKafkaProducer(bootstrap_servers=settings.broker, request_timeout_ms=2_000)
        await producer.start()
        try:  # one metadata request per topic, answered from what the broker has right now
            for spec in specs:
                assert await producer.partitions_for(spec.name) == set(range(spec.partitions))
        finally:
            await producer.stop()
        assert await create_topics(settings) == []  # a second call creates nothing, still waits

    asyncio.run(scenario())
