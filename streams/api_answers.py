"""The scoring API's pure part: requests into the bytes the stream validates, decisions into answers.

No I/O here (:mod:`flagstream.streams.api_service` is the driver). A request body
becomes the exact bytes that go to ``transactions``, checked by the stream's own
validator (:func:`flagstream.streams.schema.validate_transactions`), so a request the
API accepts is one the stream accepts, and a refused one gets the stream's reason.

>>> s = Settings()
>>> [ok] = requests(b'{"transaction_id": "t-1", "account_id": "c-1", "merchant_id": "m-1",'
...                 b' "amount": 12.5, "timestamp": "2018-04-01T00:07:56Z"}', s, batch=False)
>>> ok.transaction_id, ok.account_id, loads(ok.value)["origin"]
('t-1', 'c-1', 'api')
>>> [bad] = requests(b'{"transaction_id": "t-2"}', s, batch=False)
>>> bad.status, bad.error
(400, {'error': 'missing_field', 'detail': "missing required field 'account_id'"})

The decision of record for a transaction is its *first* record on ``scores`` (decisions
and fallbacks are keyed by transaction id, so they share a partition and have one
order). :class:`AnswerBook` remembers the first record per transaction id, bounded:

>>> book = AnswerBook(max_answers=2)
>>> book.record(b"t-1", dumps({"transaction_id": "t-1", "decision": "approve", "score": 0.1,
...     "threshold": 0.5, "model_version": "v1", "features": [0.0]}))
True
>>> book.record(b"t-1", dumps(fallback_record({"transaction_id": "t-1"}, "review", 0)))
False
>>> book.first("t-1")
{'transaction_id': 't-1', 'decision': 'approve', 'score': 0.1, 'threshold': 0.5, \
'model_version': 'v1', 'reasons': [], 'fallback': False}
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections import OrderedDict
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from flagstream.codec import JSONDecodeError, dumps, kept, loads
from flagstream.errors import InvalidRecord
from flagstream.streams.config import Settings
from flagstream.streams.schema import parse_timestamp_ms, refuse_future, validate_transactions

#: What an answer carries, taken from the decision record.
ANSWER_FIELDS = ("transaction_id", "decision", "score", "threshold", "model_version", "reasons")
DECISIONS = frozenset({"approve", "review", "decline"})
#: Marks the transactions the API produced; the scorer copies it onto their decisions.
ORIGIN = "api"
#: Reasons kept in an answer (the scorer gives at most three).
MAX_REASONS = 10


@dataclass(frozen=True)
class Request:
    """One transaction of a call: accepted (``value`` is what goes to Kafka) or refused."""

    transaction_id: str = ""
    account_id: str = ""
    value: bytes = b""
    record: dict | None = None
    status: int = 200
    error: dict | None = None


def refused(status: int, reason: str, detail: str) -> Request:
    return Request(status=status, error={"error": reason, "detail": detail})


def requests(body: bytes, s: Settings, batch: bool) -> list[Request]:
    """The transactions of a request body: one object, or (``batch``) a JSON array of them.

    Each is encoded once with ``"origin": "api"`` and those bytes are validated exactly as
    the stream validates them. A body that is not a JSON array (batch) gives one refusal.
    """
    if not batch:
        return [_request(_decoded(body, s), s)]
    try:
        items = loads(body)
    except JSONDecodeError:
        return [refused(400, "invalid_json", "the body is not JSON")]
    if not isinstance(items, list) or not items:
        return [refused(400, "invalid_batch", "the body must be a non-empty JSON array")]
    if len(items) > s.api_max_batch:
        return [refused(413, "too_many", f"at most {s.api_max_batch} transactions per call")]
    return [_request(item, s) for item in items]


def _decoded(body: bytes, s: Settings) -> object:
    if len(body) > s.max_record_bytes:
        return refused(413, "too_large", f"a transaction is at most {s.max_record_bytes} bytes")
    try:
        return loads(body)
    except JSONDecodeError:
        return refused(400, "invalid_json", "the body is not JSON")


def _request(item: object, s: Settings) -> Request:
    if isinstance(item, Request):
        return item
    if not isinstance(item, dict):
        return refused(400, "not_an_object", "a transaction is a JSON object")
    value = dumps({**item, "origin": ORIGIN})
    batch = validate_transactions([value], s.max_record_bytes, s.max_nesting)
    batch = refuse_future(batch, time.time() * 1000, s.max_event_lead_s * 1000)
    if batch.rejections:
        r = batch.rejections[0]
        return refused(413 if r.reason == "too_large" else 400, r.reason, r.detail)
    record = batch.records[0]
    return Request(record["transaction_id"], record["account_id"], value, record)


def answer_of(record: object) -> dict | None:
    """The answer for a record read from ``scores``; None when it is not a decision of ours."""
    if not isinstance(record, dict) or record.get("decision") not in DECISIONS:
        return None
    if not isinstance(record.get("transaction_id"), str):
        return None
    answer = {name: record.get(name) for name in ANSWER_FIELDS}
    reasons = answer["reasons"]
    answer["reasons"] = reasons[:MAX_REASONS] if isinstance(reasons, list) else []
    answer["fallback"] = record.get("fallback") is True
    return answer


def fallback_record(record: dict, decision: str, now_ms: int | None = None) -> dict:
    """The record of a fallback decision for ``scores`` (no score: nothing was scored)."""
    try:
        event_time_ms: int | None = parse_timestamp_ms(record.get("timestamp"))
    except InvalidRecord:
        event_time_ms = None
    return {
        "transaction_id": record.get("transaction_id"),
        "account_id": record.get("account_id"),
        "merchant_id": record.get("merchant_id"),
        "amount": record.get("amount"),
        "event_time": record.get("timestamp"),
        "event_time_ms": event_time_ms,
        "decision": decision,
        "score": None,
        "threshold": None,
        "model_version": None,
        "reasons": [],
        "fallback": True,
        "origin": ORIGIN,
        "scored_at_ms": int(time.time() * 1000) if now_ms is None else now_ms,
    }


class AnswerBook:
    """Each transaction id's first record on ``scores`` (raw, decoded on use), bounded,
    and the calls waiting for one.

    Parameters
    ----------
    max_answers
        Records remembered; the oldest are forgotten first.
    """

    def __init__(self, max_answers: int = 100_000) -> None:
        self.max_answers = max_answers
        self.records: OrderedDict[bytes, bytes] = OrderedDict()
        self.waiting: dict[bytes, asyncio.Future] = {}

    def __len__(self) -> int:
        return len(self.records)

    def record(self, key: bytes | None, value: bytes | None) -> bool:
        """Keep a record read from ``scores`` if it is the first for its key; wake its waiter."""
        if not key or value is None or key in self.records:
            return False
        self.records[key] = kept(value)  # (what dumps returns holds ~4 KB: see kept)
        if len(self.records) > self.max_answers:
            self.records.popitem(last=False)
        waiter = self.waiting.get(key)
        if waiter is not None and not waiter.done():
            answer = self._decode(value)
            if answer is not None:
                waiter.set_result(answer)
        return True

    def first(self, transaction_id: str) -> dict | None:
        """The first answer recorded for ``transaction_id``, if remembered."""
        value = self.records.get(transaction_id.encode())
        return None if value is None else self._decode(value)

    def dead_lettered(self, transaction_id: str, reason: str, detail: str) -> None:
        """The stream refused a transaction a call waits for: the call gets the reason."""
        waiter = self.waiting.get(transaction_id.encode())
        if waiter is not None and not waiter.done():
            waiter.set_result({"error": reason, "detail": detail})

    def expect(self, transaction_id: str) -> asyncio.Future:
        """A future for the first answer (or a dead letter's reason) of ``transaction_id``."""
        key = transaction_id.encode()
        waiter = self.waiting.get(key)
        if waiter is None:
            waiter = self.waiting[key] = asyncio.get_running_loop().create_future()
        return waiter

    def done(self, transaction_id: str) -> None:
        self.waiting.pop(transaction_id.encode(), None)

    @staticmethod
    def _decode(value: bytes) -> dict | None:
        try:
            return answer_of(loads(value))
        except JSONDecodeError:
            return None


def dead_letter_of(value: bytes | None) -> tuple[str, str, str] | None:
    """``(transaction_id, reason, detail)`` of a dead letter, or None when unreadable."""
    try:
        letter = loads(value or b"")
        original = loads(base64.b64decode(letter["original_b64"], validate=True))
        tx, reason = original["transaction_id"], letter["reason"]
    except Exception:  # hostile or truncated letters: not ours to answer
        return None
    if not isinstance(tx, str) or not isinstance(reason, str):
        return None
    detail = letter.get("detail")
    return tx, reason, detail if isinstance(detail, str) else ""


def api_refusal(value: bytes | None, rejection: Any) -> tuple[str, str, str] | None:
    """``(transaction_id, reason, detail)`` when a refused record is one the API produced.

    >>> from flagstream.errors import Rejection
    >>> api_refusal(b'{"transaction_id":"t-1","origin":"api"}', Rejection(0, "duplicate_transaction", "seen"))
    ('t-1', 'duplicate_transaction', 'seen')
    >>> api_refusal(b'{"transaction_id":"t-1"}', Rejection(0, "duplicate_transaction", "seen")) is None
    True
    """
    if value is None or b'"origin":"api"' not in value:
        return None
    try:
        record = loads(value)
    except JSONDecodeError:
        return None
    if not isinstance(record, dict) or record.get("origin") != ORIGIN:
        return None
    tx = record.get("transaction_id")
    return (tx, rejection.reason, rejection.detail) if isinstance(tx, str) else None


def is_fallback(value: object) -> bool:
    """Whether a record (raw or decoded) from ``scores`` is a fallback the API recorded."""
    if isinstance(value, bytes | bytearray):
        if b'"fallback":true' not in value:
            return False
        try:
            value = loads(value)
        except JSONDecodeError:
            return False
    return isinstance(value, dict) and value.get("fallback") is True


def first_on_scores(table: MutableMapping, keys: Sequence[bytes | None],
                    values: Sequence[bytes | None], parsed: list) -> tuple[list, int]:
    """The learner's rule for the API's records: the first record per transaction id counts.

    A fallback is kept in ``table`` (the learner's decisions, by transaction id) only when
    no decision is there: it marks the transaction as decided, never learned from. A
    decision of the API's (``origin`` ``api``) that finds a fallback there came too late
    and is ignored. Returns ``parsed`` with those records set to None, and how many.

    >>> table = {}
    >>> late = {"transaction_id": "t-1", "origin": "api", "decision": "approve"}
    >>> fb = dumps(fallback_record({"transaction_id": "t-1"}, "review", 0))
    >>> first_on_scores(table, [b"t-1", b"t-1"], [fb, dumps(late)], [fb, late])
    ([None, None], 2)
    >>> is_fallback(table[b"t-1"])
    True
    """
    out, settled = list(parsed), 0
    for i, (key, value) in enumerate(zip(keys, values, strict=True)):
        if not key:
            continue
        if isinstance(out[i], dict) and out[i].get("origin") != ORIGIN:
            continue  # (a stream decision: no lookup on the hot path)
        if is_fallback(value):
            if table.get(key[:256]) is None:
                table[key[:256]] = value
        elif not (isinstance(out[i], dict) and is_fallback(table.get(key[:256]))):
            continue
        out[i] = None
        settled += 1
    return out, settled
