"""Simulated reviewers and late labels: the desk's logic, then on the real broker."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
from kafka_helpers import FLAG_EVERYTHING, produce, read_topic

from flagstream.codec import dumps, loads
from flagstream.features.layout import DAY_MS
from flagstream.simulation.replay import replay_records
from flagstream.simulation.reviewers import ReviewDesk, ReviewerConfig, SimulatedReviewers, Truth
from flagstream.simulation.simulator import SimulationConfig, load_stream, simulate, write_stream

integration = pytest.mark.integration

DAY0 = 1_522_540_800_000  # 2018-04-01T00:00:00Z


def decision(tx: str, event_ms: int, flagged: bool) -> dict:
    return {"transaction_id": tx, "account_id": "c-1", "merchant_id": "m-1", "amount": 10.0,
            "event_time": "", "event_time_ms": event_ms, "score": 0.9 if flagged else 0.1,
            "decision": "review" if flagged else "approve", "model_version": "v-test"}


def truth_of(labels: dict[str, int]) -> Truth:
    return Truth.from_records({"transaction_id": t, "is_fraud": f} for t, f in labels.items())


# ---- the desk, without Kafka ---------------------------------------------------------------

def test_truth_loads_from_a_recorded_file(tmp_path):
    sim = simulate(SimulationConfig(customers=30, terminals=60, days=4, radius=20.0))
    write_stream(sim, tmp_path / "s.jsonl.gz", progress=False)
    truth = Truth.load(str(tmp_path / "s.jsonl.gz"))
    assert len(truth) == len(sim) and truth.n_fraud == int(sim.is_fraud.sum())
    ids = [f"t-{i:09d}" for i in range(len(sim))]
    assert truth.lookup(ids).tolist() == sim.is_fraud.tolist()


def test_capacity_per_event_day_and_error_rate():
    truth = truth_of({f"t-{i}": i % 2 for i in range(30)})
    desk = ReviewDesk(truth, ReviewerConfig(capacity_per_day=8, error_rate=1.0, reviewer="ann"))
    desk.on_flagged([decision(f"t-{i}", DAY0 + i, True) for i in range(20)], now=0.0)
    desk.on_flagged([decision(f"t-{i}", DAY0 + DAY_MS, True) for i in range(20, 25)], now=0.0)
    out = desk.due(now=0.0)
    assert len(out) == 13 and desk.counts.expired == 12 and desk.counts.wrong == 13
    for f in out:  # error rate 1: every answer is wrong
        assert f["label"] == ("legit" if int(f["transaction_id"][2:]) % 2 else "fraud")
        assert f["reviewer"] == "ann" and f["source"] == "review"


def test_duplicates_unknown_and_speedup():
    truth = truth_of({"t-1": 1, "t-2": 0})
    desk = ReviewDesk(truth, ReviewerConfig(review_delay_s=3600, speedup=3600))
    desk.on_flagged([decision("t-1", DAY0, True), decision("t-1", DAY0, True),
                     decision("t-9", DAY0, True)], now=10.0)
    assert desk.due(now=10.9) == [] and desk.next_due_in(10.5) == pytest.approx(0.5)
    [answer] = desk.due(now=11.0)  # one hour of event time is one second of wall time
    assert answer["decided_at"] == "2018-04-01T01:00:00Z"
    assert (desk.counts.duplicates, desk.counts.unknown, desk.counts.answered) == (1, 1, 1)


# ---- on the broker -------------------------------------------------------------------------

async def wait_until(condition, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def produce_decisions(settings, topic: str, decisions: list[dict]) -> None:
    await produce(settings, topic, [(d["transaction_id"].encode(), dumps(d)) for d in decisions])


class Running:
    """SimulatedReviewers running in a background task of the test's event loop."""

    def __init__(self, reviewers: SimulatedReviewers) -> None:
        self.reviewers, self.stop = reviewers, asyncio.Event()

    async def __aenter__(self) -> SimulatedReviewers:
        self.task = asyncio.create_task(self.reviewers.run(self.stop))
        return self.reviewers

    async def __aexit__(self, *exc) -> None:
        self.stop.set()
        await self.task


@integration
async def test_reviewers_answer_flagged_items_with_true_labels_within_capacity(settings):
    truth = truth_of({f"t-{i:02d}": int(i % 3 == 0) for i in range(25)})
    day1 = [decision(f"t-{i:02d}", DAY0 + i * 1000, True) for i in range(20)]
    day2 = [decision(f"t-{i:02d}", DAY0 + DAY_MS + i, True) for i in range(20, 25)]
    await produce_decisions(settings, "review", day1 + day2)
    reviewers = SimulatedReviewers(settings, truth, capacity_per_day=12, reviewer="sim-1")
    async with Running(reviewers):
        await wait_until(lambda: reviewers.counts()["answered"] + reviewers.counts()["expired"] == 25)
    counts = reviewers.counts()
    assert (counts["answered"], counts["expired"], counts["wrong"]) == (17, 8, 0)

    records = await read_topic(settings, "feedback", 17)
    assert len(records) == 17
    answers = [loads(r.value) for r in records]
    for r, f in zip(records, answers, strict=True):
        assert r.key == f["transaction_id"].encode()
        assert f["label"] == ("fraud" if truth.get(f["transaction_id"]) else "legit")
        assert (f["source"], f["reviewer"]) == ("review", "sim-1") and f["decided_at"]
    per_day = Counter(f["decided_at"][:10] for f in answers)
    assert per_day == {"2018-04-01": 12, "2018-04-02": 5}


@integration
async def test_chargebacks_for_unflagged_frauds_only_after_the_event_time_delay(settings):
    truth = truth_of({"fraud-missed": 1, "fraud-flagged": 1, "legit": 0, "later": 1, "next": 0})
    await produce_decisions(settings, "scores", [
        decision("fraud-missed", DAY0, False),
        decision("fraud-flagged", DAY0, True),
        decision("legit", DAY0, False),
        decision("next", DAY0 + DAY_MS, False),
    ])
    reviewers = SimulatedReviewers(settings, truth, chargeback_delay_days=2, auto_legit=True)
    async with Running(reviewers):
        await wait_until(lambda: reviewers.counts()["decisions"] == 4)
        await asyncio.sleep(0.5)
        assert reviewers.counts()["chargebacks"] == 0 and reviewers.counts()["pending_late"] == 3
        assert await read_topic(settings, "feedback", 0, settle_s=0.2) == []
        # event time moves past DAY0 + 2 days: the day-0 labels fall due, nothing else
        await produce_decisions(settings, "scores", [decision("later", DAY0 + 2 * DAY_MS + 1, False)])
        await wait_until(lambda: reviewers.counts()["chargebacks"] == 1)
        await wait_until(lambda: reviewers.counts()["auto_legit"] == 1)
    feedback = {f["transaction_id"]: f for f in map(loads, [
        r.value for r in await read_topic(settings, "feedback", 2)])}
    assert set(feedback) == {"fraud-missed", "legit"}
    assert (feedback["fraud-missed"]["label"], feedback["fraud-missed"]["source"]) == ("fraud", "chargeback")
    assert (feedback["legit"]["label"], feedback["legit"]["source"]) == ("legit", "auto")
    assert feedback["fraud-missed"]["decided_at"] == "2018-04-03T00:00:00Z"
    assert reviewers.counts()["pending_late"] == 2  # "next" and "later" are not due yet


@integration
async def test_feedback_from_replay_and_reviewers_reaches_the_worker(settings, worker_factory, tmp_path):
    worker = worker_factory(**FLAG_EVERYTHING)  # every decision is flagged for review
    sim = simulate(SimulationConfig(customers=50, terminals=100, days=3, radius=20.0))
    write_stream(sim, tmp_path / "s.jsonl", progress=False)
    records = load_stream(tmp_path / "s.jsonl")
    reviewers = SimulatedReviewers(
        settings, Truth.from_records(records), capacity_per_day=15, review_delay_s=2.0
    )
    async with Running(reviewers):
        stats = await replay_records(settings, records)
        assert stats.sent == len(records)
        await wait_until(lambda: reviewers.counts()["answered"] == 45, timeout_s=60)
        deadline = time.monotonic() + 30
        while await asyncio.to_thread(worker.metric, "flagstream_feedback_labels_total") < 45:
            assert time.monotonic() < deadline, worker.log_tail()
            await asyncio.sleep(0.3)
    assert reviewers.counts()["expired"] == len(records) - 45
