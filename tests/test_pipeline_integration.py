"""End to end on the real broker: counts, dead letters, review, learning from feedback.

Decisions are checked against the same core run in-process with the same model."""

from __future__ import annotations

import asyncio

import pytest
from kafka_helpers import FLAG_EVERYTHING, produce, produce_json, read_json, read_topic
from model_helpers import (
    decided,
    in_process,
    labelled_metric,
    publish_champion,
    registry,
    serving_version,
    train_offline,
    wait_until,
)

from flagstream.codec import dumps
from flagstream.scoring.handle import parse_version

pytestmark = pytest.mark.integration


def transaction(i: int, amount: float, account: str | None = None, day: int = 1) -> dict:
    return {
        "transaction_id": f"t-{i:05d}",
        "account_id": account or f"c-{i % 25}",
        "merchant_id": f"m-{i % 11}",
        "amount": amount,
        "currency": "USD",
        "timestamp": f"2018-04-{day:02d}T{(i // 60) % 24:02d}:{i % 60:02d}:00Z",
        "card_number": "4111111111111111",
    }


INVALID = [
    b"not json at all",
    b"[1, 2, 3]",
    dumps({"transaction_id": "bad-1", "account_id": "c-1", "merchant_id": "m-1", "amount": -5,
           "timestamp": "2018-04-01T00:00:00Z"}),
    dumps({"transaction_id": "bad-2", "account_id": "c-1", "merchant_id": "m-1", "amount": 5}),
    dumps({"transaction_id": "bad-3", "account_id": "c-1", "merchant_id": "m-1", "amount": 5,
           "timestamp": "yesterday"}),
    dumps({"transaction_id": "bad-4", "account_id": "c-1", "merchant_id": "m-1", "amount": "5",
           "timestamp": "2018-04-01T00:00:00Z"}),
    dumps({"transaction_id": "bad-5", "account_id": "c-1", "merchant_id": "m-1", "amount": 5,
           "timestamp": "2018-04-01T00:00:00Z", "x": {"a": {"b": {"c": {"d": {"e": {"f": {
               "g": {"h": 1}}}}}}}}}),
    b'{"transaction_id": "bad-6", "pan": "4111 1111 1111 1111", "amount": 1e999}',
]
INVALID_REASONS = [
    "invalid_json", "not_an_object", "invalid_amount", "missing_field", "invalid_timestamp",
    "invalid_amount", "too_deep", "invalid_json",
]


def fraud_if_large(decision: dict) -> bool:
    return decision["amount"] > 500


def trained_champion() -> dict:
    """A champion trained offline (other accounts and ids): large amounts are fraud."""
    history = [transaction(50_000 + i, 900.0 if i % 5 == 0 else 15.0 + i % 9, f"x-{i % 30}")
               for i in range(600)]
    return train_offline(history, fraud_if_large)


def assert_same_decisions(got: dict[str, dict], want: dict[str, dict]) -> None:
    """Every decision of the worker equals the in-process core's for the same transaction."""
    assert set(got) == set(want)
    for tx, decision in got.items():
        assert decided(decision) == decided(want[tx]), tx


def test_valid_and_invalid_records_each_end_in_exactly_one_place(settings, worker_factory):
    state = trained_champion()
    version = publish_champion(settings, state)
    worker = worker_factory()
    wait_until(lambda: serving_version(worker) == version, 30, "the published champion in use", worker)
    keyed = [transaction(i, 900.0 if i % 10 == 0 else 20.0 + (i % 7)) for i in range(150)]
    # an unkeyed producer: records land anywhere and are re-sent to their account's partition.
    # One record per account here, so each account's order (keyed first) is the input order.
    unkeyed = [transaction(i, 900.0 if i % 10 == 0 else 20.0 + (i % 7), f"c-{i - 150}")
               for i in range(150, 300)]
    valid = [*keyed, *unkeyed]
    duplicate = dict(valid[5])  # same id, same account: a producer retry
    produce_json(settings, "transactions", keyed, "account_id")
    produce_json(settings, "transactions", unkeyed, None)
    invalid = [*INVALID, dumps(duplicate)]
    asyncio.run(produce(settings, "transactions", [(None, v) for v in invalid]))

    scores = read_json(settings, "scores", len(valid))
    assert sorted(d["transaction_id"] for d in scores) == sorted(t["transaction_id"] for t in valid)
    dlq = read_json(settings, "transactions.dlq", len(invalid))
    assert len(dlq) == len(invalid)
    assert sorted(d["reason"] for d in dlq) == sorted([*INVALID_REASONS, "duplicate_transaction"])
    for letter in dlq:
        assert letter["source"]["topic"] == settings.topic("transactions")
        assert letter["detail"]
        assert "4111" not in letter["original"], "card numbers must be masked in dead letters"
    for decision in scores:
        assert "card_number" not in decision and "4111111111111111" not in str(decision)
        assert decision["model_version"] == version and 0.0 <= decision["score"] <= 1.0

    # the worker decided exactly what the core decides in-process with the same model
    got = {d["transaction_id"]: d for d in scores}
    want = in_process([valid], [state], [settings.threshold])
    assert_same_decisions(got, want)
    flagged_ids = {t for t, d in got.items() if d["decision"] == "review"}
    assert flagged_ids == {t for t, d in want.items() if d["decision"] == "review"}
    assert flagged_ids == {t["transaction_id"] for t in valid if t["amount"] > 500}
    review = read_json(settings, "review", len(flagged_ids), timeout_s=10)
    assert sorted(r["transaction_id"] for r in review) == sorted(flagged_ids)
    for r in review:
        assert r["reasons"] and r["score"] == got[r["transaction_id"]]["score"]


def test_feedback_is_learned_and_the_learned_model_scores_new_transactions(
    settings, worker_factory, monkeypatch
):
    monkeypatch.setenv("FLAGSTREAM_CHALLENGERS", "")  # one lineage: the champion learns every label
    monkeypatch.setenv("FLAGSTREAM_MODEL_PUBLISH_INTERVAL_S", "0.2")
    worker = worker_factory(feedback_wait_s=2.0)  # a label for a transaction never scored waits 2 s
    initial = serving_version(worker)
    # big amounts at a "bad" merchant are fraud, small ones legit
    first = [transaction(i, 900.0 if i % 5 == 0 else 15.0 + i % 9) for i in range(200)]
    produce_json(settings, "transactions", first, "account_id")
    scores = {d["transaction_id"]: d for d in read_json(settings, "scores", len(first))}
    assert len(scores) == len(first) and {d["model_version"] for d in scores.values()} == {initial}
    assert not any(d["decision"] == "review" for d in scores.values())  # untrained: flags nothing
    before = {t: d["score"] for t, d in scores.items()}
    # feedback joins the decision the learner recorded: wait for those, not for a while
    wait_until(lambda: worker.metric("flagstream_decisions_recorded_total") >= len(first), 30,
               "decisions recorded by the learner", worker)
    # nothing was flagged: the labels that may come are chargebacks (fraud) and auto (legit)
    labels = [
        {"transaction_id": t["transaction_id"], "label": "fraud" if t["amount"] > 500 else "legit",
         "source": "chargeback" if t["amount"] > 500 else "auto"}
        for t in first
    ]
    repeats = [fb for fb in labels[:100] if fb["label"] == "fraud"]  # sent twice: learned once
    produce_json(settings, "feedback", [*labels, *repeats], "transaction_id")
    bad = [
        {"transaction_id": "never-scored", "label": "fraud", "source": "review"},
        {"transaction_id": "t-00001", "label": "maybe"},
        {"transaction_id": "t-00002", "label": "fraud", "source": "review"},  # never flagged
    ]
    produce_json(settings, "feedback", bad, "transaction_id")
    total = len(labels)
    wait_until(lambda: worker.metric("flagstream_feedback_labels_total") >= total, 60,
               "every label learned", worker)
    frauds = sum(fb["label"] == "fraud" for fb in labels)
    assert labelled_metric(worker, "flagstream_feedback_labels_total") == {
        frozenset({("label", "fraud"), ("source", "chargeback")}): frauds,
        frozenset({("label", "legit"), ("source", "auto")}): len(labels) - frauds,
    }
    wait_until(lambda: worker.metric("flagstream_feedback_ignored_total") == len(repeats), 30,
               "every repeat counted", worker)
    letters = read_json(settings, "feedback.dlq", 3)
    assert sorted(x["reason"] for x in letters) == ["decision_never_arrived", "invalid_label",
                                                    "not_flagged"]

    # every label is in the newest published champion, and the scorer swapped to it
    champion = wait_until(lambda: (c := registry(settings).champion) and c["labels"] == total and c,
                          30, "a champion version with every label", worker)
    assert parse_version(champion["version"])[1] > parse_version(initial)[1]
    wait_until(lambda: serving_version(worker) == champion["version"], 30, "the scorer swapped", worker)

    second = [transaction(1000 + i, 900.0 if i % 5 == 0 else 15.0 + i % 9) for i in range(100)]
    produce_json(settings, "transactions", second, "account_id")
    after = read_json(settings, "scores", len(first) + len(second))
    new = {d["transaction_id"]: d for d in after if d["transaction_id"] >= "t-01000"}
    assert len(new) == len(second)
    assert {d["model_version"] for d in new.values()} == {champion["version"]}
    thresholds = {d["threshold"] for d in new.values()}
    assert len(thresholds) == 1
    want = in_process([first, second], [None, champion["state"]], [settings.threshold, *thresholds])
    assert_same_decisions(new, {t: want[t] for t in new})

    big_new = [d["score"] for d in new.values() if d["amount"] > 500]
    small_new = [d["score"] for d in new.values() if d["amount"] < 500]
    big_before = [before[t] for t, d in scores.items() if d["amount"] > 500]
    assert min(big_new) > max(big_before), "fraud feedback must raise scores of similar cases"
    assert sum(big_new) / len(big_new) > 2 * sum(small_new) / len(small_new)
    flagged = {t for t, d in new.items() if d["decision"] == "review"}
    assert flagged and flagged == {t for t in new if want[t]["decision"] == "review"}


def test_review_topic_is_plain_json_readable_by_other_clients(settings, worker_factory):
    worker_factory(**FLAG_EVERYTHING)  # flag everything
    produce_json(settings, "transactions", [transaction(i, 50.0) for i in range(10)], "account_id")
    records = asyncio.run(read_topic(settings, "review", 10))
    assert len(records) == 10
    for r in records:
        assert r.value.startswith(b"{") and b"reasons" in r.value
