"""Wire schema of transactions and feedback, validated a batch at a time.

A batch of raw record values becomes column arrays for the valid records and a list
of :class:`Rejection` for the others. Nothing is dropped: every input index ends up
in exactly one of the two.

>>> batch = validate_transactions([
...     b'{"transaction_id": "t-1", "account_id": "c-1", "merchant_id": "m-1",'
...     b' "amount": 12.5, "timestamp": "2018-04-01T00:07:56Z"}',
...     b'{"transaction_id": "t-2"}',
...     b'not json',
... ])
>>> batch.transaction_ids, batch.amounts.tolist(), batch.timestamps_ms.tolist()
(['t-1'], [12.5], [1522541276000])
>>> [(r.index, r.reason) for r in batch.rejections]
[(1, 'missing_field'), (2, 'invalid_json')]

The ids and the timestamp text are copied onto decisions and used as record keys, so a
record whose ids or timestamp carry a card number (:func:`flagstream.cards.card_numbers`:
13–19 digits, Luhn-valid, with or without separators) is refused as
``card_number_in_field``; its dead letter stores the original masked.

>>> validate_transactions([b'{"transaction_id": "t-1", "account_id": "4111-1111-1111-1111",'
...     b' "merchant_id": "m-1", "amount": 1, "timestamp": 1522540800000}']).rejections
[Rejection(index=0, reason='card_number_in_field', detail='account_id carries a card number')]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from flagstream.cards import card_numbers, may_carry_card_number
from flagstream.codec import decode_object
from flagstream.errors import InvalidRecord, Rejection

REQUIRED_STRINGS = ("transaction_id", "account_id", "merchant_id")
#: What a decision copies from its transaction as text: none of it may carry a card number.
ECHOED_TEXT = (*REQUIRED_STRINGS, "timestamp")
MAX_ID_LENGTH = 128
MAX_AMOUNT = 1e9
#: Epoch-millisecond timestamps must fall in [2000-01-01, 2100-01-01).
MIN_EPOCH_MS, MAX_EPOCH_MS = 946_684_800_000, 4_102_444_800_000


@dataclass
class TransactionBatch:
    """The valid records of a batch as columns, plus the rejected ones."""

    indices: list[int] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)
    transaction_ids: list[str] = field(default_factory=list)
    account_ids: list[str] = field(default_factory=list)
    merchant_ids: list[str] = field(default_factory=list)
    amounts: np.ndarray = field(default_factory=lambda: np.empty(0))
    timestamps_ms: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    rejections: list[Rejection] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.transaction_ids)

    def select(self, keep: np.ndarray) -> TransactionBatch:
        """The valid records at positions ``keep`` (rejections are carried over)."""
        picks = keep.tolist()
        return TransactionBatch(
            [self.indices[i] for i in picks],
            [self.records[i] for i in picks],
            [self.transaction_ids[i] for i in picks],
            [self.account_ids[i] for i in picks],
            [self.merchant_ids[i] for i in picks],
            self.amounts[keep],
            self.timestamps_ms[keep],
            self.rejections,
        )


def parse_timestamp_ms(value: object) -> int:
    """Epoch milliseconds from an ISO-8601 string with offset or an integer epoch-ms.

    >>> parse_timestamp_ms("2018-04-01T00:00:00+02:00"), parse_timestamp_ms(1522540800000)
    (1522533600000, 1522540800000)
    """
    if isinstance(value, bool):
        raise InvalidRecord("invalid_timestamp", "timestamp must be ISO-8601 or epoch ms")
    if isinstance(value, int):
        millis = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidRecord("invalid_timestamp", "timestamp is not ISO-8601") from None
        if moment.tzinfo is None:
            raise InvalidRecord("invalid_timestamp", "timestamp has no UTC offset")
        millis = int(moment.timestamp() * 1000)
    else:
        raise InvalidRecord("invalid_timestamp", "timestamp must be ISO-8601 or epoch ms")
    if not MIN_EPOCH_MS <= millis < MAX_EPOCH_MS:
        raise InvalidRecord("invalid_timestamp", "timestamp outside 2000..2100")
    return millis


def check_transaction(obj: dict) -> tuple[float, int]:
    """Check required fields of a decoded transaction; return (amount, epoch ms)."""
    for name in REQUIRED_STRINGS:
        value = obj.get(name)
        if value is None:
            raise InvalidRecord("missing_field", f"missing required field {name!r}")
        if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH:
            raise InvalidRecord("invalid_field", f"{name} must be a non-empty string ≤128 chars")
    amount = obj.get("amount")
    if amount is None:
        raise InvalidRecord("missing_field", "missing required field 'amount'")
    if isinstance(amount, bool) or not isinstance(amount, int | float):
        raise InvalidRecord("invalid_amount", "amount must be a number")
    if not math.isfinite(amount) or amount <= 0 or amount > MAX_AMOUNT:
        raise InvalidRecord("invalid_amount", f"amount must be finite, > 0 and ≤ {MAX_AMOUNT:g}")
    if "timestamp" not in obj:
        raise InvalidRecord("missing_field", "missing required field 'timestamp'")
    return float(amount), parse_timestamp_ms(obj["timestamp"])


def validate_transactions(
    values: Sequence[bytes | None], max_bytes: int = 16_384, max_nesting: int = 8
) -> TransactionBatch:
    """Decode and check a batch of raw transaction values (see module doc)."""
    batch = TransactionBatch()
    amounts: list[float] = []
    stamps: list[int] = []
    for index, raw in enumerate(values):
        try:
            obj = decode_object(raw, max_bytes, max_nesting)
            amount, millis = check_transaction(obj)
        except InvalidRecord as exc:
            batch.rejections.append(Rejection(index, exc.reason, str(exc)))
            continue
        batch.indices.append(index)
        batch.records.append(obj)
        batch.transaction_ids.append(obj["transaction_id"])
        batch.account_ids.append(obj["account_id"])
        batch.merchant_ids.append(obj["merchant_id"])
        amounts.append(amount)
        stamps.append(millis)
    batch.amounts = np.asarray(amounts, dtype=np.float64)
    batch.timestamps_ms = np.asarray(stamps, dtype=np.int64)
    return refuse_card_numbers(batch)


def refuse_card_numbers(batch: TransactionBatch) -> TransactionBatch:
    """``batch`` without the records whose echoed text carries a card number (those become
    ``card_number_in_field`` rejections). One scan of the whole batch's echoed text
    finds whether any record needs a closer look (no regex for plain ASCII ids)."""
    texts = [*batch.transaction_ids, *batch.account_ids, *batch.merchant_ids]
    texts += [t for r in batch.records if isinstance(t := r["timestamp"], str)]
    if not may_carry_card_number("\n".join(texts)):
        return batch
    keep = []
    for k, record in enumerate(batch.records):
        carrier = next((name for name in ECHOED_TEXT if isinstance(text := record[name], str)
                        and may_carry_card_number(text) and card_numbers(text)), None)
        if carrier is None:
            keep.append(k)
        else:
            batch.rejections.append(Rejection(batch.indices[k], "card_number_in_field",
                                              f"{carrier} carries a card number"))
    if len(keep) == len(batch):
        return batch
    return batch.select(np.asarray(keep, dtype=np.int64))
