"""No card numbers anywhere, on the real broker (issue #11, part 5): hostile records through a
worker, then every topic it writes and its log are read back and searched (the checks of
``tests/test_cards.py``: JSON-decoded, and as raw bytes with escapes decoded and separators
stripped)."""

from __future__ import annotations

import asyncio

import hostile_corpus as hc
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from kafka_helpers import FLAG_EVERYTHING, produce, read_topic
from test_cards import PLACES, VALID, assert_no_card_number

from flagstream.codec import dumps, loads
from flagstream.streams.schema import validate_transactions

pytestmark = pytest.mark.integration

ENCODINGS = {
    "plain": lambda d: d,
    "spaces": lambda d: " ".join(d[i:i + 4] for i in range(0, len(d), 4)),
    "dots": lambda d: ".".join(d[i:i + 4] for i in range(0, len(d), 4)),
    "slashes": lambda d: "/".join(d[i:i + 4] for i in range(0, len(d), 4)),
    "mixed": lambda d: d[:4] + " " + d[4:8] + "-" + d[8:12] + "." + d[12:15] + "/" + d[15:],
    "escaped": lambda d: "".join(f"\\u003{c}" for c in d),
    "escaped_some": lambda d: "\\u0020".join(f"\\u003{g[0]}{g[1:]}" for g in (d[:5], d[5:10], d[10:])),
    "fullwidth": lambda d: "".join(chr(0xFF10 + int(c)) for c in d),
}


def hostile_transactions() -> tuple[list[tuple[bytes, bytes]], list[str]]:
    """(key, value) pairs with card numbers in every place and encoding, plus clean ones."""
    numbers = [hc.luhn_complete(p) for p in ("411111111111", "55000000000000", "340000000000000",
                                              "601100000000000000", "3530111333300000")]
    pairs, n = [], 0
    for number in numbers:
        for encoding in ENCODINGS.values():
            text = encoding(number)
            for place in PLACES:
                n += 1
                record = dict(VALID, transaction_id=f"t-{n}", account_id=f"c-{n % 7}",
                              merchant_id=f"m-{n % 5}")
                marker = "@@CARD@@"
                if place in ("transaction_id", "account_id", "merchant_id"):
                    record[place] = "x-" + marker
                elif place in ("currency", "channel", "country", "note"):
                    record[place] = marker
                elif place == "nested":
                    record["extra"] = {"a": [{"b": marker}]}
                elif place == "key_of_extra":
                    record["extra"] = {marker: 1}
                elif place == "timestamp_fraction":
                    record["timestamp"] = f"2018-04-01T10:00:00.{marker}+00:00"
                raw = dumps(record)
                if place == "integer_extra":
                    raw = raw[:-1] + b',"pan":' + number.encode() + b"}"
                key = text.encode() if n % 2 else str(record["account_id"]).replace(marker, text).encode()
                pairs.append((key, raw.replace(marker.encode(), text.encode())))
    pairs += [(f"c-{i % 7}".encode(), dumps(dict(VALID, transaction_id=f"ok-{i}", account_id=f"c-{i % 7}")))
              for i in range(20)]
    return pairs, numbers


def hostile_feedback(numbers: list[str]) -> list[tuple[bytes, bytes]]:
    return [(ENCODINGS["dots"](n).encode(), dumps({"transaction_id": ENCODINGS[e](n), "label": "fraud",
                                                   "source": "review", "note": ENCODINGS[e](n)}))
            for n in numbers for e in ("plain", "dots", "slashes")]


async def project_topics(broker: str, prefix: str) -> dict[str, int]:
    """Every topic whose name starts with ``prefix``, with its partition count."""
    admin = AIOKafkaAdminClient(bootstrap_servers=broker)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(prefix)]
        return {d["topic"]: len(d["partitions"]) for d in await admin.describe_topics(names)}
    finally:
        await admin.close()


async def read_everything(broker: str, topic: str, partitions: int) -> list:
    """Every record of ``topic`` up to its current end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=broker, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning()
        ends = await consumer.end_offsets(parts)
        records: list = []
        while [tp for tp in parts if await consumer.position(tp) < ends[tp]]:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
        return records
    finally:
        await consumer.stop()


def test_no_card_number_reaches_any_topic_or_the_log(settings, worker_factory):
    """Hostile records through a real worker: then every topic it writes (all but the two the
    producers write, ``transactions`` and ``feedback``) and its log hold no card number."""
    pairs, numbers = hostile_transactions()
    decided = sum(not validate_transactions([v]).rejections for _, v in pairs)
    worker = worker_factory(**FLAG_EVERYTHING)
    asyncio.run(produce(settings, "transactions", pairs))
    feedback = hostile_feedback(numbers)
    asyncio.run(produce(settings, "feedback", feedback))
    assert len(asyncio.run(read_topic(settings, "scores", decided, timeout_s=120))) == decided
    dead = asyncio.run(read_topic(settings, "transactions.dlq", len(pairs) - decided, timeout_s=120))
    assert len(dead) == len(pairs) - decided
    assert {loads(r.value)["reason"] for r in dead} >= {"card_number_in_field", "invalid_timestamp"}
    letters = asyncio.run(read_topic(settings, "feedback.dlq", len(feedback), timeout_s=120))
    assert len(letters) == len(feedback)
    assert len(asyncio.run(read_topic(settings, "review", 1, timeout_s=60))) >= 1
    worker.stop()

    inputs = {settings.topic("transactions"), settings.topic("feedback")}
    topics = {t: n for t, n in asyncio.run(project_topics(settings.broker, settings.topic_prefix)).items()
              if t not in inputs}
    written = {settings.topic(t) for t in ("scores", "review", "transactions.dlq", "feedback.dlq")}
    assert written <= set(topics)
    read = 0
    for topic, partitions in topics.items():
        for record in asyncio.run(read_everything(settings.broker, topic, partitions)):
            for blob in (record.key or b"", record.value or b""):
                for number in numbers:
                    assert_no_card_number(blob, number)
            read += 1
    assert read >= len(pairs) + len(feedback)
    log = worker.log_path.read_bytes()
    assert b"Setting newly assigned" in log
    for line in log.splitlines():
        for number in numbers:
            assert_no_card_number(line, number)
