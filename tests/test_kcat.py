"""A standard Kafka client we did not write (Debian's kcat) produces and reads plain JSON."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from kafka_helpers import FLAG_EVERYTHING, read_json

from flagstream.codec import dumps, loads

pytestmark = pytest.mark.integration


def test_kcat_transaction_is_scored_and_review_is_plain_json(settings, worker_factory):
    kcat = shutil.which("kcat")
    assert kcat, "kcat is installed by `make install` (Debian package kcat)"
    worker_factory(**FLAG_EVERYTHING)  # flag everything so the record reaches `review`
    record = {
        "transaction_id": "kcat-1",
        "account_id": "c-kcat",
        "merchant_id": "m-1",
        "amount": 42.5,
        "timestamp": "2018-04-01T12:00:00+00:00",
    }
    # kcat's own partitioner (librdkafka consistent_random) may pick another partition
    # than the account's: the worker re-routes it before scoring.
    subprocess.run(
        [kcat, "-b", settings.broker, "-t", settings.topic("transactions"), "-P", "-k", "c-kcat"],
        input=dumps(record) + b"\n", check=True, timeout=30,
    )
    scores = read_json(settings, "scores", 1)
    assert [d["transaction_id"] for d in scores] == ["kcat-1"]
    out = subprocess.run(
        [kcat, "-b", settings.broker, "-t", settings.topic("review"), "-C", "-e", "-o", "beginning",
         "-q", "-f", "%s\n"],
        capture_output=True, check=True, timeout=60,
    )
    flagged = [loads(line) for line in out.stdout.splitlines() if line.strip()]
    assert [f["transaction_id"] for f in flagged] == ["kcat-1"]
    assert flagged[0]["reasons"] is not None and flagged[0]["model_version"]
