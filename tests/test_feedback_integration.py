"""Honest feedback on the real broker: a flooded feedback topic teaches one label per transaction."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from kafka_helpers import produce_json, read_json, read_topic
from model_helpers import registry, wait_until

from flagstream.codec import loads

pytestmark = pytest.mark.integration


def transaction(i: int) -> dict:
    return {"transaction_id": f"t-{i:05d}", "account_id": f"c-{i % 5}", "merchant_id": f"m-{i % 3}",
            "amount": 20.0 + i, "currency": "USD",
            "timestamp": f"2018-04-01T00:{i % 60:02d}:00Z"}


def merchant_frauds(settings) -> float:
    """Fraud labels the learner has sent to merchant state so far (every record on the topic)."""
    records = asyncio.run(read_topic(settings, "merchant.activity", 10**6, timeout_s=3, settle_s=0))
    return sum(sum(loads(r.value)["f"]) for r in records)


def test_a_flooded_feedback_topic_teaches_one_label_and_dead_letters_the_rest(
        settings, worker_factory, tmp_path):
    worker = worker_factory()  # the untrained champion flags nothing: every decision is approve
    txs = [transaction(i) for i in range(20)]
    produce_json(settings, "transactions", txs, "account_id")
    decisions = read_json(settings, "scores", len(txs))
    assert {d["decision"] for d in decisions} == {"approve"}
    wait_until(lambda: worker.metric("flagstream_decisions_recorded_total") >= len(txs), 30,
               "decisions recorded by the learner", worker)
    target, other = txs[0]["transaction_id"], txs[1]["transaction_id"]
    fraud = {"transaction_id": target, "label": "fraud", "source": "chargeback"}
    flood = [fraud] * 2_000
    conflicting = [{"transaction_id": target, "label": "legit", "source": "auto"}] * 300
    unflagged = [{"transaction_id": other, "label": "fraud", "source": "review",
                  "reviewer": "mallory"}] * 50
    produce_json(settings, "feedback", flood, "transaction_id")
    produce_json(settings, "feedback", conflicting + unflagged, "transaction_id")

    letters = read_json(settings, "feedback.dlq", len(conflicting) + len(unflagged), timeout_s=90)
    assert Counter(x["reason"] for x in letters) == {"conflicting_label": len(conflicting),
                                                     "not_flagged": len(unflagged)}
    wait_until(lambda: worker.metric("flagstream_feedback_ignored_total") >= len(flood) - 1, 60,
               "every copy counted as a repeat", worker)
    assert worker.metric("flagstream_feedback_labels_total") == 1
    assert worker.metric("flagstream_feedback_ignored_total") == len(flood) - 1
    champion = wait_until(lambda: (c := registry(settings).champion) and c, 30, "a champion", worker)
    assert champion["labels"] == 1
    assert merchant_frauds(settings) == 1

    # the memory is durable: a new worker with an empty data directory rebuilds it from Kafka
    worker.stop()
    second = worker_factory(data_dir=str(tmp_path / "second"))
    produce_json(settings, "feedback", [fraud, conflicting[0]], "transaction_id")
    letters = read_json(settings, "feedback.dlq", len(letters) + 1, timeout_s=90)
    assert Counter(x["reason"] for x in letters) == {"conflicting_label": len(conflicting) + 1,
                                                     "not_flagged": len(unflagged)}
    wait_until(lambda: second.metric("flagstream_feedback_ignored_total") >= 1, 60,
               "the copy after the restart counted as a repeat", second)
    assert second.metric("flagstream_feedback_labels_total") == 0
    assert merchant_frauds(settings) == 1
