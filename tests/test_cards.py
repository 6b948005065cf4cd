"""No card numbers anywhere (issue #11, part 5): every string flagstream emits is masked or refused.

Each finding of the issue has a test here that fails on main 46ab2bb:

- dead-letter ``detail`` strings carried raw values (``unparseable timestamp 'pan 4111…'``);
- dead-letter keys were the raw input key (with ``.``/``/`` separators, unmasked);
- JSON ``\\u0034``-escaped digits and ``.``/``/`` separators passed the mask;
- ``currency``/``channel``/``country`` were copied onto decisions whatever their content;
- ids carrying a card number were copied onto decisions and keys (now refused);
- logs (and the traceback that ends a process) carried whatever they were given.

The property test puts Luhn-valid numbers of every length in every field, in every
encoding (plain, separators, mixed separators, ``\\uXXXX`` escapes, full-width digits,
inside ids, inside unknown fields and keys, as the record key) through the core, the
dead-letter envelope, the review service and the logs, and checks what comes out twice:
JSON-decoded (no string or key holds a Luhn-valid 13–19 digit run) and as raw bytes
(escapes decoded, separators stripped: the planted digits are nowhere).
"""

from __future__ import annotations

import base64
import io
import logging
import os
import re
import subprocess
import sys
import unicodedata

import hostile_corpus as hc
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from kafka_helpers import ROOT
from prometheus_client import CollectorRegistry

from flagstream.codec import dumps, loads
from flagstream.scoring.policy import FixedThreshold
from flagstream.sinks.dead_letter import dead_letter, dead_letter_key
from flagstream.sinks.review.service import ReviewService
from flagstream.streams.core import ScoringCore
from flagstream.streams.schema import validate_transactions

SEPARATORS = " -./"
_RUN = re.compile(r"\d(?:[ \t./_-]{0,3}\d)*")
_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")


# --- what a reader could see: written here independently of flagstream.cards -------------
def luhn_numbers_in(text: str) -> list[str]:
    """Luhn-valid 13–19 digit numbers a reader sees in ``text``: any decimal digits, up to
    three separators between two digits, any span of whole separator-delimited groups."""
    found = []
    for match in _RUN.finditer(text):
        groups = ["".join(str(unicodedata.digit(c)) for c in g)
                  for g in re.split(r"[ \t./_-]+", match.group(0))]
        for first in range(len(groups)):
            digits = ""
            for group in groups[first:]:
                digits += group
                if len(digits) > 19:
                    break
                if len(digits) >= 13 and hc.luhn_ok(digits):
                    found.append(digits)
    return found


def texts_of(value: object) -> list[str]:
    """Every string and key inside a decoded JSON value."""
    out, stack = [], [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list | tuple):
            stack.extend(node)
    return out


def flattened(raw: bytes) -> str:
    """Raw bytes as a reader who decodes escapes and ignores separators would read them."""
    text = _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), raw.decode("utf-8", errors="replace"))
    text = "".join(str(unicodedata.digit(c)) if c.isdecimal() else c for c in text)
    return re.sub(r"[\s./_\\-]", "", text)


_DIGEST = re.compile(r"[0-9a-f]{16}|[0-9a-f]{32}|[0-9a-f]{64}")


def is_digest(text: str) -> bool:
    """A whole lowercase hex digest (8, 16 or 32 bytes: an item id, a SHA-256, an HMAC).

    A hash's hex holds a Luhn-valid run of 13 or more decimal digits about once in a hundred
    SHA-256s; that run is no card number (a reader sees a hash), so digests are not read.

    >>> is_digest("472b596ff989a148d3b0dd2e0a7bb2754922820709ca72e6d151386263144167")
    True
    >>> is_digest("t-4111111111111111"), is_digest("4111111111111111a")
    (False, False)
    """
    return _DIGEST.fullmatch(text) is not None


def assert_no_card_number(emitted: bytes, planted: str = "") -> None:
    """``emitted`` (a record value, key or log text) holds no card number, decoded or raw."""
    try:
        decoded = loads(emitted)
    except Exception:
        decoded = emitted.decode("utf-8", errors="replace")
    if isinstance(decoded, dict):  # (base64 is no text: it is decoded and read below)
        decoded = {k: v for k, v in decoded.items() if k != "original_b64"}
    leaked = [n for s in texts_of(decoded) if not is_digest(s) for n in luhn_numbers_in(s)]
    assert leaked == [], emitted[:400]
    if planted:
        assert planted not in flattened(emitted), emitted[:400]
    b64 = re.search(rb'"original_b64":"([^"]*)"', emitted)
    if b64:
        assert_no_card_number(base64.b64decode(b64.group(1)), planted)


def test_the_reader_skips_digests_and_nothing_else():
    """A sealed model record whose SHA-256 held a Luhn-valid run (``2754922820709``) failed CI
    once: a hash is no card number. The same run inside an id or free text is still found."""
    digest = "472b596ff989a148d3b0dd2e0a7bb2754922820709ca72e6d151386263144167"
    assert luhn_numbers_in(digest) == ["2754922820709"]
    sealed = dumps({"format": "flagstream-sealed/1", "sha256": digest, "hmac": digest,
                    "payload": {"kind": "operating-point", "threshold": 0.005}})
    assert_no_card_number(sealed)
    for leaking in ({"sha256": f"x{digest}"}, {"transaction_id": "t-2754922820709"},
                    {"detail": digest[:44]}):
        with pytest.raises(AssertionError):
            assert_no_card_number(dumps(leaking))


# --- the findings, one by one -------------------------------------------------------------
VALID = {"transaction_id": "t-1", "account_id": "c-1", "merchant_id": "m-1", "amount": 12.5,
         "timestamp": "2018-04-01T10:00:00Z"}


def letters_for(raw: bytes, key: bytes | None = None) -> list[bytes]:
    """The dead letters the scorer writes for ``raw`` (value and key), as bytes."""
    batch = validate_transactions([raw])
    return [b for r in batch.rejections
            for b in (dumps(dead_letter(raw, r.reason, r.detail, "tx", 0, 0)), dead_letter_key(key) or b"")]


@pytest.mark.parametrize("stamp", ["pan 4111.1111.1111.1111", "pan 4111/1111/1111/1111",
                                   "4111 1111 1111 1111", "x 5500.0000-0000/0004"])
def test_dead_letter_detail_carries_no_raw_value(stamp):
    raw = dumps({**VALID, "timestamp": stamp})
    batch = validate_transactions([raw])
    assert [r.reason for r in batch.rejections] == ["invalid_timestamp"]
    assert stamp not in batch.rejections[0].detail
    for letter in letters_for(raw):
        assert_no_card_number(letter, re.sub(r"\D", "", stamp))


@pytest.mark.parametrize("key", [b"4111.1111.1111.1111", b"4111/1111/1111/1111", b"4111 1111-1111.1111",
                                 b"pan \\u0034111111111111111"])
def test_dead_letter_key_is_masked(key):
    masked = dead_letter_key(key)
    assert masked is not None
    assert_no_card_number(masked, "4111111111111111")


@pytest.mark.parametrize("raw", [
    b'{"card": "\\u0034\\u0031\\u0031\\u0031\\u0031\\u0031\\u0031\\u0031\\u0031\\u0031\\u0031\\u0031'
    b'\\u0031\\u0031\\u0031\\u0031"}',
    b'{"card": "4111.1111.1111.1111"}',
    b'{"card": "4111/1111/1111/1111"}',
    b'{"card": "4111\\u00201111\\u002d1111\\/1111"}',
    b'{"card": "\\uff14\\uff11\\uff11\\uff11 1111 1111 1111"}',
])
def test_escaped_and_separated_digits_are_masked_in_dead_letters(raw):
    envelope = dead_letter(raw, "invalid_json", "bad", "tx", 0, 0)
    assert_no_card_number(dumps(envelope), "4111111111111111")
    assert_no_card_number(envelope["original"].encode(), "4111111111111111")


@pytest.mark.parametrize(("name", "value", "kept"), [
    ("currency", "USD", True), ("currency", "usd", False), ("currency", "US Dollar", False),
    ("currency", "X4111.1111.1111.1111", False), ("currency", 840, False), ("currency", ["USD"], False),
    ("country", "US", True), ("country", "USA", False), ("country", "A4111/1111/1111/1111", False),
    ("channel", "online", True), ("channel", "card_present", True), ("channel", "Online", False),
    ("channel", "web<script>", False), ("channel", "x" * 17, False), ("channel", "pos 4111", False),
])
def test_context_fields_are_copied_only_in_their_shape(name, value, kept):
    out = ScoringCore(policy=FixedThreshold(0.0)).process([dumps({**VALID, name: value})])
    assert len(out.decisions) == len(out.flagged) == 1  # (a bad context field never refuses)
    for record in out.decisions + out.flagged:
        assert (record.get(name) == value) if kept else (name not in record)


@pytest.mark.parametrize(("name", "value"), [
    ("transaction_id", "t-4111/1111/1111/1111"), ("account_id", "4111.1111.1111.1111"),
    ("merchant_id", "m 5500 0000 0000 0004"), ("account_id", "acct-4111111111111111"),
    ("timestamp", "2018-04-01T10:00:00.4111111111111111+00:00"),
])
def test_a_record_whose_ids_carry_a_card_number_is_refused_and_masked(name, value):
    raw = dumps({**VALID, name: value})
    out = ScoringCore().process([raw], offsets=[0])
    assert out.decisions == [] and [r.reason for r in out.rejections] == ["card_number_in_field"]
    for letter in letters_for(raw, value.encode()):
        assert_no_card_number(letter, re.sub(r"\D", "", value)[-16:])


def test_ids_with_long_digit_runs_that_are_no_card_numbers_are_scored():
    ids = {"transaction_id": "t-20180401-0000001", "account_id": "c-4111111111111112"}  # not Luhn
    out = ScoringCore().process([dumps({**VALID, **ids})])
    assert [d["account_id"] for d in out.decisions] == ["c-4111111111111112"]


def test_review_refuses_flags_whose_ids_carry_a_card_number():
    async def publish(key: bytes, value: bytes) -> None:
        return None

    svc = ReviewService(publish, CollectorRegistry())
    assert svc.ingest({"transaction_id": "t-4111.1111.1111.1111", "score": 0.9}) is None
    assert svc.ingest({"transaction_id": "t-1", "account_id": "4111/1111/1111/1111", "score": 0.9}) is None
    item = svc.ingest({"transaction_id": "t-2", "score": 0.9, "note": "4111.1111.1111.1111"})
    assert item is not None
    assert_no_card_number(dumps(svc.detail(item.item_id)), "4111111111111111")


@pytest.fixture
def masked_log():
    """A logger whose formatted output is returned, with log masking installed (and removed)."""
    from flagstream.cards import install_log_masking

    before_factory, before_hook = logging.getLogRecordFactory(), sys.excepthook
    install_log_masking()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("flagstream.test_cards")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)
        logging.setLogRecordFactory(before_factory)
        sys.excepthook = before_hook


def test_log_lines_and_exception_text_are_masked(masked_log):
    logger, stream = masked_log
    logger.warning("refused %r from %s", b'{"pan": "4111.1111.1111.1111"}', "5500/0000/0000/0004")
    try:
        raise ValueError("bad card \\u0034111 1111 1111 1111")
    except ValueError:
        logger.exception("failed on %s", {"card": "4111-1111-1111-1111"})
    text = stream.getvalue()
    assert "refused" in text and "ValueError: bad card" in text
    for planted in ("4111111111111111", "5500000000000004"):
        assert_no_card_number(text.encode(), planted)


def test_a_traceback_that_ends_the_command_is_masked():
    """A setting's bad value is echoed in the error that stops ``flagstream worker``."""
    env = {**os.environ, "FLAGSTREAM_PARTITIONS": "4111.1111.1111.1111"}
    result = subprocess.run([sys.executable, "-m", "flagstream.cli", "worker"], cwd=ROOT, env=env,
                            capture_output=True, timeout=120)
    assert result.returncode != 0 and b"FLAGSTREAM_PARTITIONS" in result.stderr
    assert_no_card_number(result.stdout + result.stderr, "4111111111111111")


# --- the property: every field, every encoding ----------------------------------------------
def luhn_number(length: int, body: str) -> str:
    return hc.luhn_complete((body * 19)[: length - 1])


LUHN = st.builds(luhn_number, st.integers(13, 19),
                 st.text("0123456789", min_size=1, max_size=19).filter(lambda b: b[0] != "0"))


@st.composite
def written(draw, digits: str) -> str:
    """``digits`` as JSON string text: grouped with (mixed) separators, some digits escaped
    as ``\\u003X`` or written full-width, some separators escaped."""
    out = []
    for i, d in enumerate(digits):
        style = draw(st.sampled_from(["plain", "plain", "escaped", "fullwidth"]))
        out.append({"plain": d, "escaped": f"\\u003{d}", "fullwidth": chr(0xFF10 + int(d))}[style])
        if i < len(digits) - 1 and draw(st.integers(0, 3)) == 0:
            sep = draw(st.sampled_from([" ", "-", ".", "/", "\\/", "\\u0020", "\\u002d", " - "]))
            out.append(sep)
    return "".join(out)


PLACES = ("transaction_id", "account_id", "merchant_id", "currency", "channel", "country",
          "note", "nested", "key_of_extra", "integer_extra", "timestamp_fraction", "record_key_only")


@st.composite
def planted_records(draw) -> tuple[bytes, bytes, str]:
    """(record value, record key, planted digits): a transaction with one card number in it."""
    digits = draw(LUHN)
    text = draw(written(digits))
    place = draw(st.sampled_from(PLACES))
    record: dict = dict(VALID, transaction_id=f"t-{draw(st.integers(0, 999))}")
    marker = "@@CARD@@"
    if place in ("transaction_id", "account_id", "merchant_id"):
        record[place] = draw(st.sampled_from(["", "x-", "id "])) + marker
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
        raw = raw[:-1] + b',"pan":' + digits.encode() + b"}"
    raw = raw.replace(marker.encode(), text.encode())
    account = str(record["account_id"]).replace(marker, text)
    key = text.encode() if draw(st.booleans()) or place == "record_key_only" else account.encode()
    return raw, key, digits


PROPERTY = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                           HealthCheck.function_scoped_fixture])


@PROPERTY
@given(planted=planted_records())
@example(planted=(dumps({**VALID, "account_id": "4111111111111111"}), b"4111111111111111",
                  "4111111111111111"))
@example(planted=(dumps(VALID).replace(b'"t-1"', b'"t-\\u0034111.1111/1111 1111"'), b"k",
                  "4111111111111111"))
def test_no_card_number_in_any_field_or_encoding_is_ever_emitted(planted, masked_log):
    raw, key, digits = planted
    out = ScoringCore(policy=FixedThreshold(0.0)).process([raw], offsets=[0])
    assert len(out.decisions) + len(out.rejections) == 1
    emitted = []
    for record in out.decisions + out.flagged:
        emitted += [dumps(record), record["transaction_id"].encode()]
    for r in out.rejections:
        emitted += [dumps(dead_letter(raw, r.reason, r.detail, "tx", 0, 0)), dead_letter_key(key) or b""]

    async def publish(k: bytes, v: bytes) -> None:
        return None

    svc = ReviewService(publish, CollectorRegistry())
    for record in out.flagged:
        item = svc.ingest(loads(dumps(record)), 0)
        assert item is not None
        emitted += [dumps(item.summary(0.0)), dumps(svc.detail(item.item_id))]
    logger, stream = masked_log
    stream.seek(0)
    stream.truncate()
    logger.warning("record %r key %r", raw, key)
    try:
        raise ValueError(raw.decode("utf-8", errors="replace"))
    except ValueError:
        logger.exception("failed")
    emitted.append(stream.getvalue().encode())
    for blob in emitted:
        assert_no_card_number(blob, digits)
