"""API steps on a real scorer without a broker: offset order, the pass-over, failures."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from scorer_helpers import home_accounts, scorer_app, tx

from flagstream.streams import scorer_agent
from flagstream.streams.faust_batches import PartitionRecords


@pytest.fixture
def scorer(tmp_path):
    yield from scorer_app(tmp_path)


class Producer:
    """Outbox batches go nowhere; sends to ``failing`` topics raise."""

    def __init__(self, failing: str = "") -> None:
        self.failing, self.sent = failing, []

    def create_batch(self):
        records = []
        return SimpleNamespace(records=records, close=lambda: None,
                               append=lambda key, value, timestamp, headers: records.append(key) or True)

    async def send_batch(self, batch, topic, partition):
        if topic == self.failing:
            raise ConnectionError("broker down")
        self.sent.append((topic, partition, list(batch.records)))
        done = asyncio.get_running_loop().create_future()
        done.set_result(SimpleNamespace(offset=0))
        return done


class Finish:
    """The scorer's completion queue, keeping the steps put."""

    started = True
    failed = None

    def __init__(self) -> None:
        self.steps = []

    async def put(self, step) -> None:
        self.steps.append(step)

    async def join(self) -> None:
        pass


def staged(scorer, producer: Producer, partition: int, offsets: list[int], through: int | None):
    account = home_accounts(partition, 1)[0]
    scorer.finish = Finish()
    scorer.hold_share_of_capacity = lambda: None  # (reads the consumer's assignment: none here)
    scorer.revoked = False
    scorer.staged_through.clear()
    if through is not None:
        scorer.staged_through[partition] = through
    scorer_agent.kafka_producer = lambda app: producer

    async def go():
        return await asyncio.gather(*(
            scorer.decide_now(partition, offset, account.encode(), tx(offset, account), lambda p: True)
            for offset in offsets))

    return asyncio.run(go())


def test_api_calls_are_staged_in_offset_order_and_the_agent_passes_over_them(scorer, monkeypatch):
    monkeypatch.setattr(scorer_agent, "kafka_producer", scorer_agent.kafka_producer)
    assert staged(scorer, Producer(), 2, [11, 10, 12], through=9) == [True, True, True]
    assert scorer.staged_through == {2: 12} and len(scorer.finish.steps) == 1
    [(recs, outcome, _)] = scorer.finish.steps[0].staged
    assert recs.offsets == [10, 11, 12] and len(outcome.decisions) == 3
    # the agent then reads 9..13: only 13 goes through the core
    agent = PartitionRecords(2, "transactions", [b""] * 5, [b""] * 5, [9, 10, 11, 12, 13], [0.0] * 5)
    assert scorer.not_staged_yet(agent).offsets == [13]


def test_a_call_whose_turn_does_not_come_is_left_to_the_agent(scorer, monkeypatch):
    monkeypatch.setattr(scorer_agent, "kafka_producer", scorer_agent.kafka_producer)
    # offset 11 waits for 10, which never comes: the agent decides it; nothing is staged
    assert staged(scorer, Producer(), 2, [11], through=9) == [False]
    assert scorer.staged_through == {2: 9} and scorer.finish.steps == []
    # nothing staged on the partition since the worker started: the agent goes first
    assert staged(scorer, Producer(), 2, [10], through=None) == [False]


def test_a_failed_api_step_forgets_what_it_staged(scorer, monkeypatch, caplog):
    monkeypatch.setattr(scorer_agent, "kafka_producer", scorer_agent.kafka_producer)
    failing = Producer(failing=scorer.names["scores"])
    assert staged(scorer, failing, 2, [10], through=9) == [False]
    assert "an API step failed: ConnectionError" in caplog.text  # (sending its decisions)
    # never written, so never passed over: the agent applies it (the arena is read again)
    assert scorer.staged_through == {} and scorer.revoked is True
    agent = PartitionRecords(2, "transactions", [b""], [b""], [10], [0.0])
    assert scorer.not_staged_yet(agent).offsets == [10]
