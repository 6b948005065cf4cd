"""The learner's batched label path against its one-label-at-a-time reference.

A batch of feedback is judged label by label (hostile ones refused one by one, with their
reasons), then the admitted labels are learned as arrays: the champion's and every
challenger's ``learn_many``, the gate in order, the operating point's tally at once. Each of
those has a per-label reference; on random batches (hostile records among them) both paths
must end with exactly the same models, gate, tally and outcome.
"""

from __future__ import annotations

import copy
import math

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from flagstream.codec import deeper_than, deeper_than_reference, dumps
from flagstream.features.layout import DAY_MS, N_FEATURES
from flagstream.scoring.challengers import ShadowSet, challengers_from_spec
from flagstream.scoring.feedback import (
    MAX_DECISION_NESTING,
    MAX_FEATURE,
    _features_ok,
    _plainly_fit,
    check_decision,
    check_decision_reference,
)
from flagstream.scoring.gate import Gate, GateConfig
from flagstream.scoring.handle import ModelHandle, new_model
from flagstream.scoring.label_ledger import DictMemory, HourlyBudget, LabelLedger
from flagstream.scoring.learner import Learner
from flagstream.scoring.operating_point import OperatingPoint
from flagstream.scoring.score_tally import ScoreTally

SPEC = "fast:learning_rate=0.5;lin:model=linear"


class ReferenceLearner(Learner):
    """The same learner, learning each admitted label in turn."""

    def _learn_labelled(self, labelled):  # type: ignore[override]
        self._learn_labelled_reference(labelled)


def decisions_for(n: int, seed: int) -> dict[str, dict]:
    """``n`` recorded decisions, as the scorer writes them, with shadow scores."""
    rng = np.random.default_rng(seed)
    features = rng.gamma(1.5, 20.0, size=(n, N_FEATURES)).round(6)
    scores = rng.beta(1, 8, n).round(6)
    out = {}
    for i in range(n):
        out[f"t-{i}"] = {
            "transaction_id": f"t-{i}", "merchant_id": f"m-{i % 7}", "event_time_ms": i * 60_000,
            "scored_at_ms": i * 60_000, "score": float(scores[i]),
            "decision": "review" if scores[i] > 0.2 else "approve", "model_version": "gam-000001",
            "features": features[i].tolist(),
            "shadow": {"fast": round(float(rng.random()), 6), "lin": round(float(rng.random()), 6)},
        }
    return out


def learner(cls: type[Learner], kind: str, decisions: dict[str, dict], ledger: bool) -> Learner:
    model = new_model(kind)
    return cls(
        ModelHandle(model), decisions.get, retention_ms=35 * DAY_MS, clock_ms=lambda: 10 * DAY_MS,
        shadow=ShadowSet(challengers_from_spec(SPEC, model)),
        gate=Gate(GateConfig(min_labels=5, min_frauds=1, cooldown_labels=5)),
        ledger=LabelLedger(DictMemory(), HourlyBudget(per_reviewer=40, per_source=60)) if ledger else None,
    )


#: One feedback record: a good label, a repeat, a second (conflicting) label, or hostile bytes.
feedback = st.one_of(
    st.builds(lambda i, y, s: dumps({"transaction_id": f"t-{i}", "label": y, "source": s}),
              st.integers(0, 59), st.sampled_from(["fraud", "legit"]),
              st.sampled_from(["review", "chargeback", "auto"])),
    st.sampled_from([b"{", b"[]", b'{"transaction_id": "t-999", "label": "fraud"}',
                     b'{"transaction_id": "t-1", "label": "maybe"}', b'{"label": "fraud"}', None,
                     b'{"transaction_id": "t-2", "label": "fraud", "source": "mail"}']),
)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(feedback, max_size=40), min_size=1, max_size=4),
       st.sampled_from(["binned", "linear"]), st.booleans(), st.integers(0, 3))
def test_a_batch_learns_what_one_label_at_a_time_learns(batches, kind, ledger, seed):
    decisions = decisions_for(50, seed)  # t-50..t-59 have none: unknown_transaction
    fast, slow = (learner(cls, kind, decisions, ledger) for cls in (Learner, ReferenceLearner))
    for values in batches:
        a, b = fast.learn(values), slow.learn(values)
        assert [(r.index, r.reason) for r in a.rejections] == [(r.index, r.reason) for r in b.rejections]
        assert (a.learned, a.frauds, a.repeats, a.replaced) == (b.learned, b.frauds, b.repeats, b.replaced)
        assert a.labelled == b.labelled
    assert fast.handle.model.to_state() == slow.handle.model.to_state()
    assert fast.shadow.to_state() == slow.shadow.to_state()
    assert fast.gate is not None and slow.gate is not None
    assert fast.gate.to_state() == slow.gate.to_state()
    assert list(fast.gate.recent) == list(slow.gate.recent)
    assert fast.gate.alarm == slow.gate.alarm


def test_hostile_labels_are_still_refused_one_by_one_beside_the_learned_ones():
    decisions = decisions_for(5, 0)
    decisions["t-4"] = {**decisions["t-4"], "features": [math.nan] * N_FEATURES}
    values = [b"{", dumps({"transaction_id": "t-1", "label": "fraud", "source": "chargeback"}),
              b'{"transaction_id": "t-77", "label": "fraud"}',
              dumps({"transaction_id": "t-1", "label": "fraud", "source": "chargeback"}),
              dumps({"transaction_id": "t-1", "label": "legit", "source": "auto"}),
              dumps({"transaction_id": "t-4", "label": "legit", "source": "auto"}),
              dumps({"transaction_id": "t-2", "label": "legit", "source": "auto"})]
    out = learner(Learner, "binned", decisions, ledger=True).learn(values)
    assert [(r.index, r.reason) for r in out.rejections] == [
        (0, "invalid_json"), (2, "unknown_transaction"), (4, "conflicting_label"),
        (5, "invalid_decision")]
    assert (out.learned, out.repeats, out.frauds) == (2, 1, 1)


labels_in = st.lists(st.tuples(
    st.one_of(st.floats(-0.5, 1.5), st.just(math.nan)), st.booleans(), st.booleans(),
    st.one_of(st.floats(-1e6, 1e7), st.sampled_from([math.inf, -math.inf, math.nan]))), max_size=60)


@settings(max_examples=80, deadline=None)
@given(labels_in, st.floats(0, 5e6), st.booleans())
def test_tally_counts_labels_at_once_as_one_at_a_time(rows, newest_s, restarted):
    fast, slow = ScoreTally(bucket_s=3_600, keep_s=86_400), ScoreTally(bucket_s=3_600, keep_s=86_400)
    for tally in (fast, slow):
        tally.add_traffic(np.array([0.5]), np.array([True]), at_s=newest_s)
        if restarted:
            tally.restart()
    scores, frauds, flags, at = (np.array(column, dtype=np.float64) for column in zip(*rows, strict=True)) \
        if rows else (np.empty(0),) * 4
    fast.add_labels(scores, frauds.astype(bool), flags.astype(bool), at)
    for score, fraud, flagged, at_s in rows:
        slow.add_label(score, fraud, flagged, at_s)
    assert {k: v.tolist() for k, v in fast.buckets.items() if v.any()} == {
        k: v.tolist() for k, v in slow.buckets.items() if v.any()}


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 5), st.integers(1, 300))
def test_operating_point_observes_labelled_batches_as_one_label_at_a_time(seed, n):
    rng = np.random.default_rng(seed)
    ops = [OperatingPoint(target_fdr=0.2, initial_threshold=0.3, min_labels=20, min_frauds=3,
                          min_new_labels=0) for _ in range(2)]
    for hour in range(6):
        scores = rng.beta(1, 5, n)
        for op in ops:
            op.observe_traffic(scores, scores >= op.threshold, at_s=hour * 3_600.0)
        labelled = [({"score": float(s), "decision": "review" if s >= ops[0].threshold else "approve",
                      "event_time_ms": hour * 3_600_000 + int(i)}, int(rng.random() < s), {})
                    for i, s in enumerate(scores)]
        a = ops[0].observe_labelled(labelled)
        b = ops[1].observe_labelled_reference(labelled)
        assert a.as_dict() == b.as_dict()
        assert ops[0].labels_since_move == ops[1].labels_since_move
    assert np.array_equal(ops[0].counts().rows, ops[1].counts().rows)


def features_reference(features: object, n_features: int) -> bool:
    """What ``_features_ok`` decides, one value at a time."""
    return isinstance(features, list) and len(features) == n_features and all(
        isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
        and abs(x) <= MAX_FEATURE for x in features)


values = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(-2e12, 2e12),
                   st.integers(-2 * 10**12, 2 * 10**12), st.booleans(), st.sampled_from([1e308, -1e308]))


@settings(max_examples=300, deadline=None)
@given(st.lists(values, min_size=0, max_size=6), st.integers(0, 6))
def test_the_fast_feature_check_decides_as_the_value_by_value_one(features, n):
    assert _features_ok(features, n) == features_reference(features, n)


nested = st.recursive(
    st.integers() | st.text(max_size=2),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner, max_size=3),
    max_leaves=20)


def deep(kind: str, depth: int) -> object:
    value: object = []
    for _ in range(depth):
        value = {"k": value} if kind == "dict" else [1, value]
    return value


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["reasons", "context", "x"]), nested, max_size=3))
@example({"reasons": deep("list", MAX_DECISION_NESTING)})
@example({"reasons": deep("list", MAX_DECISION_NESTING - 1)})
@example({"context": deep("dict", MAX_DECISION_NESTING)})
@example({"context": deep("dict", MAX_DECISION_NESTING - 1), "reasons": []})
def test_a_decision_is_refused_for_nesting_exactly_when_the_whole_record_is_too_deep(extra):
    d = {**decisions_for(1, 0)["t-0"], **extra}
    try:
        check_decision(d, N_FEATURES)
        refused = False
    except Exception as exc:  # noqa: BLE001 - only the nesting reason is compared
        refused = "nested too deep" in str(exc)
    assert refused == deeper_than(d, MAX_DECISION_NESTING)




class Listed(list):
    """A list subclass (``isinstance`` says list, ``type`` does not)."""


class Mapped(dict):
    """A dict subclass."""


#: JSON-like values with scalars of every kind and, sometimes, containers of the subclasses.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=2),
    lambda inner: (st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner, max_size=4)
                   | st.builds(lambda v: Listed(v), st.lists(inner, max_size=2))
                   | st.builds(lambda v: Mapped(v), st.dictionaries(st.text(max_size=2), inner, max_size=2))),
    max_leaves=12)


@settings(max_examples=400, deadline=None)
@given(json_values, st.integers(-1, 4))
@example({"a": 1, "b": "x", "c": None}, 0)
@example({"a": 1, "b": "x", "c": None}, 1)
@example({}, 0)
def test_the_quick_nesting_check_decides_as_the_walk(value, limit):
    assert deeper_than(value, limit) == deeper_than_reference(value, limit)


#: Anything a field of a decision read from the topic may hold.
field_values = st.one_of(
    values, st.text(max_size=3), st.none(), st.just(""), st.just("m" * 129),
    st.integers(-1, 10**15 + 1), st.sampled_from([0.0, 1.0, -0.0, 1.5, 10**15 - 1]),
    nested, st.builds(Listed, st.lists(st.floats(0, 1), max_size=2)),
    st.builds(Mapped, st.dictionaries(st.text(max_size=2), st.floats(0, 1), max_size=2)),
    st.dictionaries(st.text(max_size=2), st.floats(-1, 2), max_size=2),
)
#: A change to a recorded decision: a field set, a field removed, or a feature replaced.
changes = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(
        ["score", "merchant_id", "event_time_ms", "scored_at_ms", "shadow", "reasons", "features",
         "decision", "x"]), field_values),
    st.tuples(st.just("drop"), st.sampled_from(["score", "merchant_id", "event_time_ms", "features"]),
              st.none()),
    st.tuples(st.just("feature"), st.integers(0, N_FEATURES - 1), values),
    st.tuples(st.just("features"), st.sampled_from(["short", "subclass", "alias", "huge"]), st.none()),
)


def outcome_of(check, d: object, earlier: tuple[int, ...]) -> object:
    """What ``check`` says of a copy of ``d`` (it may fill in an earlier layout's features),
    and the copy after it."""
    mine = copy.deepcopy(d)
    try:
        return check(mine, N_FEATURES, earlier) is mine, mine
    except Exception as exc:  # noqa: BLE001 - the reason and message are compared
        return type(exc).__name__, getattr(exc, "reason", None), str(exc)


@settings(max_examples=400, deadline=None)
@given(st.lists(changes, max_size=4), st.integers(0, 5),
       st.sampled_from([(), (N_FEATURES - 1,), (N_FEATURES - 3, N_FEATURES - 1)]))
@example([], 0, ())
@example([("set", "shadow", None)], 0, ())
@example([("features", "huge", None)], 0, ())
@example([("features", "alias", None)], 0, ())
@example([("features", "short", None)], 0, (N_FEATURES - 1,))
def test_the_quick_decision_check_decides_as_the_reference(edits, seed, earlier):
    d: dict = {k: v for k, v in decisions_for(6, seed)[f"t-{seed}"].items() if k != "shadow"}
    for kind, key, value in edits:
        if kind == "set":
            d[key] = value
        elif kind == "drop":
            d.pop(key, None)
        elif kind == "feature" and isinstance(d.get("features"), list) and key < len(d["features"]):
            d["features"] = [*d["features"][:key], value, *d["features"][key + 1:]]
        elif kind == "features" and isinstance(d.get("features"), list):
            f = d["features"]
            d["features"] = {"short": f[:-1], "subclass": Listed(f), "huge": [MAX_FEATURE / 2] * len(f),
                             "alias": f}[key]
            if key == "alias":
                d["copy"] = f  # the same list twice
    expected = outcome_of(check_decision_reference, d, earlier)
    assert outcome_of(check_decision, d, earlier) == expected
    if _plainly_fit(d, N_FEATURES):
        assert expected == (True, d)


def test_an_approval_as_the_scorer_writes_it_is_plainly_fit():
    d = {k: v for k, v in decisions_for(1, 0)["t-0"].items() if k != "shadow"}
    assert _plainly_fit(d, N_FEATURES)
    assert not _plainly_fit({**d, "reasons": [{"feature": "amount"}]}, N_FEATURES)
    assert check_decision({**d, "reasons": [{"feature": "amount"}]}, N_FEATURES)["reasons"]


steps_in = st.lists(st.tuples(
    st.sampled_from(["traffic", "traffic", "labels", "window", "window", "restart"]),
    st.floats(0, 5 * 3_600.0), st.integers(1, 5), st.integers(0, 99)), max_size=80)


@settings(max_examples=150, deadline=None)
@given(steps_in)
def test_kept_window_sums_equal_adding_up_every_bucket_afresh(steps):
    tally, now = ScoreTally(bucket_s=3_600.0, keep_s=48 * 3_600.0), 0.0
    roles = ((24, 0), (24, 10), (12, 0), (0, 0), (47, 0), (60, 3))  # (hours long, hours before now)
    for op, dt, n, seed in steps:
        rng = np.random.default_rng(seed)
        if op == "traffic":  # time goes on (traffic moves it), sometimes by many buckets
            now += dt * (1 if seed % 4 else 10)
            tally.add_traffic(rng.random(n), rng.random(n) < 0.3, at_s=now)
        elif op == "labels":  # labels of transactions up to two days old (some too old)
            tally.add_labels(rng.random(n), rng.random(n) < 0.5, rng.random(n) < 0.5,
                             now - rng.random(n) * 60 * 3_600.0)
        elif op == "restart":
            tally.restart()
        for hours, before in roles if op == "window" or seed % 3 == 0 else ():
            end = tally.newest_s - before * 3_600.0
            start = end - hours * 3_600.0
            assert np.array_equal(tally.window(start, end).rows, tally.window_reference(start, end).rows)
    for hours, before in roles:
        end = tally.newest_s - before * 3_600.0
        start = end - hours * 3_600.0
        assert np.array_equal(tally.window(start, end).rows, tally.window_reference(start, end).rows)


def test_kept_window_sums_follow_a_steady_stream_past_forgotten_buckets():
    tally, rng = ScoreTally(bucket_s=3_600.0, keep_s=48 * 3_600.0), np.random.default_rng(3)
    for hour in range(120):
        tally.add_traffic(rng.random(20), rng.random(20) < 0.3, at_s=hour * 3_600.0 + 5.0)
        tally.add_labels(rng.random(5), rng.random(5) < 0.5, rng.random(5) < 0.5,
                         hour * 3_600.0 - rng.random(5) * 50 * 3_600.0)
        for hours, before in ((24, 0), (24, 10), (60, 3), (1, 0)):
            end = tally.newest_s - before * 3_600.0
            start = end - hours * 3_600.0
            assert np.array_equal(tally.window(start, end).rows, tally.window_reference(start, end).rows)
    assert len(tally._sums) == 4
