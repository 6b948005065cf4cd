"""Early feedback waits for its decision (bounded, expiring, in order, idempotent across a
restore), and the retention sweep prunes the learner's tables a slice at a time."""

from __future__ import annotations

import numpy as np
import pytest

from flagstream.codec import dumps, loads
from flagstream.features.layout import N_FEATURES
from flagstream.scoring.feedback_wait import NEVER_ARRIVED, WAIT_FULL, WaitingRoom
from flagstream.scoring.handle import ModelHandle
from flagstream.scoring.label_ledger import DictMemory, HourlyBudget, LabelLedger
from flagstream.scoring.learner import Learner
from flagstream.scoring.linear import LinearChampion
from flagstream.scoring.record_checks import check_learner_snapshot
from flagstream.streams.retention import TableSweep


class Clock:
    def __init__(self) -> None:
        self.ms = 1_000_000

    def __call__(self) -> int:
        return self.ms


def decision(i: int, at_ms: int) -> dict:
    rng = np.random.default_rng(i)
    return {"features": rng.random(N_FEATURES).round(4).tolist(), "score": 0.5, "merchant_id": f"m-{i}",
            "event_time_ms": at_ms, "scored_at_ms": at_ms, "decision": "review"}


def label(i: int, what: str = "fraud") -> bytes:
    return dumps({"transaction_id": f"t-{i}", "label": what, "source": "review", "reviewer": "ana"})


def make(decisions: dict, clock: Clock, limit: int = 100, wait_ms: int = 60_000,
         memory: DictMemory | None = None) -> Learner:
    ledger = LabelLedger(memory if memory is not None else DictMemory(), HourlyBudget(10_000, 50_000))
    return Learner(ModelHandle(LinearChampion()), decisions.get, clock_ms=clock,
                   publish_each_batch=False, ledger=ledger, waiting=WaitingRoom(limit, wait_ms))


def weights(learner: Learner) -> list:
    return dumps(learner.handle.model.to_state())


def test_a_label_that_comes_first_waits_and_is_learned_once_its_decision_is_recorded():
    clock, decisions = Clock(), {}
    learner = make(decisions, clock)
    out = learner.learn([label(1)], [10], 0)
    assert out.learned == 0 and out.rejections == [] and out.waiting == 1
    assert learner.learn_waiting()[0].learned == 0  # nothing arrived: it keeps waiting
    decisions["t-1"] = decision(1, clock.ms)
    learner.waiting.arrived("t-1")
    out, tried = learner.learn_waiting()
    assert out.learned == 1 and [(w.partition, w.offset) for w in tried] == [(0, 10)]
    assert len(learner.waiting) == 0 and out.activity.frauds.tolist() == [1.0]


def test_the_wait_is_bounded_by_count_full_is_refused_at_once():
    clock = Clock()
    learner = make({}, clock, limit=3)
    out = learner.learn([label(i) for i in range(5)], list(range(5)), 0)
    assert out.waiting == 3 and out.full == 2
    assert [(r.index, r.reason) for r in out.rejections] == [(3, WAIT_FULL), (4, WAIT_FULL)]
    assert "3 labels already wait" in out.rejections[0].detail


def test_the_wait_expires_oldest_first_with_the_records_own_position():
    clock = Clock()
    learner = make({}, clock, wait_ms=300_000)
    learner.learn([label(1)], [7], 2)
    clock.ms += 100_000
    learner.learn([label(2)], [8], 2)
    clock.ms += 200_000  # the first waited 300 s, the second 200 s
    out, tried = learner.learn_waiting()
    assert [(r.reason, tried[r.index].offset) for r in out.rejections] == [(NEVER_ARRIVED, 7)]
    assert "within 300 s" in out.rejections[0].detail and tried[0].value == label(1)
    assert out.gave_up == 1 and len(learner.waiting) == 1
    clock.ms += 100_000
    assert [tried.offset for tried in learner.learn_waiting()[1]] == [8]


def test_waiting_labels_are_learned_in_arrival_order_whatever_order_decisions_come_in():
    clock, decisions = Clock(), {}
    learner = make(decisions, clock)
    learner.learn([label(i) for i in (3, 1, 2)], [0, 1, 2], 0)
    for i in (2, 1, 3):
        decisions[f"t-{i}"] = decision(i, clock.ms)
        learner.waiting.arrived(f"t-{i}")
    out, _ = learner.learn_waiting()
    assert [fb["transaction_id"] for _, _, fb in out.labelled] == ["t-3", "t-1", "t-2"]


def test_a_waiting_label_is_learned_exactly_once_whichever_snapshot_the_learner_resumes_from():
    clock, decisions = Clock(), {}
    memory = DictMemory()
    a = make(decisions, clock, memory=memory)
    a.learn([label(1), label(2)], [0, 1], 0)  # t-1 known, t-2 not yet
    decisions["t-1"] = decision(1, clock.ms)
    a.learn([label(1, "fraud")], [2], 0)  # a repeat of nothing: t-1's first label now
    assert a.learn_waiting()[0].learned == 0
    older = loads(dumps(a.to_state()))  # t-1 and t-2 wait in it (t-1 learned at offset 2)
    decisions["t-2"] = decision(2, clock.ms)
    for tx in ("t-1", "t-2"):
        a.waiting.arrived(tx)
    a.learn_waiting()
    newer = loads(dumps(a.to_state()))
    assert newer["waiting"] == {} and older["waiting"] == {"0": {"offsets": [0, 1],
                                                                 "waited_s": [0, 0]}}
    check_learner_snapshot({"kind": "learner", "snapshot_seq": 1, "saved_at_ms": 0, **older})

    b = make(decisions, clock, memory=memory)  # from the newest: nothing waits, offsets seen
    b.restore(newer)
    assert b.learn([label(1), label(2), label(1)], [0, 1, 2], 0).replayed == 3
    assert weights(b) == weights(a)

    c = make(decisions, clock, memory=memory)  # from the older: positions read again, learned once
    c.restore(older)
    assert c.waiting.unloaded(0) == [0, 1]
    c.waiting.load(0, 0, label(1))
    c.waiting.load(0, 1, label(2))
    out, _ = c.learn_waiting()
    assert weights(c) == weights(a)
    assert out.learned + out.repeats == 2 and c.learn_waiting()[0].learned == 0


def test_a_label_for_a_pruned_decision_whose_label_row_is_kept_is_expired_not_waiting():
    clock = Clock()
    memory = DictMemory({"t-1": {"label": 1, "source": "review", "reviewer": "ana", "at_ms": 0,
                              "learned": [[0, 1]]}})
    learner = make({}, clock, memory=memory)
    out = learner.learn([label(1, "legit")], [5], 0)
    assert [r.reason for r in out.rejections] == ["expired_transaction"] and out.waiting == 0


def test_without_a_waiting_room_an_early_label_is_unknown_at_once():
    learner = Learner(ModelHandle(LinearChampion()), {}.get, clock_ms=Clock())
    assert [r.reason for r in learner.learn([label(1)], [0], 0).rejections] == ["unknown_transaction"]


def test_the_waiting_positions_cost_a_few_bytes_each_in_the_snapshot():
    clock = Clock()
    learner = make({}, clock, limit=10_000)
    for start in range(0, 10_000, 500):
        learner.learn([label(i) for i in range(start, start + 500)],
                      list(range(3 * start, 3 * start + 1500, 3)), start % 4)
        clock.ms += 1_000
    state = learner.to_state()
    size = len(dumps(state["waiting"]))
    assert len(learner.waiting) == 10_000 and size < 80_000, size
    check_learner_snapshot({"kind": "learner", "snapshot_seq": 1, "saved_at_ms": 0, **state})
    restored = make({}, clock, limit=10_000)
    restored.restore(loads(dumps(state)))
    assert sum(len(restored.waiting.unloaded(p)) for p in range(4)) == 10_000


def test_a_restore_keeps_how_long_each_label_waited_not_the_downtime():
    clock = Clock()
    learner = make({}, clock, wait_ms=60_000)
    learner.learn([label(1)], [0], 0)
    clock.ms += 50_000
    state = loads(dumps(learner.to_state()))
    clock.ms += 3_600_000  # down for an hour
    back = make({}, clock, wait_ms=60_000)
    back.restore(state)
    back.waiting.load(0, 0, label(1))
    assert back.learn_waiting()[0].gave_up == 0  # 50 s waited: 10 s left
    clock.ms += 10_000
    assert back.learn_waiting()[0].gave_up == 1


@pytest.mark.parametrize("per_call", [2, 3, 100])
def test_the_sweep_prunes_a_bounded_slice_per_call_and_counts_what_it_keeps(per_call):
    rows = {f"t-{i:03d}".encode(): dumps({"scored_at_ms": i}) for i in range(10)}
    sweep = TableSweep(lambda key, value: loads(value)["scored_at_ms"] < 4, rows_per_call=per_call)
    calls = 0
    while True:
        after = sweep.after(0)
        keys = sorted(k for k in rows if after is None or k > after)[:per_call]
        for key in sweep.step(0, [(k, rows[k]) for k in keys]):
            del rows[key]
        calls += 1
        if sweep.after(0) is None:
            break
    assert sorted(rows) == [f"t-{i:03d}".encode() for i in range(4, 10)]
    assert sweep.stored() == 6 and calls == 10 // per_call + 1


def test_a_label_whose_decision_is_there_without_being_recorded_here_is_found_not_given_up():
    """After a restore the decisions table comes back from its changelog: nobody calls
    ``arrived`` for those decisions. A periodic recheck finds them, in turn, a bounded
    number at a time; and a label whose wait is over is learned if its decision is known."""
    from flagstream.scoring.feedback_wait import WaitingRoom

    room = WaitingRoom(limit=100, wait_ms=1_000)
    for i in range(10):
        room.hold(b"{}", f"t-{i}", 0, i, now_ms=0)
    present = {"t-3", "t-7"}
    assert room.recheck(lambda tx: tx in present, limit=4) == 1  # t-0..t-3
    assert room.recheck(lambda tx: tx in present, limit=4) == 1  # t-4..t-7
    ready, expired = room.due(now_ms=10, known=lambda tx: tx in present)
    assert [w.transaction_id for w in ready] == ["t-3", "t-7"] and expired == []
    present.add("t-9")  # known, but nobody said so: its wait ends, it is learned
    ready, expired = room.due(now_ms=1_000, known=lambda tx: tx in present)
    assert [w.transaction_id for w in ready] == ["t-9"]
    assert sorted(w.transaction_id for w in expired) == [f"t-{i}" for i in (0, 1, 2, 4, 5, 6, 8)]
    assert len(room) == 0
