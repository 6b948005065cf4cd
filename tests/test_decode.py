"""The batch decoder (``validate_transactions``) against the per-record reference
(``validate_transactions_reference``): the same batch for every input, clean or hostile.

"The same" is field by field: valid indices, record dicts, id columns, amounts and epoch
ms (values and dtypes), and every rejection's index, reason and detail, in order. The
timestamp kernel (``iso_millis``) is held to ``parse_timestamp_ms`` on its own as well.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone

import hostile_corpus as hc
import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_fuzz import FUZZ, TEXT, TRANSACTION_VALUE, VALUE

import flagstream.streams.schema as schema
from flagstream.errors import InvalidRecord
from flagstream.streams.iso_times import iso_millis
from flagstream.streams.schema import (
    TransactionBatch,
    parse_timestamp_ms,
    validate_transactions,
    validate_transactions_reference,
)


@contextmanager
def small_batches_below(count: int) -> Iterator[None]:
    """Tiny batches take the per-record path (``schema.TINY``) and small ones read their
    timestamps one by one (``schema.FEW``); with 0 every batch, however small, takes the
    batch steps and the numpy kernel."""
    before = schema.FEW, schema.TINY
    schema.FEW = schema.TINY = count
    try:
        yield
    finally:
        schema.FEW, schema.TINY = before


def assert_same(values, max_bytes: int = hc.MAX_RECORD_BYTES, max_nesting: int = hc.MAX_NESTING) -> None:
    ref = validate_transactions_reference(values, max_bytes, max_nesting)
    assert_batches_equal(validate_transactions(values, max_bytes, max_nesting), ref)
    with small_batches_below(0):
        assert_batches_equal(validate_transactions(values, max_bytes, max_nesting), ref)


def assert_batches_equal(fast: TransactionBatch, ref: TransactionBatch) -> None:
    assert fast.indices == ref.indices
    assert fast.records == ref.records
    assert fast.transaction_ids == ref.transaction_ids
    assert fast.account_ids == ref.account_ids
    assert fast.merchant_ids == ref.merchant_ids
    assert fast.amounts.dtype == ref.amounts.dtype == np.float64
    assert fast.timestamps_ms.dtype == ref.timestamps_ms.dtype == np.int64
    assert fast.amounts.tolist() == ref.amounts.tolist()
    assert fast.timestamps_ms.tolist() == ref.timestamps_ms.tolist()
    assert fast.rejections == ref.rejections


# --- strategies: valid records of every accepted shape, and ISO-like text ---------------
_OFFSETS = st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(lambda m: timezone(timedelta(minutes=m)))
_MOMENTS = st.datetimes(datetime(1999, 12, 30), datetime(2100, 1, 2), timezones=_OFFSETS)
_STAMP = st.one_of(
    _MOMENTS.map(lambda d: d.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")),
    _MOMENTS.map(lambda d: d.replace(microsecond=0).isoformat()),
    _MOMENTS.map(lambda d: d.isoformat()),  # fractions of a second: the reference's part
    st.integers(hc.MIN_EPOCH_MS - 5, hc.MAX_EPOCH_MS + 5),
)
_ID = st.one_of(st.from_regex(r"[tcm]-[0-9]{1,12}", fullmatch=True), TEXT)
_AMOUNT = st.one_of(
    st.floats(min_value=-1.0, max_value=2e9), st.integers(-5, 2 * 10**9),
    st.sampled_from([5e-324, 1e9, 1e9 + 1, 0.0, 0.01]),
)
_EXTRA = st.dictionaries(
    st.sampled_from(["currency", "channel", "country", "note", "customer_x", "{", "["]),
    st.one_of(st.sampled_from(["USD", "card", "FR", "{x}", "[y]", "4111 1111 1111 1111"]),
              st.floats(allow_nan=False), st.lists(st.integers(-(2**63), 2**63 - 1), max_size=3), st.none(),
              st.dictionaries(st.text(max_size=3), st.integers(0, 9), max_size=2)),
    max_size=4,
)


@st.composite
def realistic(draw: st.DrawFn) -> bytes:
    """A record as producers write it: mostly valid, every accepted timestamp shape."""
    obj = {"transaction_id": draw(_ID), "account_id": draw(_ID), "merchant_id": draw(_ID),
           "amount": draw(_AMOUNT), "timestamp": draw(_STAMP), **draw(_EXTRA)}
    if draw(st.booleans()):
        obj["pad"] = "x" * draw(st.integers(2_000, 3_000))  # a 2 KB+ record
    return orjson.dumps(obj)


RECORD = st.one_of(realistic(), realistic(), realistic(), TRANSACTION_VALUE)


def fixed_shape(offset_minutes: int) -> st.SearchStrategy[str]:
    """Text of the two fixed shapes, every field from 0 to past its largest value (the
    offset's minutes up to ``offset_minutes``: datetime also reads ``+00:60``, the kernel
    leaves that to the reference)."""
    return st.builds(
        lambda y, mo, d, h, mi, s, sign, oh, om: f"{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}"
        + ("Z" if sign == "Z" else f"{sign}{oh:02}:{om:02}"),
        st.integers(0, 9999), st.integers(0, 13), st.integers(0, 32), st.integers(0, 25),
        st.integers(0, 61), st.integers(0, 61), st.sampled_from("Z+-"), st.integers(0, 25),
        st.integers(0, offset_minutes),
    )


ISO_LIKE = st.one_of(
    fixed_shape(99),
    st.text(st.sampled_from("0123456789-T:Z+ .tz٣"), min_size=18, max_size=27),
    st.builds(lambda d, cut: d.isoformat()[:cut] if cut else d.isoformat(),
              st.datetimes(timezones=_OFFSETS), st.integers(0, 30)),
    st.builds(lambda a, b: a[:10] + b + a[11:], _STAMP.filter(lambda s: isinstance(s, str)),
              st.sampled_from(["T", "t", " ", "_"])),
)


def reference_millis(text: str) -> int | None:
    try:
        return parse_timestamp_ms(text)
    except InvalidRecord:
        return None


# --- the batch path against the reference ------------------------------------------------
@FUZZ
@given(values=st.lists(RECORD, max_size=40))
def test_batches_agree_with_the_reference(values):
    assert_same(values)


@FUZZ
@given(values=st.lists(RECORD, max_size=12), max_bytes=st.integers(0, 4_000),
       max_nesting=st.integers(0, 10))
def test_batches_agree_under_every_limit(values, max_bytes, max_nesting):
    assert_same(values, max_bytes, max_nesting)


@FUZZ
@given(clean=st.lists(realistic(), min_size=50, max_size=120), bad=st.lists(
    st.tuples(st.integers(0, 119), st.one_of(TRANSACTION_VALUE, VALUE)), min_size=1, max_size=5))
def test_a_few_bad_records_in_a_large_batch_agree(clean, bad):
    values = list(clean)
    for at, value in bad:
        values.insert(min(at, len(values)), value)
    assert_same(values)


def test_the_whole_hostile_corpus_in_one_batch_agrees():
    values = [c.value for c in hc.TRANSACTIONS + hc.TRANSACTION_NESTING]
    assert_same(values)


@pytest.mark.parametrize("case", hc.TRANSACTIONS, ids=[c.name for c in hc.TRANSACTIONS])
def test_each_corpus_transaction_agrees_alone_and_among_valid_ones(case):
    valid = orjson.dumps(hc.TRANSACTION)
    assert_same([case.value])
    assert_same([valid, case.value, valid])


def test_records_of_every_odd_kind_agree():
    """Non-UTF-8 bytes, NaN and Infinity text, huge numbers, duplicate keys, non-objects,
    deep nesting, card numbers in ids and in the timestamp, and values that are not bytes."""
    tx = dict(hc.TRANSACTION)
    values = [
        b'{"transaction_id": "t-\xff"}', b'{"amount": NaN}', b"Infinity", b"[1, 2]", b'"text"', b"17",
        orjson.dumps({**tx, "amount": 10**19}), orjson.dumps({**tx, "timestamp": 2**64 - 1}),
        orjson.dumps(tx)[:-1] + b', "amount": 1e308}', orjson.dumps(tx)[:-1] + b', "amount": 2}',
        orjson.dumps({**tx, "x": [[[[[[[[[1]]]]]]]]]}), orjson.dumps({**tx, "x": [[[[[[[1]]]]]]]}),
        orjson.dumps({**tx, "account_id": hc.PAN}), orjson.dumps({**tx, "timestamp": hc.PAN}),
        orjson.dumps({**tx, "timestamp": "2018-04-01T00:07:56+01:00 4111 1111 1111 1111"}),
        orjson.dumps({**tx, "timestamp": "2018-04-01T00:07:56.250+05:30"}),
        orjson.dumps({**tx, "timestamp": "2018-04-01T00:07:56"}), orjson.dumps({**tx, "timestamp": True}),
        orjson.dumps({**tx, "transaction_id": "x" * 129}), orjson.dumps({**tx, "amount": "12"}),
        None, b"", bytearray(orjson.dumps(tx)), orjson.dumps(tx),
    ]
    assert_same(values)
    assert_same([v for v in values if v is not None])


def test_a_clean_batch_never_takes_the_per_record_path(monkeypatch):
    """Valid records of the shapes producers write (ISO with Z or an offset, epoch ms, extra
    fields) are decided by the batch steps alone."""
    def refuse(*args):
        raise AssertionError("per-record path taken for a clean batch")

    monkeypatch.setattr(schema, "_checked_one_by_one", refuse)
    monkeypatch.setattr(schema, "_reference_millis", refuse)
    stamps = ["2018-04-01T00:07:56Z", "2018-04-01T02:07:56+02:00", 1522541276000]
    values = [orjson.dumps({**hc.TRANSACTION, "transaction_id": f"t-{i}", "timestamp": stamps[i % 3],
                            "channel": "card", "customer_x": 1.5}) for i in range(300)]
    batch = validate_transactions(values)
    assert len(batch) == 300 and batch.timestamps_ms.tolist() == [1522541276000] * 300


def test_a_batch_of_none_but_bad_records_gives_each_its_reason():
    values = [b"{", None, b"[]", orjson.dumps({"transaction_id": "t-1"})] * 50
    batch = validate_transactions(values)
    assert [r.reason for r in batch.rejections[:4]] == [
        "invalid_json", "empty_value", "not_an_object", "missing_field"]
    assert_same(values)


# --- the timestamp kernel against parse_timestamp_ms ------------------------------------------
@FUZZ
@given(texts=st.lists(ISO_LIKE, max_size=30))
def test_iso_millis_reads_only_what_the_reference_reads_and_the_same_value(texts):
    millis, ok = iso_millis(texts)
    for text, value, read in zip(texts, millis.tolist(), ok.tolist(), strict=True):
        if read:  # (outside 2000..2100 the reference refuses what the kernel read)
            expected = int(datetime.fromisoformat(text).timestamp() * 1000)
            assert value == expected, text
            assert reference_millis(text) in (value, None)


@FUZZ
@given(texts=st.lists(fixed_shape(59), min_size=1, max_size=30))
def test_iso_millis_reads_every_fixed_shape_text_that_datetime_reads(texts):
    millis, ok = iso_millis(texts)
    for text, value, read in zip(texts, millis.tolist(), ok.tolist(), strict=True):
        try:
            expected: int | None = int(datetime.fromisoformat(text).timestamp() * 1000)
        except ValueError:
            expected = None
        assert (value if read else None) == expected, text


def test_iso_millis_reads_the_shapes_producers_write():
    texts = ["2018-04-01T00:07:56Z", "2016-02-29T23:59:59-00:30", "2000-01-01T00:00:00+14:00",
             "2017-02-29T00:00:00Z", "2018-04-01T00:07:56.1Z", "2018-04-01T25:00:00Z",
             "２018-04-01T00:07:56Z"]
    millis, ok = iso_millis(texts)
    assert ok.tolist() == [True, True, True, False, False, False, False]
    assert millis[ok].tolist() == [parse_timestamp_ms(t) for t in texts[:2]] + [
        int(datetime.fromisoformat(texts[2]).timestamp() * 1000)]
