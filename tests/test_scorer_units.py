"""The scorer's pieces, driven one at a time without a broker: stage, dead letters, metrics."""

from __future__ import annotations

import asyncio
import shutil

import numpy as np
import pytest
from scorer_helpers import home_accounts, scorer_app, tx

from flagstream.codec import dumps, loads
from flagstream.scoring.operating_point import OperatingPoint
from flagstream.streams.agents import build_app
from flagstream.streams.api_worker import ApiCalls
from flagstream.streams.compat.internals import stage_rows
from flagstream.streams.config import Settings
from flagstream.streams.delivery import Outbox
from flagstream.streams.faust_batches import PartitionRecords


class RecordingProducer:
    """What an aiokafka producer is asked to send, kept in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes, int | None]] = []

    async def send(self, topic, key, value, partition, timestamp, headers):
        self.sent.append((topic, key, value, partition))
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


@pytest.fixture
def scorer(tmp_path):
    yield from scorer_app(tmp_path)


def test_stage_decides_every_valid_record_once_and_queues_outputs(scorer):
    home = home_accounts(2, 3)
    away = home_accounts(1, 1)[0]
    values = [tx(0, home[0]), tx(1, home[1]), b"not json", tx(3, away), tx(4, home[2])]
    recs = PartitionRecords(2, "transactions", values, [None] * 5, list(range(100, 105)),
                            [0.0] * 5)
    outbox = Outbox(None, scorer.partition_counts)
    recs_out, outcome, rows = scorer.stage(recs, outbox)
    decided = sorted(d["transaction_id"] for d in outcome.decisions)
    assert decided == ["t-0", "t-1", "t-4"]
    assert [(r.index, r.reason) for r in outcome.rejections] == [(2, "invalid_json")]
    assert outcome.misrouted == [(3, away)]
    assert sorted(rows) == sorted(home)
    groups = outbox.groups
    scores = [loads(v)["transaction_id"] for (topic, _), g in groups.items()
              if topic == scorer.names["scores"] for _, v, _ in g]
    assert sorted(scores) == decided
    rerouted = [(part, v) for (topic, part), g in groups.items()
                if topic == scorer.names["transactions"] for _, v, _ in g]
    assert rerouted == [(1, values[3])]
    assert any(topic == scorer.names["merchant_activity"] for topic, _ in groups)


def test_dead_letters_carry_the_reason_and_the_source_offset(scorer):
    producer = RecordingProducer()
    scorer.p.app.producer.send = producer.send  # the dead-letter path uses the app's producer
    recs = PartitionRecords(0, "transactions", [b"{}", b"[1]"], [b"k0", None], [7, 8], [0.0, 0.0])
    _, outcome, _ = scorer.stage(recs, Outbox(None, scorer.partition_counts))
    asyncio.run(_gather(scorer.send_dead_letters(recs, outcome)))
    letters = [(topic, key, loads(value)) for topic, key, value, _ in producer.sent]
    assert [(k, d["reason"], d["source"]["offset"]) for _, k, d in letters] == [
        (b"k0", "missing_field", 7), (None, "not_an_object", 8)]
    assert {t for t, _, _ in letters} == {scorer.names["transactions_dlq"]}


async def _gather(coro):
    pending = await coro
    await asyncio.gather(*pending)


def test_observe_counts_a_completed_step(scorer):
    home = home_accounts(0, 2)
    recs = PartitionRecords(0, "transactions", [tx(0, home[0]), tx(1, home[1]), b"x"], [None] * 3,
                            [0, 1, 2], [1.0e12] * 3)
    staged = scorer.stage(recs, Outbox(None, scorer.partition_counts))
    scorer.observe([staged], started=0.0)
    text = scorer.metrics.render().decode()
    assert "flagstream_events_in_total 3.0" in text
    approved = 'flagstream_decisions_total{decision="approve"}'
    flagged = 'flagstream_decisions_total{decision="review"}'
    counts = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line.startswith("flagstream_decisions_total")}
    assert counts[approved] + counts[flagged] == 2
    assert np.isclose(float(next(line.split()[1] for line in text.splitlines()
                                 if line.startswith("flagstream_processing_latency_seconds_count"))), 2)


def with_poison(partition: int, poison_id: str = "t-poison",
                **extra) -> tuple[list[bytes], bytes, list[bytes]]:
    """Seven good records of two accounts of ``partition``, and a poison record among them
    (fourth): the good ones, the poison one, and all of them in order."""
    accounts = home_accounts(partition, 2)
    good = [tx(i, accounts[i % 2], 10.0 + i) for i in range(7)]
    poison = dumps({"transaction_id": poison_id, "account_id": accounts[0], "merchant_id": "m-0",
                    "amount": 5.0, "timestamp": 1_522_540_800_000, **extra})
    return good, poison, good[:3] + [poison] + good[3:]


def fail_processing_with(scorer, monkeypatch, poison: bytes) -> None:
    """The core fails *after* updating state whenever ``poison`` is in its batch."""
    real_process = scorer.core.process

    def failing_process(batch_values, *args, **kwargs):
        outcome = real_process(batch_values, *args, **kwargs)  # rows already advanced
        if poison in batch_values:
            raise OverflowError("a bug only this record reaches")
        return outcome

    monkeypatch.setattr(scorer.core, "process", failing_process)


def test_a_record_that_makes_processing_fail_is_isolated_and_leaves_no_trace(scorer, monkeypatch):
    """The core fails *after* updating state whenever the poison record is in its batch: the
    failed attempts are undone, the poison record alone is dead-lettered (internal_error),
    every other record is decided, and the rows equal a run without the poison record."""
    good, poison, values = with_poison(3)
    accounts = home_accounts(3, 2)
    fail_processing_with(scorer, monkeypatch, poison)
    recs = PartitionRecords(3, "transactions", values, [None] * 8, list(range(8)), [0.0] * 8)
    staged = scorer.stage_isolated(recs, Outbox(None, scorer.partition_counts))
    decided = [d["transaction_id"] for _, outcome, _ in staged for d in outcome.decisions]
    rejected = [(r.reason, recs_.offsets[r.index]) for recs_, outcome, _ in staged
                for r in outcome.rejections]
    assert sorted(decided) == sorted(f"t-{i}" for i in range(7))
    assert rejected == [("internal_error", 3)]
    assert "flagstream_isolated_records_total 1.0" in scorer.metrics.render().decode()

    reference = build_app(Settings(data_dir=str(scorer.settings.data_path / "ref"), partitions=4,
                                   faust_chunks=False), "scorer")
    reference.core.process(good, [0, 1, 2, 4, 5, 6, 7], 3, 4)
    for account in accounts:
        assert np.array_equal(scorer.core.accounts.row(account), reference.core.accounts.row(account))
    asyncio.run(reference.stop())


def test_failed_attempts_grant_no_review_room(scorer, monkeypatch):
    """The review-capacity policy counts what it grants as it decides. Attempts that fail
    part-way (the poison record's batch, then each half holding it) are decided again; their
    grants, credit and clock are undone with the account rows, so the day counts each
    decided record once."""
    policy = scorer.core.policy
    assert isinstance(policy, OperatingPoint) and policy.capacity_per_day
    _, _, values = with_poison(3)
    real_decide = scorer.core._decide

    def failing_decide(batch, *args, **kwargs):  # after the policy routed the batch
        real_decide(batch, *args, **kwargs)
        if "t-poison" in batch.transaction_ids:
            raise OverflowError("a bug only this record reaches")

    monkeypatch.setattr(scorer.core, "_decide", failing_decide)
    policy.capped, policy.credit = 4, 2.5
    recs = PartitionRecords(3, "transactions", values, [None] * 8, list(range(8)), [0.0] * 8)
    staged = scorer.stage_isolated(recs, Outbox(None, scorer.partition_counts))
    assert sum(len(outcome.decisions) for _, outcome, _ in staged) == 7
    assert (policy.granted.decisions, len(policy.granted)) == (7, 1)
    flagged = sum(d["decision"] != "approve" for _, outcome, _ in staged for d in outcome.decisions)
    assert policy.granted.reviews == flagged and policy.capped == 4 and policy.credit == 2.5


def test_an_api_call_whose_record_is_isolated_gets_the_reason_not_a_fallback(scorer, monkeypatch):
    """A record of this worker's API that makes processing fail is dead-lettered alone
    (``internal_error``); its call is told so as soon as the step is delivered, instead of
    waiting for its deadline and a fallback."""
    _, poison, values = with_poison(1, "t-api", origin="api")
    fail_processing_with(scorer, monkeypatch, poison)

    async def go():
        calls = scorer.api_calls = ApiCalls()
        calls.expecting.add("t-api")
        answer = calls.book.expect("t-api")
        recs = PartitionRecords(1, "transactions", values, [None] * 8, list(range(8)), [0.0] * 8)
        staged = scorer.stage_isolated(recs, Outbox(None, scorer.partition_counts))
        assert calls.falling_back("t-api") is None  # (its answer is on the way: no fallback)
        scorer.answer_api_calls(staged)
        return await asyncio.wait_for(answer, 1.0), calls.staged

    answer, still_staged = asyncio.run(go())
    assert answer["error"] == "internal_error" and "OverflowError" in answer["detail"]
    assert not still_staged


def test_a_restarted_worker_reads_account_rows_back_from_its_table(tmp_path):
    """Rows written by one pipeline are read by the next one on the same data directory,
    from the partition each account lives on (whatever event Faust holds as current)."""
    settings = Settings(data_dir=str(tmp_path), partitions=4, faust_chunks=False)
    first = build_app(settings, "scorer")
    for name in ("scores", "review"):
        first.scorer.partition_counts[first.scorer.names[name]] = 4
    accounts = home_accounts(1, 2) + home_accounts(3, 1)
    rows = {}
    for partition, account in ((1, accounts[0]), (1, accounts[1]), (3, accounts[2])):
        recs = PartitionRecords(partition, "transactions", [tx(len(rows), account, 42.0)], [None],
                                [len(rows)], [0.0])
        _, _, changed = first.scorer.stage(recs, Outbox(None, first.scorer.partition_counts))
        for key, row in changed.items():
            staged = stage_rows(first.tables["accounts"], partition, {key.encode(): row},
                                Outbox(None, {}))
            staged.apply({})
            rows[key] = row
    asyncio.run(first.stop())
    restarted = tmp_path.parent / "restarted"  # (this process still holds the first one's locks)
    shutil.copytree(tmp_path, restarted)
    second = build_app(settings.with_(data_dir=str(restarted)), "scorer")
    for account in accounts:
        assert second.core.accounts.row(account).tobytes() == rows[account]
    asyncio.run(second.stop())


def test_a_scorer_that_does_not_learn_holds_its_share_of_the_review_capacity(scorer, monkeypatch):
    """A scorer worker follows the published threshold and counts the traffic it decides
    itself, so a flood of high scores is held to its partitions' share of the capacity."""
    from aiokafka import TopicPartition

    policy = scorer.core.policy
    policy.capacity_per_day, policy.burst = 40.0, 100.0
    assert policy.review_room(100) is None, "no traffic seen yet: nothing to judge by"
    home = home_accounts(2, 20)
    for hour in range(26):  # a day of calm traffic decided here: the tally learns its rate
        values = [dumps({"transaction_id": f"t-{hour}-{k}", "account_id": home[k % len(home)],
                         "merchant_id": "m-1", "amount": 5.0,
                         "timestamp": 1_522_540_800_000 + hour * 3_600_000 + k})
                  for k in range(100)]
        scorer.stage(PartitionRecords(2, "transactions", values, [None] * 100,
                                      list(range(hour * 100, hour * 100 + 100)), [0.0] * 100),
                     Outbox(None, scorer.partition_counts))
    whole = policy.review_room(1_000)
    assert whole == 40 - int(policy.tally.window(policy.tally.newest_s - 86_400,
                                                  policy.tally.newest_s).rows[0].sum())
    held = {TopicPartition(scorer.names["transactions"], 0),
            TopicPartition(scorer.names["transactions"], 2),
            TopicPartition(scorer.names["scores"], 1)}
    monkeypatch.setattr(type(scorer.p.app.consumer), "assignment", lambda self: held)
    scorer.hold_share_of_capacity()
    assert policy.capacity_share == 0.5, "two of the four transactions partitions"
    assert policy.review_room(1_000) == 20 - (40 - whole), "its half of the day's capacity"


def test_the_partitions_of_a_step_are_scored_in_one_core_call_as_each_alone(scorer, tmp_path,
                                                                            monkeypatch):
    """A step's records of several partitions go through the core once (its fixed cost paid
    once, not per partition), and every output is what staging each partition alone gives:
    decisions, flags, misrouted records, and dead letters and account rows each on its
    own record's partition."""
    from flagstream.streams import scorer_agent
    from flagstream.streams.faust_batches import SEVERAL, joined

    one, three, away = home_accounts(1, 3), home_accounts(3, 2), home_accounts(2, 1)[0]
    first = PartitionRecords(1, "transactions", [tx(0, one[0]), tx(1, one[1]), tx(2, away), tx(3, one[0])],
                             [None] * 4, [40, 41, 42, 43], [0.0] * 4)
    second = PartitionRecords(3, "transactions", [tx(4, three[0]), b"{not json", tx(5, three[1])],
                              [None] * 3, [7, 8, 9], [0.0] * 3)
    reference = build_app(Settings(data_dir=str(tmp_path / "ref"), partitions=4, faust_chunks=False),
                          "scorer").scorer
    reference.partition_counts.update(scorer.partition_counts)
    alone = [reference.stage(recs, Outbox(None, reference.partition_counts)) for recs in (first, second)]
    asyncio.run(reference.p.stop())

    calls = []
    real_process = scorer.core.process
    monkeypatch.setattr(scorer.core, "process", lambda *a, **k: calls.append(a[2]) or real_process(*a, **k))
    both = joined([first, second])
    recs, outcome, rows = scorer.stage(both, Outbox(None, scorer.partition_counts))
    assert calls == [[1, 1, 1, 1, 3, 3, 3]] and recs.partition == SEVERAL

    def without_time(decisions):
        return [{k: v for k, v in d.items() if k != "scored_at_ms"} for d in decisions]

    assert without_time(outcome.decisions) == without_time(alone[0][1].decisions + alone[1][1].decisions)
    assert without_time(outcome.flagged) == without_time(alone[0][1].flagged + alone[1][1].flagged)
    assert outcome.misrouted == [(2, away)] == alone[0][1].misrouted
    assert rows == {**alone[0][2], **alone[1][2]}

    producer = RecordingProducer()
    scorer.p.app.producer.send = producer.send
    asyncio.run(_gather(scorer.send_dead_letters(recs, outcome)))
    (letter,) = [loads(value) for _, _, value, _ in producer.sent]
    assert (letter["reason"], letter["source"]["partition"], letter["source"]["offset"]) == (
        "invalid_json", 3, 8)

    written = {}

    class Written:
        def apply(self, last):
            pass

    def record_rows(table, partition, rows, outbox):
        written[partition] = sorted(rows)
        return Written()

    monkeypatch.setattr(scorer_agent, "stage_rows", record_rows)
    asyncio.run(scorer.write_accounts([(recs, outcome, rows)], None))
    assert written == {1: sorted(a.encode() for a in one[:2]), 3: sorted(a.encode() for a in three)}


def test_a_joined_step_counts_each_partitions_traffic_at_its_own_event_time(scorer, tmp_path):
    """After a restart one partition may be days behind another: the review-capacity
    policy's traffic tally gets each hour's decisions at their own time (as routes decides
    them), the same as staging each partition alone would."""
    from flagstream.streams.faust_batches import joined

    day = 86_400_000

    def group(partition, n, at_ms, first):
        accounts = home_accounts(partition, n)
        values = [dumps({"transaction_id": f"t-{first + k}", "account_id": accounts[k], "merchant_id": "m-1",
                         "amount": 5.0, "timestamp": at_ms + k}) for k in range(n)]
        return PartitionRecords(partition, "transactions", values, [None] * n, list(range(n)), [0.0] * n)

    lagging, current = group(0, 30, 1_522_540_800_000, 0), group(1, 10, 1_522_540_800_000 + 2 * day, 100)
    alone = build_app(Settings(data_dir=str(tmp_path / "alone"), partitions=4, faust_chunks=False),
                      "scorer").scorer
    alone.partition_counts.update(scorer.partition_counts)
    for recs in (lagging, current):
        alone.stage(recs, Outbox(None, alone.partition_counts))
    scorer.stage(joined([lagging, current]), Outbox(None, scorer.partition_counts))

    def tally(s):
        t = s.core.policy.tally
        return t.newest_s, int(t.window(t.newest_s - 86_400, t.newest_s).traffic().sum())

    assert tally(scorer) == tally(alone)
    assert tally(scorer)[1] == 10, "the current day holds the current partition's decisions only"
    asyncio.run(alone.p.stop())
