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

Two paths give the same batch for every input. :func:`validate_transactions` works on the
whole batch at once: orjson decodes every value, one byte count shows which records are
flat, msgspec checks the decoded objects against :class:`WireTransaction` in one call, and
:func:`flagstream.streams.iso_times.iso_millis` reads the timestamps as one array. Any
record it does not accept goes through :func:`validate_transactions_reference`'s
per-record checks, which give the reason and detail (and accept what the fast path only
did not recognise, such as a timestamp with fractions of a second).

>>> values = [b'{"transaction_id": "t-1", "account_id": "c-1", "merchant_id": "m-1",'
...           b' "amount": 3, "timestamp": "2018-04-01T00:07:56.5+01:00"}', b'[1]', None]
>>> validate_transactions(values) == validate_transactions_reference(values)
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from operator import attrgetter
from typing import Annotated, Any

import msgspec
import numpy as np

from flagstream.cards import card_numbers, may_carry_card_number
from flagstream.codec import JSONDecodeError, decode_object, deeper_than, loads, loads_each
from flagstream.errors import InvalidRecord, Rejection
from flagstream.streams.iso_times import iso_millis

REQUIRED_STRINGS = ("transaction_id", "account_id", "merchant_id")
#: What a decision copies from its transaction as text: none of it may carry a card number.
ECHOED_TEXT = (*REQUIRED_STRINGS, "timestamp")
MAX_ID_LENGTH = 128
MAX_AMOUNT = 1e9
#: Epoch-millisecond timestamps must fall in [2000-01-01, 2100-01-01).
MIN_EPOCH_MS, MAX_EPOCH_MS = 946_684_800_000, 4_102_444_800_000
#: How far after the checking machine's clock a transaction may be stamped, ms: producers'
#: clocks differ a little from the worker's; nothing is paid in the future
#: (:func:`refuse_future`).
MAX_LEAD_MS = 300_000


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


def validate_transactions_reference(
    values: Sequence[bytes | None], max_bytes: int = 16_384, max_nesting: int = 8
) -> TransactionBatch:
    """Decode and check a batch of raw transaction values, one record at a time: the
    definition :func:`validate_transactions` is held to (see module doc)."""
    accepted, rejections = _checked_one_by_one(values, range(len(values)), max_bytes, max_nesting)
    return refuse_card_numbers(_batch_of(accepted, rejections))


#: One record the per-record checks accepted: its index, object, amount and epoch ms.
Accepted = tuple[int, dict, float, int]


def _checked_one_by_one(
    values: Sequence[bytes | None], indices: Sequence[int], max_bytes: int, max_nesting: int
) -> tuple[list[Accepted], list[Rejection]]:
    accepted, rejections = [], []
    for index in indices:
        try:
            obj = decode_object(values[index], max_bytes, max_nesting)
            amount, millis = check_transaction(obj)
        except InvalidRecord as exc:
            rejections.append(Rejection(index, exc.reason, str(exc)))
            continue
        accepted.append((index, obj, amount, millis))
    return accepted, rejections


def _batch_of(accepted: Sequence[Accepted], rejections: list[Rejection]) -> TransactionBatch:
    objs = [a[1] for a in accepted]
    return TransactionBatch(
        [a[0] for a in accepted], objs, [o["transaction_id"] for o in objs],
        [o["account_id"] for o in objs], [o["merchant_id"] for o in objs],
        np.array([a[2] for a in accepted], dtype=np.float64),
        np.array([a[3] for a in accepted], dtype=np.int64), rejections,
    )


def refuse_card_numbers(batch: TransactionBatch, stamp_texts: list[str] | None = None) -> TransactionBatch:
    """``batch`` without the records whose echoed text carries a card number (those become
    ``card_number_in_field`` rejections). One scan of the whole batch's echoed text
    finds whether any record needs a closer look (no regex for plain ASCII ids).
    ``stamp_texts``: the batch's text timestamps, when the caller has them at hand."""
    texts = [*batch.transaction_ids, *batch.account_ids, *batch.merchant_ids]
    if stamp_texts is None:
        stamp_texts = [t for r in batch.records if isinstance(t := r["timestamp"], str)]
    texts += stamp_texts
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


def refuse_future(batch: TransactionBatch, now_ms: float, lead_ms: float = MAX_LEAD_MS) -> TransactionBatch:
    """``batch`` without the records stamped more than ``lead_ms`` after ``now_ms`` (the
    checking machine's clock): those become ``timestamp_in_future`` rejections.

    Event time drives every window downstream (an account's velocity, the traffic the
    operating point counts, the learner's daily health and drift): one record stamped in
    2099 would make every later one look decades old and empty those windows. A replay of
    recorded traffic is stamped in the past and passes.

    >>> b = validate_transactions_reference([
    ...     b'{"transaction_id":"t-1","account_id":"a","merchant_id":"m","amount":1,'
    ...     b'"timestamp":"2018-04-01T00:00:00Z"}',
    ...     b'{"transaction_id":"t-2","account_id":"a","merchant_id":"m","amount":1,'
    ...     b'"timestamp":"2099-04-01T00:00:00Z"}'])
    >>> kept = refuse_future(b, now_ms=1_796_000_000_000)
    >>> kept.transaction_ids, [(r.index, r.reason) for r in kept.rejections]
    (['t-1'], [(1, 'timestamp_in_future')])
    """
    ahead = batch.timestamps_ms > now_ms + lead_ms
    if not ahead.any():
        return batch
    for k in np.flatnonzero(ahead).tolist():
        hours = (int(batch.timestamps_ms[k]) - now_ms) / 3_600_000
        batch.rejections.append(Rejection(
            batch.indices[k], "timestamp_in_future",
            f"timestamp is {hours:,.1f} h after this worker's clock (at most {lead_ms / 1000:g} s allowed)"))
    return batch.select(np.flatnonzero(~ahead))


_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LENGTH)]


class WireTransaction(msgspec.Struct, gc=False):
    """The required fields of a transaction, typed as the fast path reads them; the record
    keeps every field in its dict. A record msgspec refuses here is not yet refused: the
    per-record checks decide, and give the reason.

    >>> msgspec.convert({"transaction_id": "t-1", "account_id": "c-1", "merchant_id": "m-1",
    ...                  "amount": 3, "timestamp": 1522540800000, "note": [1]}, WireTransaction)
    WireTransaction(transaction_id='t-1', account_id='c-1', merchant_id='m-1', amount=3.0, \
timestamp=1522540800000)
    """

    transaction_id: _Id
    account_id: _Id
    merchant_id: _Id
    amount: Annotated[float, msgspec.Meta(gt=0, le=MAX_AMOUNT)]
    timestamp: str | int


_ROWS = list[WireTransaction]
_COLUMNS = {name: attrgetter(name) for name in WireTransaction.__struct_fields__}


#: Records per orjson or msgspec call: a bad record costs at most this many records redone.
CHUNK = 64
#: Fewer timestamps than this are read one at a time (numpy's fixed cost per call is larger).
FEW = 128
#: Batches smaller than this take the per-record path whole (one record: 12 µs against 23).
TINY = 4


def _decoded_one(raw: bytes | None, max_bytes: int) -> object:
    try:
        return loads(raw) if raw is not None and len(raw) <= max_bytes else None
    except JSONDecodeError:
        return None


def _decoded(values: Sequence[bytes | None], max_bytes: int) -> list[Any]:
    """orjson's value for each record; None where it has no value, is too large or not JSON."""
    out: list[Any] = []
    for lo in range(0, len(values), CHUNK):
        part = values[lo : lo + CHUNK]
        try:
            if max(map(len, part)) <= max_bytes:  # type: ignore[arg-type]  # (TypeError: a None)
                out += loads_each(part)  # type: ignore[arg-type]
                continue
        except (TypeError, JSONDecodeError):
            pass
        out += [_decoded_one(raw, max_bytes) for raw in part]
    return out


def _shallow(values: Sequence[bytes | None], objs: list, at: list[int], max_nesting: int) -> list[int]:
    """The positions in ``at`` (all decoded to objects) within the nesting limit. Values that
    hold one ``{`` each and no ``[`` between them are all flat: one count tells."""
    try:
        joined = b"".join([values[i] for i in at])  # type: ignore[misc]
    except TypeError:  # (values that are not bytes: each object is looked at)
        joined = b"["
    if max_nesting >= 1 and joined.count(b"{") == len(at) and b"[" not in joined:
        return at
    return [i for i in at if not deeper_than(objs[i], max_nesting)]


def _typed(objs: list[dict]) -> list[WireTransaction | None]:
    """msgspec's :class:`WireTransaction` of each object, None where it refuses one (a chunk
    with a refusal is halved until the refused objects are alone)."""
    if len(objs) > CHUNK:
        rows: list[WireTransaction | None] = []
        for lo in range(0, len(objs), CHUNK):
            rows += _typed(objs[lo : lo + CHUNK])
        return rows
    try:
        return msgspec.convert(objs, _ROWS)
    except msgspec.ValidationError:
        if len(objs) == 1:
            return [None]
        half = len(objs) // 2
        return _typed(objs[:half]) + _typed(objs[half:])


def _reference_millis(stamps: list[str | int]) -> tuple[np.ndarray, np.ndarray]:
    millis, ok = np.zeros(len(stamps), np.int64), np.zeros(len(stamps), bool)
    for k, stamp in enumerate(stamps):
        try:
            millis[k], ok[k] = parse_timestamp_ms(stamp), True
        except InvalidRecord:
            pass
    return millis, ok


def _epoch_millis(stamps: list[str | int]) -> tuple[np.ndarray, np.ndarray]:
    """Epoch ms of each timestamp and whether it was read and is in range (the others go to
    the per-record checks). Below :data:`FEW` timestamps the array steps cost more than they
    save: those are read one by one by :func:`parse_timestamp_ms` itself."""
    if len(stamps) < FEW:
        return _reference_millis(stamps)
    kinds = set(map(type, stamps))
    if kinds == {str}:
        millis, ok = iso_millis(stamps)  # type: ignore[arg-type]
    else:
        millis, ok = np.zeros(len(stamps), np.int64), np.zeros(len(stamps), bool)
        texts = [k for k, t in enumerate(stamps) if type(t) is str] if str in kinds else []
        if texts:
            millis[texts], ok[texts] = iso_millis([stamps[k] for k in texts])  # type: ignore[misc]
        whole = [k for k, t in enumerate(stamps) if type(t) is int] if len(texts) else range(len(stamps))
        ints = [stamps[k] for k in whole]
        try:
            millis[whole] = np.array(ints, dtype=np.int64)
        except OverflowError:  # (beyond int64: out of range anyway)
            millis[whole] = [t if MIN_EPOCH_MS <= t < MAX_EPOCH_MS else 0 for t in ints]  # type: ignore[operator]
        ok[whole] = True
    ok &= (millis >= MIN_EPOCH_MS) & (millis < MAX_EPOCH_MS)
    return millis, ok


def validate_transactions(
    values: Sequence[bytes | None], max_bytes: int = 16_384, max_nesting: int = 8
) -> TransactionBatch:
    """Decode and check a batch of raw transaction values a whole batch at a time: the
    batch :func:`validate_transactions_reference` gives (see module doc)."""
    if len(values) < TINY:
        return validate_transactions_reference(values, max_bytes, max_nesting)
    objs = _decoded(values, max_bytes)
    n = len(objs)
    at = list(range(n)) if set(map(type, objs)) <= {dict} else [
        i for i, obj in enumerate(objs) if type(obj) is dict]
    at = _shallow(values, objs, at, max_nesting)
    rows = _typed([objs[i] for i in at])
    if rows.count(None):
        at, rows = [i for i, r in zip(at, rows, strict=True) if r is not None], [r for r in rows if r]
    stamps = list(map(_COLUMNS["timestamp"], rows))
    millis, ok = _epoch_millis(stamps)
    if not ok.all():
        keep = np.flatnonzero(ok).tolist()
        at, rows, stamps, millis = [at[k] for k in keep], [rows[k] for k in keep], [
            stamps[k] for k in keep], millis[keep]
    texts: list | None = stamps if set(map(type, stamps)) <= {str} else [t for t in stamps if type(t) is str]
    tx, acc, mer = (list(map(_COLUMNS[name], rows)) for name in REQUIRED_STRINGS)
    amounts = np.fromiter(map(_COLUMNS["amount"], rows), np.float64, len(rows))
    batch = TransactionBatch(at, [objs[i] for i in at], tx, acc, mer, amounts, millis)
    if len(at) < n:  # the others: the per-record checks say why, or accept them after all
        taken = set(at)
        rest = [i for i in range(n) if i not in taken]
        accepted, batch.rejections = _checked_one_by_one(values, rest, max_bytes, max_nesting)
        if accepted:
            fast = zip(at, batch.records, batch.amounts.tolist(), millis.tolist(), strict=True)
            batch = _batch_of(sorted([*fast, *accepted], key=lambda a: a[0]), batch.rejections)
            texts = None
    return refuse_card_numbers(batch, texts)
