"""Hostile input, fuzzed: every input yields exactly one decision or one dead letter, and nothing raises.

Every topic flagstream reads may carry any bytes (ARCHITECTURE.md, "Hostile input and
faults"). Two sources of input: the named nasties of ``tests/hostile_corpus.py``
(nesting at every depth, numbers floats do not hold, broken UTF-8, wrong types in every
field, records at the size limit, card numbers ...) and Hypothesis strategies below that
mutate valid records field by field and byte by byte. They go through every reader:

- transactions: ``ScoringCore.process`` (also partition-routed), ``validate_transactions``,
  ``decode_object``;
- feedback and the recorded decisions it is joined to: ``Learner.learn``;
- recorded decisions: ``parse_decision`` then ``ShadowSet.annotate``;
- dead letters: ``dead_letter`` (bounded, no card number comes back out);
- merchant activity: ``MerchantActivity.from_wire`` and the merchants agent's reader;
- flagged records: ``ReviewService.ingest`` and what the review page shows of them;
- model records: ``ModelSync.sync`` with signed but malformed champions and seats.

A known crash is marked ``xfail(strict=True, raises=...)`` on exactly the tests and corpus
cases that find it (a crash's corpus cases run together, as one ``known_crash-...`` param),
with where it is raised and a minimal input: fixing the crash turns the mark into a
failure, and the mark is then removed. Hypothesis tests so marked carry the minimal input
as an ``@example``, so they fail the same way on every run.

Hypothesis runs derandomized (a fixed seed, no example database), so CI is deterministic.
"""

from __future__ import annotations

import base64
import copy
import math
import re
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from functools import partial
from types import SimpleNamespace

import hostile_corpus as hc
import numpy as np
import orjson
import pytest
from hostile_corpus import DECIDED, REJECTED, Case, Raw
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from flagstream.codec import JSONDecodeError, decode_object, dumps, loads
from flagstream.errors import InvalidRecord
from flagstream.features.layout import N_FEATURES
from flagstream.features.merchants import MerchantActivity, MerchantState
from flagstream.scoring.challengers import (
    EXAMPLE_CHALLENGERS,
    ShadowSet,
    challengers_from_spec,
    parse_decision,
)
from flagstream.scoring.gate import Gate, GateConfig
from flagstream.scoring.handle import ModelHandle
from flagstream.scoring.learner import Learner
from flagstream.scoring.linear import INPUT_NAMES, LinearChampion
from flagstream.scoring.policy import FixedThreshold
from flagstream.scoring.registry import CHAMPION, SEAT, seat_change, version_record
from flagstream.scoring.snapshots import seal
from flagstream.sinks.dead_letter import MAX_ORIGINAL_TEXT, dead_letter
from flagstream.sinks.metrics import PipelineMetrics
from flagstream.sinks.review.service import ReviewService
from flagstream.streams.core import ScoringCore, partitions_for
from flagstream.streams.learner_agents import _activity
from flagstream.streams.learner_runtime import LearnerRuntime
from flagstream.streams.model_sync import ModelSync
from flagstream.streams.schema import refuse_future, validate_transactions

FUZZ = settings(
    max_examples=200, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much, HealthCheck.large_base_example],
)
ENVELOPE_LIMIT = 64 * 1024


def fixed(reason: str, raises: type[BaseException] | tuple[type[BaseException], ...]):
    """A crash this suite found and the package has since fixed: its cases stay, as plain
    regression tests (``reason`` says what the crash was)."""
    return pytest.mark.fixed_crash(reason=reason)


def known_crash(reason: str, raises: type[BaseException] | tuple[type[BaseException], ...]):
    """The mark of a test or corpus case that finds a crash the package still has."""
    return pytest.mark.xfail(strict=True, raises=raises, reason=reason)


def cases(corpus: Sequence[Case], crashes: dict[str, pytest.MarkDecorator] | None = None) -> list:
    """Corpus cases as pytest params of one case each; the cases of each known crash together in
    one param carrying its mark (``known_crash-<first case>+<how many more>``)."""
    crashes = crashes or {}
    unknown = set(crashes) - {c.name for c in corpus}
    assert not unknown, f"crash marks for cases that do not exist: {unknown}"
    params = [pytest.param((c,), id=c.name) for c in corpus if c.name not in crashes]
    groups: dict[int, tuple[pytest.MarkDecorator, list[Case]]] = {}
    for c in corpus:
        if c.name in crashes:
            groups.setdefault(id(crashes[c.name]), (crashes[c.name], []))[1].append(c)
    for mark, group in groups.values():
        more = f"+{len(group) - 1}" if len(group) > 1 else ""
        params.append(pytest.param(tuple(group), id=f"known_crash-{group[0].name}{more}", marks=[mark]))
    return params


# =============================================================================================
# Known crashes (each marks exactly the tests and corpus cases that find it)
# =============================================================================================
PAN_ECHOED = fixed(
    "card number re-emitted: streams/core.py ScoringCore._decide (lines ~240-263) copies "
    "transaction_id/account_id/merchant_id and the context fields currency/channel/country verbatim "
    "onto decisions (scores topic) and flags (review topic); minimal input: a valid transaction with "
    "account_id '4111111111111111'", AssertionError)
UNHASHABLE_LABEL = fixed(
    "TypeError: unhashable type at scoring/feedback.py:26 (`label not in FEEDBACK_LABELS`) and :29 "
    "(`source not in FEEDBACK_SOURCES`), raised out of Learner.learn; minimal input: "
    'b\'{"transaction_id":"t-1","label":[]}\' (or "source":{})', TypeError)
SHADOW_GARBAGE = fixed(
    "ValueError at scoring/gate.py:91 _loss float(p) (from Gate.observe, gate.py:149-152, called by "
    "Learner.learn): check_decision does not check a recorded decision's `shadow`; minimal input: a "
    'valid recorded decision plus "shadow": {"lr-fast": "x"} (a list or string there is an '
    "AttributeError at gate.py:149). The worker overwrites `shadow` when it has challengers, so "
    "there this needs FLAGSTREAM_CHALLENGERS=''", (ValueError, AttributeError, TypeError))
MODEL_POISONED = fixed(
    "champion and challengers score NaN forever after learning finite but extreme recorded "
    "features: check_decision (scoring/feedback.py) accepts any finite value, River's StandardScaler "
    "statistics overflow to inf and scoring/linear.py score_batch gives NaN; minimal input: two labels "
    "on decisions whose amount feature is 1e308 and -1e308", AssertionError)
DECISION_TOO_DEEP_TO_STORE = fixed(
    "TypeError (orjson.JSONEncodeError 'Recursion limit reached') at streams/learner_agents.py:62 "
    "record_decisions `dumps(v)`: parse_decision (scoring/challengers.py) accepts a decision with an "
    "unknown field nested 254+ levels (loads reads up to 1024, dumps writes up to 254); minimal "
    'input: a valid recorded decision plus "extra": [[[...]]] 254 deep', TypeError)
DEAD_LETTER_TOO_BIG = fixed(
    "dead letter over 64 KiB: sinks/dead_letter.py keeps 16,384 bytes of the original but encodes "
    "them twice, as `original` (each control byte becomes a 6-byte \\u00XX escape, each invalid "
    "byte a 3-byte U+FFFD) and as base64; minimal input: b'\\x00' * 16384 (120 KB envelope) or "
    "b'\\xff' * 16384 (72 KB)", AssertionError)
DEAD_LETTER_CUTS_OUT_A_PAN = fixed(
    "card number in a dead letter: sinks/dead_letter.py:36-37 masks before it cuts at MAX_ORIGINAL, "
    "so a 20-digit run (not a card number, left unmasked) cut at byte 16,384 leaves a Luhn-valid "
    "16-digit tail in `original`/`original_b64`; minimal input: b'x' * 16368 + "
    "b'41111111111111110000'", AssertionError)
DAY_OVERFLOW = fixed(
    "OverflowError at features/merchants.py:54 from_wire np.asarray(obj['d'], np.int64), not among "
    "the exceptions streams/learner_agents.py _activity catches (JSONDecodeError, KeyError, "
    "TypeError, ValueError), so the merchants agent crashes; minimal input: "
    'b\'{"m":["m-1"],"d":[9223372036854775808],"n":[1],"f":[0]}\' (also "d":1e300 or 2**64)',
    OverflowError)
ACTIVITY_UNCHECKED = fixed(
    "MerchantActivity.from_wire (features/merchants.py:51-57) accepts activity MerchantState.apply "
    "cannot take: merchant ids that are not strings (the agent's key.encode() fails), scalars (Numba "
    "TypingError), and columns shorter or longer than the ids (the unchecked Numba kernel "
    "update_merchants reads/writes out of bounds: SIGSEGV with 100,000 days for one merchant); "
    'minimal input: b\'{"m":["m-1"],"d":[1,2],"n":[1,1],"f":[0,0]}\'', AssertionError)
SCORE_NOT_A_NUMBER = fixed(
    "ValueError/TypeError at sinks/review/queue.py:158 ReviewQueue.add `float(record.get('score'))`, "
    "raised out of ReviewService.ingest; minimal input: {'transaction_id': 't-1', 'score': 'x'} "
    "(or null, [], {})", (ValueError, TypeError))
REASONS_NOT_A_LIST = fixed(
    "AttributeError/TypeError at sinks/review/queue.py:102 ReviewItem.summary "
    "`(r.get('reasons') or [{}])[0].get('text')`: ingest queues any `reasons`, then every queue page "
    "and the item's detail view raise; minimal input: {'transaction_id': 't-1', 'score': 0.9, "
    "'reasons': 'x'} (or true, -1, [5], [[]], {'text': 'x'})", (AttributeError, TypeError, KeyError))
REVIEW_RECURSION = fixed(
    "RecursionError at flagstream/cards.py:47-49 mask_card_numbers (recursive), from "
    "sinks/review/queue.py:168 ReviewQueue.add: the review agent decodes with loads (nesting up to "
    "1024), no limit; minimal input: a flagged record with an unknown field nested ~497 levels "
    "(str(account_id) at sinks/review/service.py:128 fails the same way)", RecursionError)
WEDGED_BY_NUMBERS = fixed(
    "streams/model_sync.py:102/115 int() accepts a float or bool epoch/sequence: a signed seat with "
    "epoch 1e300 or a champion with sequence 1e300 is adopted and no later version or seat change is "
    "ever followed (sequence True is adopted as version lr-000001); minimal input: the champion "
    "record with 'sequence': 1e300", AssertionError)
LINEAGE_NOT_A_STRING = fixed(
    "streams/model_sync.py:110 takes any truthy `lineage`: a signed champion with 'lineage': ['lr'] "
    "is adopted and the handle's name becomes a list (version \"['lr']-000003\" on every decision)",
    AssertionError)
NAN_SCORING_MODEL = fixed(
    "LinearChampion.from_state (scoring/linear.py) accepts finite but extreme statistics whose "
    "products overflow: the adopted model scores NaN; minimal input: weights {'amount': 1e308, "
    "'amount_over_50': -1e308} with vars 1.0 for both", AssertionError)


# =============================================================================================
# Strategies: hostile bytes and hostile JSON
# =============================================================================================
SPECIAL_TEXT = st.sampled_from([
    "", " ", "\x00", "\x1b[31m", "\r\n", "\u202e", "\u200f", "\u2066", "\ufeff", "\u200b",
    "x" * 128, "x" * 129, "é" * 128, "é" * 129, "💳" * 128, hc.PAN, "4111 1111 1111 1111",
    "5500-0000-0000-0004", "NaN", "Infinity", "-0", "1e400", "null", "2018-04-01T00:07:56Z",
    "9999-12-31T23:59:59+14:00", "0001-01-01T00:00:00Z", "fraud", "legit", "review",
])
TEXT = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=24), SPECIAL_TEXT,
    st.builds(lambda ch, n: ch * n, st.sampled_from(["x", "é", "💳", "\x00", "\u202e", "7"]),
              st.integers(120, 140)),
)
EXTREME_NUMBERS = st.sampled_from([
    b"1e308", b"-1e308", b"1.7976931348623157e308", b"1e-320", b"5e-324", b"-5e-324", b"-0.0", b"-0",
    b"0.0", str(2**63 - 1).encode(), str(2**63).encode(), str(2**64 - 1).encode(), str(2**64).encode(),
    str(-(2**63)).encode(), str(-(2**63) - 1).encode(), str(10**400).encode(), b"1e400", b"-1e400",
    b"1e-400", b"100000000000000000000", b"1522541276000", b"946684800000", b"4102444800000",
])
NOT_JSON = st.sampled_from([
    b"NaN", b"-NaN", b"Infinity", b"-Infinity", b"nan", b"inf", b"0x1F", b"01", b"+1", b".5", b"1.",
    b"undefined", b"'x'", b'"\\ud800"', b'"\\udfff\\ud800"', b'"\xff"', b'"\xc0\xaf"', b"tru", b"nul",
])
NUMBER = st.one_of(
    st.integers(-(2**70), 2**70).map(lambda i: str(i).encode()),
    st.floats(allow_nan=False, allow_infinity=False).map(orjson.dumps),
    EXTREME_NUMBERS,
)
SCALAR = st.one_of(
    st.just(b"null"), st.booleans().map(orjson.dumps), NUMBER, TEXT.map(orjson.dumps), NOT_JSON,
)


def _containers(children: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.lists(children, max_size=5).map(lambda xs: b"[" + b",".join(xs) + b"]"),
        st.lists(st.tuples(TEXT, children), max_size=5).map(hc.record),
    )


#: Any JSON value as raw text, and much that is almost JSON.
JSON_TEXT = st.recursive(SCALAR, _containers, max_leaves=12)
DEEP = st.builds(hc.nested, st.sampled_from(["object", "array"]), st.integers(1, hc.DEEPEST), SCALAR)
VALUE = st.one_of(JSON_TEXT, JSON_TEXT, DEEP)

_OFFSETS = st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(lambda m: timezone(timedelta(minutes=m)))
TIMESTAMP = st.one_of(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=_OFFSETS)
    .map(lambda d: orjson.dumps(d.isoformat())),
    st.datetimes(min_value=datetime(1999, 12, 31), max_value=datetime(2100, 1, 2))
    .map(lambda d: orjson.dumps(d.isoformat())),  # no offset
    st.integers(-(2**63), 2**64 - 1).map(lambda i: str(i).encode()),
    st.integers(hc.MIN_EPOCH_MS - 2, hc.MIN_EPOCH_MS + 2).map(lambda i: str(i).encode()),
    st.integers(hc.MAX_EPOCH_MS - 2, hc.MAX_EPOCH_MS + 2).map(lambda i: str(i).encode()),
    st.sampled_from([hc.encode(v) for _, v, _ in hc.TIMESTAMPS]),
    VALUE,
)


def _post(draw: st.DrawFn, raw: bytes) -> bytes:
    """Byte-level damage to an encoded record: truncation, a spliced invalid byte, a BOM, padding."""
    how = draw(st.sampled_from(["keep"] * 8 + ["truncate", "splice", "bom", "limit", "over", "garbage"]))
    if how == "truncate":
        return raw[: draw(st.integers(0, max(0, len(raw) - 1)))]
    if how == "splice":
        at = draw(st.integers(0, len(raw)))
        bad = draw(st.sampled_from([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\x00", b"\x80"]))
        return raw[:at] + bad + raw[at:]
    if how == "bom":
        return b"\xef\xbb\xbf" + raw
    if how in ("limit", "over") and raw.endswith(b"}") and 2 < len(raw) < hc.MAX_RECORD_BYTES - 20:
        filler = hc.MAX_RECORD_BYTES + (how == "over") - len(raw) - len(b',"pad":""')
        return raw[:-1] + b',"pad":"' + b"x" * filler + b'"}'
    if how == "garbage":
        return raw + draw(st.binary(min_size=1, max_size=8))
    return raw


@st.composite
def mutated(draw: st.DrawFn, base: dict, fields: dict[str, st.SearchStrategy[bytes]],
            ids: dict[str, st.SearchStrategy[str]]) -> bytes:
    """``base`` encoded with up to four hostile edits: a field replaced, removed, given twice,
    nested deep, or an unknown field of any shape added; then maybe damaged byte-wise."""
    pairs = [(k, hc.encode(v)) for k, v in base.items()]
    for name, strategy in ids.items():
        pairs = [(k, orjson.dumps(draw(strategy)) if k == name else v) for k, v in pairs]
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["replace", "replace", "delete", "duplicate", "extra", "nest"]))
        name = draw(st.sampled_from(sorted(fields)))
        value = draw(fields[name])
        if op == "replace":
            pairs = [(k, value if k == name else v) for k, v in pairs]
        elif op == "delete":
            pairs = [(k, v) for k, v in pairs if k != name]
        elif op == "duplicate":
            pairs.insert(draw(st.integers(0, len(pairs))), (name, value))
        elif op == "extra":
            pairs.append((draw(TEXT), draw(VALUE)))
        else:
            depth = draw(st.integers(1, hc.DEEPEST))
            kind = draw(st.sampled_from(["object", "array"]))
            pairs = [(k, hc.nested(kind, depth, v) if k == name else v) for k, v in pairs]
    return _post(draw, hc.record(pairs))


def _or_value(strategy: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(strategy, strategy, strategy, VALUE)


SMALL_IDS = st.one_of(st.sampled_from([f"t-{i}" for i in range(4)]), TEXT)
TRANSACTION_FIELDS = {
    "transaction_id": _or_value(TEXT.map(orjson.dumps)), "account_id": _or_value(TEXT.map(orjson.dumps)),
    "merchant_id": _or_value(TEXT.map(orjson.dumps)), "amount": _or_value(NUMBER), "timestamp": TIMESTAMP,
    "currency": VALUE, "channel": VALUE, "country": VALUE, "is_fraud": VALUE,
}
HOSTILE_TRANSACTION = mutated(
    hc.TRANSACTION, TRANSACTION_FIELDS,
    {"transaction_id": SMALL_IDS, "account_id": st.sampled_from(["c-42", "c-0", "c-1", "c-2"])},
)
#: One value read from the ``transactions`` topic.
TRANSACTION_VALUE = st.one_of(
    HOSTILE_TRANSACTION, HOSTILE_TRANSACTION, HOSTILE_TRANSACTION, st.binary(max_size=300), st.none(),
    st.just(b""), JSON_TEXT, DEEP,
    st.sampled_from([c.value for c in hc.TRANSACTIONS if c.value is None or len(c.value) < 20_000]),
)
TRANSACTION_BATCH = st.lists(TRANSACTION_VALUE, max_size=10)

DECISION_IDS = [f"t-{i}" for i in range(4)]
FEATURE_NUMBER = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(orjson.dumps), EXTREME_NUMBERS, NUMBER, SCALAR,
)
FEATURES = st.one_of(
    st.lists(FEATURE_NUMBER, min_size=N_FEATURES, max_size=N_FEATURES),
    st.lists(FEATURE_NUMBER, max_size=N_FEATURES + 3),
).map(lambda xs: b"[" + b",".join(xs) + b"]")
HOSTILE_DECISION = mutated(
    hc.DECISION,
    {"features": _or_value(FEATURES), "score": _or_value(NUMBER),
     "merchant_id": _or_value(TEXT.map(orjson.dumps)),
     "event_time_ms": _or_value(NUMBER), "scored_at_ms": _or_value(NUMBER), "shadow": VALUE},
    {},
)
#: One value read from the ``scores`` topic (a decision a scorer recorded, or anything else).
DECISION_VALUE = st.one_of(HOSTILE_DECISION, HOSTILE_DECISION, HOSTILE_DECISION, st.binary(max_size=100),
                           st.none(), JSON_TEXT)
HOSTILE_FEEDBACK = mutated(
    hc.FEEDBACK,
    {"transaction_id": _or_value(TEXT.map(orjson.dumps)), "label": _or_value(TEXT.map(orjson.dumps)),
     "source": _or_value(TEXT.map(orjson.dumps)), "reviewer": VALUE, "decided_at": TIMESTAMP},
    {"transaction_id": st.one_of(st.sampled_from(DECISION_IDS), SMALL_IDS),
     "label": st.sampled_from(["fraud", "legit"])},
)
FEEDBACK_VALUE = st.one_of(HOSTILE_FEEDBACK, HOSTILE_FEEDBACK, HOSTILE_FEEDBACK, st.binary(max_size=100),
                           st.none(), JSON_TEXT)


def decoded(raw: bytes | None) -> object:
    """What a reader that decodes without checking holds: the JSON value, else the raw bytes."""
    try:
        return loads(raw) if raw is not None else None
    except JSONDecodeError:
        return raw


# =============================================================================================
# Transactions: ScoringCore, validate_transactions, decode_object
# =============================================================================================
ROUTED = {"partition": 0, "partitions": 4}


def process(values: Sequence[bytes | None], routed: bool):
    """One batch through a fresh core, offsets 0..n-1, optionally partition-routed."""
    return ScoringCore().process(list(values), offsets=list(range(len(values))), **(ROUTED if routed else {}))


def outcomes(outcome, values: Sequence[bytes | None], routed: bool) -> list[str]:
    """Where each input went; fails unless every index is in exactly one place, and each
    decision is for the transaction at its index, with a probability for a score."""
    n = len(values)
    places: dict[int, list[str]] = {i: [] for i in range(n)}
    for i in outcome.indices:
        places[i].append(DECIDED)
    for r in outcome.rejections:
        places[r.index].append(REJECTED)
    for i, _account in outcome.misrouted:
        places[i].append("misrouted")
    assert routed or not outcome.misrouted, "misrouted without partitions"
    assert len(outcome.decisions) == len(outcome.indices)
    wrong = {i: p for i, p in places.items() if len(p) != 1}
    assert not wrong, f"inputs without exactly one outcome: {wrong}"
    for i, decision in zip(outcome.indices, outcome.decisions, strict=True):
        assert decision["transaction_id"] == loads(values[i])["transaction_id"]  # type: ignore[arg-type]
        assert 0.0 <= decision["score"] <= 1.0
    return [p[0] for p in places.values()]


def expected(outcome: str, expect: str | None, routed: bool) -> bool:
    if expect is None:
        return True
    if expect == DECIDED and routed:
        return outcome in (DECIDED, "misrouted")
    return outcome == expect


@pytest.mark.parametrize("routed", [False, True], ids=["unrouted", "routed"])
@pytest.mark.parametrize("group", cases(hc.TRANSACTIONS))
def test_core_gives_each_corpus_transaction_one_outcome(group: tuple[Case, ...], routed: bool):
    for case in group:
        [where] = outcomes(process([case.value], routed), [case.value], routed)
        assert expected(where, case.expect, routed), f"{case.name}: {where}, expected {case.expect}"


@pytest.mark.parametrize("routed", [False, True], ids=["unrouted", "routed"])
def test_core_gives_a_batch_of_every_corpus_transaction_one_outcome_each(routed: bool):
    values = [c.value for c in hc.TRANSACTIONS + hc.TRANSACTION_NESTING]
    outcomes(process(values, routed), values, routed)


@pytest.mark.parametrize("group", cases(hc.TRANSACTIONS))
def test_schema_partitions_each_corpus_transaction(group: tuple[Case, ...]):
    for case in group:
        batch = refuse_future(validate_transactions([case.value]), time.time() * 1000)
        assert sorted(batch.indices + [r.index for r in batch.rejections]) == [0]
        assert expected(DECIDED if batch.indices else REJECTED, case.expect, False)


def test_schema_limits_nesting_at_every_depth():
    """Depth 1..1100, objects and arrays, as the record and inside an unknown field: accepted
    exactly while the record (depth 1) plus the field stays within 8 levels."""
    values = [c.value for c in hc.TRANSACTION_NESTING]
    batch = validate_transactions(values)
    assert sorted(batch.indices + [r.index for r in batch.rejections]) == list(range(len(values)))
    got = {i: DECIDED for i in batch.indices} | {r.index: REJECTED for r in batch.rejections}
    wrong = [(c.name, got[i]) for i, c in enumerate(hc.TRANSACTION_NESTING) if got[i] != c.expect]
    assert wrong == []


@pytest.mark.parametrize("group", cases(hc.TRANSACTIONS + hc.TRANSACTION_NESTING[::25]))
def test_decode_object_raises_only_invalid_record(group: tuple[Case, ...]):
    for case in group:
        try:
            obj = decode_object(case.value, hc.MAX_RECORD_BYTES, hc.MAX_NESTING)
        except InvalidRecord as exc:
            assert exc.reason and str(exc)
        else:
            assert isinstance(obj, dict)


@FUZZ
@given(values=TRANSACTION_BATCH, routed=st.booleans())
def test_core_gives_hostile_batches_one_outcome_each(values, routed):
    outcomes(process(values, routed), values, routed)


@FUZZ
@given(values=TRANSACTION_BATCH, data=st.data())
def test_core_gives_hostile_batches_of_several_partitions_one_outcome_each(values, data):
    """Records of several partitions in one call (a step's): each is decided only on its
    account's own partition, and misrouted otherwise."""
    sources = data.draw(st.lists(st.integers(0, 3), min_size=len(values), max_size=len(values)))
    outcome = ScoringCore().process(list(values), list(range(len(values))), sources, 4)
    outcomes(outcome, values, routed=True)
    decided = [(loads(values[i])["account_id"], sources[i]) for i in outcome.indices]  # type: ignore[arg-type]
    misrouted = [(account, sources[i]) for i, account in outcome.misrouted]
    for (account, source), home in zip(decided + misrouted,
                                       partitions_for([a for a, _ in decided + misrouted], 4).tolist(),
                                       strict=True):
        assert (home == source) == ((account, source) in decided)


@FUZZ
@given(values=TRANSACTION_BATCH)
def test_schema_partitions_hostile_batches(values):
    batch = validate_transactions(values)
    assert sorted(batch.indices + [r.index for r in batch.rejections]) == list(range(len(values)))
    assert len(batch.amounts) == len(batch.timestamps_ms) == len(batch.indices)
    assert all(math.isfinite(a) and 0 < a <= 1e9 for a in batch.amounts.tolist())


@FUZZ
@given(raw=TRANSACTION_VALUE)
def test_decode_object_raises_only_invalid_record_on_hostile_bytes(raw):
    try:
        obj = decode_object(raw, hc.MAX_RECORD_BYTES, hc.MAX_NESTING)
    except InvalidRecord as exc:
        assert exc.reason
    else:
        assert isinstance(obj, dict)


def strings_in(value: object) -> list[str]:
    """Every string (keys included) inside a JSON-like value."""
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


PAN_CASES = [c for c in hc.TRANSACTIONS if "pan" in c.name]
ECHOED_FIELDS = re.compile(r"_in_(transaction_id|account_id|merchant_id|currency|channel|country)$")


@pytest.mark.parametrize("group", cases(PAN_CASES, {c.name: PAN_ECHOED for c in PAN_CASES
                                                   if ECHOED_FIELDS.search(c.name)}))
def test_decisions_and_flags_never_carry_a_card_number(group: tuple[Case, ...]):
    """Card numbers never appear on any topic (ARCHITECTURE.md): not on ``scores``, not on ``review``."""
    for case in group:
        out = ScoringCore(policy=FixedThreshold(0.0)).process([case.value])  # flags it too
        leaked = [s for record in out.decisions + out.flagged for s in strings_in(record)
                  if hc.card_numbers_in(s)]
        assert leaked == []


# =============================================================================================
# Feedback and the recorded decisions it joins: Learner.learn
# =============================================================================================
NOW_MS = hc.SCORED_AT_MS + 60_000
GOOD_DECISION = loads(hc.decision())
LEARN = b'{"transaction_id":"t-000001","label":"fraud","source":"review"}'


def new_learner(lookup: Callable[[str], object], challengers: str = EXAMPLE_CHALLENGERS) -> Learner:
    """A learner as the worker builds one: champion, shadow challengers and the gate."""
    shadow = ShadowSet(challengers_from_spec(challengers, LinearChampion()))
    return Learner(ModelHandle(LinearChampion()), lookup, clock_ms=lambda: NOW_MS,  # type: ignore[arg-type]
                   shadow=shadow, gate=Gate(GateConfig()))


def check_learned(out, n: int) -> None:
    indices = [r.index for r in out.rejections]
    assert out.learned + len(out.rejections) == n
    assert len(set(indices)) == len(indices) and all(0 <= i < n for i in indices)


PROBE = np.array([[57.16, 0.0, 1.0, 1.0, 57.16, 3.0, 40.0, 9.0, 45.0, 10.0, 0.0, 60.0, 0.01, 300.0,
                   0.02, 3_600.0, 1.2, 1.0, 2.0, 0.0, 2.0, 1.0, 30.0, 0.0, 1.1, 0.4, 3.0, 4.5, 1.0],
                  [0.0] * N_FEATURES, [1.0] * N_FEATURES])


def scores_finitely(model) -> bool:
    scores = np.asarray(model.score_batch(PROBE))
    return bool(np.all(np.isfinite(scores)) and np.all((scores >= 0) & (scores <= 1)))


def recorded(values: dict[bytes, bytes | None], challengers: str = EXAMPLE_CHALLENGERS) -> dict[bytes, bytes]:
    """The ``decisions`` table as the ``record-decisions`` agent fills it from ``scores``:
    values ``parse_decision`` accepts, shadow-scored, re-encoded, under their record key."""
    parsed = [(k, parse_decision(v)) for k, v in values.items()]
    usable = [(k, v) for k, v in parsed if isinstance(v, dict) and k]
    ShadowSet(challengers_from_spec(challengers, LinearChampion())).annotate([v for _, v in usable])
    return {k[:256]: dumps(v) for k, v in usable}


def worker_lookup(table: dict[bytes, bytes]) -> Callable[[str], object]:
    """The worker's feedback join, :meth:`LearnerRuntime.lookup`, over that table."""
    return partial(LearnerRuntime.lookup, SimpleNamespace(decisions=table))  # type: ignore[arg-type]


UNHASHABLE_FEEDBACK = {
    *(f"{field}={token}" for field in ("label", "source")
      for token in ("empty_list", "list", "empty_object", "object")),
    "label_list_of_fraud", "label_object", "source_list", "source_object", "duplicate_label",
}


@pytest.mark.parametrize("group", cases(hc.FEEDBACKS, dict.fromkeys(UNHASHABLE_FEEDBACK, UNHASHABLE_LABEL)))
def test_learner_takes_or_rejects_each_corpus_feedback(group: tuple[Case, ...]):
    for case in group:
        learner = new_learner({"t-000001": GOOD_DECISION}.get)
        check_learned(learner.learn([case.value]), 1)


@UNHASHABLE_LABEL
def test_learner_takes_or_rejects_a_batch_of_every_corpus_feedback():
    values = [c.value for c in hc.FEEDBACKS + hc.FEEDBACK_NESTING]
    learner = new_learner({"t-000001": GOOD_DECISION}.get)
    check_learned(learner.learn(values), len(values))
    again = learner.learn(values, offsets=list(range(len(values))), partition=0)
    check_learned(again, len(values))
    assert learner.learn(values, offsets=list(range(len(values))), partition=0).replayed == len(values)


@pytest.mark.parametrize("challengers", [EXAMPLE_CHALLENGERS, ""], ids=["challengers", "no_challengers"])
@pytest.mark.parametrize("group", cases(hc.DECISIONS, {"shadow_garbage": SHADOW_GARBAGE}))
def test_learner_rejects_or_learns_each_corpus_recorded_decision(group: tuple[Case, ...], challengers: str):
    """The lookup hands back whatever the ``scores`` topic held, decoded (or not decodable)."""
    for case in group:
        learner = new_learner({"t-000001": decoded(case.value)}.get, challengers)
        check_learned(learner.learn([LEARN]), 1)


@pytest.mark.parametrize(("case", "challengers"), [
    pytest.param(c, spec, id=f"{c.name}-{name}",
                 marks=[SHADOW_GARBAGE] if (c.name, name) == ("shadow_garbage", "no_challengers") else [])
    for c in hc.DECISIONS for name, spec in (("challengers", EXAMPLE_CHALLENGERS), ("no_challengers", ""))
])
def test_learner_joins_each_corpus_decision_the_way_the_worker_records_it(case: Case, challengers: str):
    table = recorded({b"t-000001": case.value}, challengers)
    learner = new_learner(worker_lookup(table), challengers)
    check_learned(learner.learn([LEARN]), 1)


@DECISION_TOO_DEEP_TO_STORE
def test_worker_records_and_joins_decisions_nested_at_every_depth():
    values = {c.name.encode(): c.value for c in hc.DECISION_NESTING}
    learner = new_learner(worker_lookup(recorded(values)))
    feedback = [dumps({"transaction_id": c.name, "label": "legit"}) for c in hc.DECISION_NESTING]
    check_learned(learner.learn(feedback), len(feedback))


@MODEL_POISONED
def test_learning_hostile_decisions_leaves_every_model_scoring():
    """No recorded decision can break the champion or a challenger: after learning every
    corpus decision the learner accepts, each still scores finite probabilities."""
    decisions = {f"t-{i}": decoded(c.value) for i, c in enumerate(hc.DECISIONS) if c.name != "shadow_garbage"}
    learner = new_learner(decisions.get)
    feedback = [dumps({"transaction_id": tx, "label": label})
                for tx in decisions for label in ("fraud", "legit")]
    check_learned(learner.learn(feedback), len(feedback))
    assert scores_finitely(learner.handle.model)
    assert all(scores_finitely(c.model) for c in learner.shadow)


GOOD_FEEDBACK = st.builds(lambda tx, label: dumps({"transaction_id": tx, "label": label}),
                          st.sampled_from(DECISION_IDS), st.sampled_from(["fraud", "legit"]))


@UNHASHABLE_LABEL
@FUZZ
@given(feedback=st.lists(FEEDBACK_VALUE, max_size=8))
@example(feedback=[b'{"transaction_id":"t-0","label":[]}'])
def test_learner_takes_or_rejects_hostile_feedback(feedback):
    learner = new_learner({tx: GOOD_DECISION for tx in DECISION_IDS}.get)
    check_learned(learner.learn(feedback), len(feedback))
    out = learner.learn(feedback, offsets=list(range(len(feedback))), partition=3)
    assert out.learned + len(out.rejections) + out.replayed == len(feedback)


@FUZZ
@given(feedback=st.lists(GOOD_FEEDBACK, max_size=6),
       decisions=st.dictionaries(st.sampled_from(DECISION_IDS), DECISION_VALUE, max_size=4),
       challengers=st.sampled_from([EXAMPLE_CHALLENGERS, ""]))
def test_learner_rejects_or_learns_hostile_recorded_decisions(feedback, decisions, challengers):
    learner = new_learner({k: decoded(v) for k, v in decisions.items()}.get, challengers)
    check_learned(learner.learn(feedback), len(feedback))


@DECISION_TOO_DEEP_TO_STORE
@FUZZ
@given(feedback=st.lists(GOOD_FEEDBACK, max_size=6),
       decisions=st.dictionaries(st.sampled_from(DECISION_IDS), DECISION_VALUE, max_size=4))
@example(feedback=[], decisions={"t-0": hc.decision(extra=Raw(hc.nested("array", 254)))})
def test_learner_joins_hostile_decisions_the_way_the_worker_records_them(feedback, decisions):
    table = recorded({k.encode(): v for k, v in decisions.items()})
    check_learned(new_learner(worker_lookup(table)).learn(feedback), len(feedback))


# =============================================================================================
# Recorded decisions: parse_decision then ShadowSet.annotate
# =============================================================================================
def annotate_all(values: Sequence[bytes | None]) -> None:
    shadow = ShadowSet(challengers_from_spec(EXAMPLE_CHALLENGERS, LinearChampion()))
    parsed = [parse_decision(v) for v in values]
    for raw, p in zip(values, parsed, strict=True):
        assert isinstance(p, dict) or p is raw, "kept as it came unless it can be shadow-scored"
    decisions = [p for p in parsed if isinstance(p, dict)]
    assert shadow.annotate(decisions) == (len(decisions) if decisions else 0)
    for d in decisions:
        assert set(d["shadow"]) == set(shadow.names())
        assert all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in d["shadow"].values()), d["shadow"]
        dumps(d)  # what the agent stores


@pytest.mark.parametrize("group", cases(hc.DECISIONS))
def test_shadow_scores_each_corpus_decision_or_keeps_it_as_it_came(group: tuple[Case, ...]):
    for case in group:
        annotate_all([case.value])


def test_shadow_scores_a_batch_of_every_corpus_decision():
    annotate_all([c.value for c in hc.DECISIONS])


@FUZZ
@given(values=st.lists(DECISION_VALUE, max_size=10))
def test_shadow_scores_hostile_decisions_or_keeps_them_as_they_came(values):
    annotate_all(values)


# =============================================================================================
# Dead letters: bounded, and no card number comes back out
# =============================================================================================
def check_dead_letter(raw: bytes | None, detail: str) -> None:
    envelope = dead_letter(raw, "invalid_json", detail, "transactions", 3, 12_345)
    encoded = dumps(envelope)
    assert len(encoded) < ENVELOPE_LIMIT, f"dead letter of {len(encoded)} bytes"
    original = base64.b64decode(envelope["original_b64"])
    text = envelope["original"]  # the first MAX_ORIGINAL_TEXT bytes of the kept ones, as text
    assert len(text) <= MAX_ORIGINAL_TEXT
    assert original[:MAX_ORIGINAL_TEXT].decode("utf-8", errors="replace").startswith(text[:-20])
    assert envelope["original_length"] == (len(raw) if raw else 0)
    # everything a reader of the dead-letter topic sees of the record and the detail
    visible = [envelope["original"], envelope["detail"], original.decode("latin-1"),
               encoded.decode().replace(envelope["original_sha256"], "")
               .replace(envelope["original_b64"], "")]
    leaked = [n for text in visible for n in hc.card_numbers_in(re.sub(r'"(rejected_at_ms|offset|'
                                                                        r'original_length)":\d+', "", text))]
    assert leaked == []


@pytest.mark.parametrize("group", cases(hc.DEAD_LETTER_RAWS, {
    **dict.fromkeys(["nul_bytes_at_cap", "invalid_utf8_at_cap", "control_chars_at_cap", "nul_bytes_5mb",
                     "invalid_utf8_5mb"], DEAD_LETTER_TOO_BIG),
    "twenty_digits_cut_to_a_pan": DEAD_LETTER_CUTS_OUT_A_PAN,
}))
def test_dead_letter_of_each_corpus_record_is_bounded_and_masked(group: tuple[Case, ...]):
    for case in group:
        check_dead_letter(case.value, "not JSON")


@pytest.mark.parametrize("detail", [pytest.param(d, id=n) for n, d in hc.DEAD_LETTER_DETAILS])
def test_dead_letter_with_each_corpus_detail_is_bounded_and_masked(detail: str):
    check_dead_letter(hc.VALID, detail)


DEAD_LETTER_SIZE = st.one_of(st.integers(0, 20_000), st.integers(16_380, 16_400),
                             st.sampled_from([65_536, 1_000_000, 5_000_000]))
DEAD_LETTER_RAW = st.one_of(
    st.binary(max_size=2_000), TRANSACTION_VALUE,
    st.builds(lambda unit, size: (unit * (size // len(unit) + 1))[:size],
              st.one_of(st.binary(min_size=1, max_size=24), SPECIAL_TEXT.filter(bool).map(str.encode),
                        st.sampled_from([p.encode() + b" " for p in hc.PANS])),
              DEAD_LETTER_SIZE),
)
DETAIL = st.one_of(TEXT, st.text(max_size=2_000),
                   st.builds(lambda prefix, pan: prefix + pan, st.text(max_size=600),
                             st.sampled_from(hc.PANS)))


@settings(FUZZ, max_examples=150)
@given(raw=DEAD_LETTER_RAW, detail=DETAIL)
def test_dead_letters_of_hostile_records_are_bounded_and_masked(raw, detail):
    check_dead_letter(raw, detail)


# =============================================================================================
# Merchant activity: MerchantActivity.from_wire and the merchants agent's reader
# =============================================================================================
#: ``from_wire`` refuses anything ``MerchantState.apply`` cannot take with one exception,
#: ``ValueError``, which the merchants agent (``flagstream.streams.learner_agents._activity``)
#: catches along with its own JSONDecodeError. (Before the fix it raised KeyError, TypeError,
#: OverflowError for days at 2**63 or beyond, and accepted ragged columns that the Numba
#: kernel then read out of bounds.)
WRAPPED = (ValueError,)
RAISES_AS_DOCUMENTED = [
    ("not_an_object", [], ValueError),
    ("null", None, ValueError),
    ("missing_days", {"m": ["m-1"], "n": [1.0], "f": [0.0]}, ValueError),
    ("merchants_not_iterable", {"m": 5, "d": [1], "n": [1.0], "f": [0.0]}, ValueError),
    ("day_not_a_number", {"m": ["m-1"], "d": ["x"], "n": [1.0], "f": [0.0]}, ValueError),
    ("count_not_a_number", {"m": ["m-1"], "d": [1], "n": ["x"], "f": [0.0]}, ValueError),
    ("ragged_days", {"m": ["m-1", "m-2"], "d": [[1], 2], "n": [1.0, 1.0], "f": [0.0, 0.0]}, ValueError),
    ("null_days", {"m": ["m-1"], "d": None, "n": [1.0], "f": [0.0]}, ValueError),
    ("object_counts", {"m": ["m-1"], "d": [1], "n": {}, "f": [0.0]}, ValueError),
    ("huge_day", {"m": ["m-1"], "d": [2**63], "n": [1.0], "f": [0.0]}, ValueError),
    # a day that would hold a slot of the merchant's ring that no real day could take back
    ("day_in_2099", {"m": ["m-1"], "d": [47_480], "n": [1.0], "f": [0.0]}, ValueError),
    # (3 days on from the day this module is read: still ahead if the run crosses midnight)
    ("days_ahead", {"m": ["m-1"], "d": [int(time.time() // 86_400) + 3], "n": [1.0], "f": [0.0]},
     ValueError),
    ("short_counts", {"m": ["m-1"], "d": [1, 2], "n": [1.0, 1.0], "f": [0.0, 0.0]}, ValueError),
]


@pytest.mark.parametrize(("obj", "raises"), [pytest.param(o, r, id=n) for n, o, r in RAISES_AS_DOCUMENTED])
def test_from_wire_raises_as_documented(obj, raises):
    with pytest.raises(raises):
        MerchantActivity.from_wire(obj)


def safe_to_apply(activity: MerchantActivity) -> None:
    """What ``MerchantState.apply`` (an unchecked Numba kernel) and the table write after it
    need: string ids and 1-D, equally long arrays of finite values (else it reads or writes
    out of bounds, or the agent's ``key.encode()`` fails)."""
    n = len(activity.merchant_ids)
    assert all(isinstance(m, str) for m in activity.merchant_ids), "merchant ids must be strings"
    for name in ("days", "counts", "frauds"):
        column = getattr(activity, name)
        assert column.ndim == 1 and len(column) == n, f"{name}: shape {column.shape} for {n} merchants"
    assert np.all(np.isfinite(activity.counts)) and np.all(np.isfinite(activity.frauds))


OVERFLOWING_DAYS = {"d=max_double", "d=two_to_64", "d=u64_max", "days_beyond_int64", "days_huge_float"}
#: Activity ``from_wire`` accepts and ``MerchantState.apply`` cannot take.
_NUMBERS = ("true", "false", "zero", "minus_one", "one_and_a_half", "empty_list", "list", "subnormal",
            "smallest", "minus_zero", "i64_min", "i64_max")
UNCHECKED_ACTIVITY = {
    *(f"m={t}" for t in ("empty_string", "string", "string_nan", "string_number", "long_string",
                         "empty_list", "list", "empty_object", "object")),
    *(f"d={t}" for t in _NUMBERS),
    *(f"{f}={t}" for f in "nf" for t in (*_NUMBERS, "null", "string_nan", "string_number", "max_double",
                                         "two_to_64", "u64_max")),
    "merchant_ids_not_strings", "merchant_ids_mixed", "merchant_ids_nested", "more_days_than_merchants",
    "fewer_days_than_merchants", "no_days", "fewer_counts", "fewer_frauds", "days_2d", "days_scalar",
}


@pytest.mark.parametrize("group", cases(hc.ACTIVITIES, dict.fromkeys(OVERFLOWING_DAYS, DAY_OVERFLOW)))
def test_from_wire_raises_only_what_the_merchants_agent_catches(group: tuple[Case, ...]):
    for case in group:
        try:
            obj = loads(case.value or b"")
        except JSONDecodeError:
            continue  # the agent's own decode error, caught
        try:
            MerchantActivity.from_wire(obj)
        except WRAPPED:
            pass


@pytest.mark.parametrize("group", cases(hc.ACTIVITIES, {
    **dict.fromkeys(OVERFLOWING_DAYS, DAY_OVERFLOW), **dict.fromkeys(UNCHECKED_ACTIVITY, ACTIVITY_UNCHECKED),
}))
def test_merchants_agent_reads_each_corpus_activity_safely(group: tuple[Case, ...]):
    for case in group:
        activity = _activity(case.value)
        if activity is not None:
            safe_to_apply(activity)
            state = MerchantState()
            state.apply(activity)
            assert all(isinstance(k, str) for k in state.arena.take_touched())


ACTIVITY_VALUE = mutated(
    hc.ACTIVITY,
    {"m": _or_value(st.lists(TEXT.map(orjson.dumps), max_size=4).map(lambda xs: b"[" + b",".join(xs) + b"]")),
     "d": _or_value(st.lists(NUMBER, max_size=4).map(lambda xs: b"[" + b",".join(xs) + b"]")),
     "n": _or_value(st.lists(NUMBER, max_size=4).map(lambda xs: b"[" + b",".join(xs) + b"]")),
     "f": VALUE},
    {},
)


@DAY_OVERFLOW
@FUZZ
@given(value=st.one_of(ACTIVITY_VALUE, JSON_TEXT))
@example(value=b'{"m":["m-1"],"d":[9223372036854775808],"n":[1],"f":[0]}')
def test_from_wire_raises_only_what_the_merchants_agent_catches_on_hostile_activity(value):
    try:
        obj = loads(value)
    except JSONDecodeError:
        return
    try:
        MerchantActivity.from_wire(obj)
    except WRAPPED:
        pass


@ACTIVITY_UNCHECKED
@FUZZ
@given(value=st.one_of(ACTIVITY_VALUE, JSON_TEXT, st.binary(max_size=50)))
@example(value=b'{"m":["m-1"],"d":[1,2],"n":[1,1],"f":[0,0]}')
def test_merchants_agent_reads_hostile_activity_safely(value):
    activity = _activity(value)
    if activity is not None:
        safe_to_apply(activity)


# =============================================================================================
# Flagged records: ReviewService.ingest, and the review page showing what it queued
# =============================================================================================
async def _publish(key: bytes, value: bytes) -> None:
    return None


def review_service() -> ReviewService:
    return ReviewService(_publish, CollectorRegistry(), clock=lambda: 1_600_000_000.0)


def as_the_agent_reads(value: bytes | None) -> object:
    """``review_queue`` decodes each value and passes None when it cannot."""
    try:
        return loads(value)  # type: ignore[arg-type]
    except Exception:
        return None


BAD_SCORES = {f"score={t}" for t in ("null", "empty_string", "string", "long_string", "empty_list", "list",
                                     "empty_object", "object")}
BAD_REASONS = {
    *(f"reasons={t}" for t in ("true", "minus_one", "one_and_a_half", "string", "string_nan", "string_number",
                               "long_string", "list", "object", "max_double", "subnormal", "smallest",
                               "two_to_64", "u64_max", "i64_min", "i64_max")),
    "reasons_string", "reasons_numbers", "reasons_nested_lists", "reasons_object",
}


@pytest.mark.parametrize("group", cases(hc.FLAGS, dict.fromkeys(BAD_SCORES, SCORE_NOT_A_NUMBER)))
def test_review_ingests_each_corpus_flag_without_raising(group: tuple[Case, ...]):
    for case in group:
        review_service().ingest(as_the_agent_reads(case.value), 0)  # type: ignore[arg-type]


def shows_everything(svc: ReviewService) -> None:
    total, items = svc.queue.page(0, 10_000)
    assert total == len(items) == len(svc.queue)
    for item in items:  # what the queue and detail views send the browser
        dumps(item.summary(svc.clock()))
        detail = svc.detail(item.item_id)
        assert detail is not None
        dumps(detail)
    dumps(svc.queue.stats())


@pytest.mark.parametrize("group", cases(hc.FLAGS, {**dict.fromkeys(BAD_SCORES, SCORE_NOT_A_NUMBER),
                                                  **dict.fromkeys(BAD_REASONS, REASONS_NOT_A_LIST)}))
def test_review_page_shows_each_corpus_flag_it_queued(group: tuple[Case, ...]):
    for case in group:
        svc = review_service()
        svc.ingest(as_the_agent_reads(case.value), 0)  # type: ignore[arg-type]
        shows_everything(svc)


@REVIEW_RECURSION
def test_review_ingests_nesting_at_every_depth():
    svc = review_service()
    for case in hc.FLAG_NESTING:
        record = as_the_agent_reads(case.value)
        if isinstance(record, dict):
            record["transaction_id"] = case.name  # each its own item
        svc.ingest(record, 0)  # type: ignore[arg-type]


FLAG_VALUE = mutated(
    hc.FLAGGED,
    {name: VALUE for name in hc.REVIEW_FIELDS},
    {"transaction_id": SMALL_IDS, "account_id": st.sampled_from(["c-1", "c-2"])},
)
#: Flags whose score the queue can rank (hostile everywhere else): what the page then shows.
RANKABLE_FLAG_VALUE = mutated(
    hc.FLAGGED,
    {name: VALUE for name in hc.REVIEW_FIELDS if name != "score"} | {"score": NUMBER.filter(
        lambda n: n not in (b"1e400", b"-1e400") and len(n) < 300)},
    {"transaction_id": SMALL_IDS, "account_id": st.sampled_from(["c-1", "c-2"])},
)


@SCORE_NOT_A_NUMBER
@FUZZ
@given(values=st.lists(st.one_of(FLAG_VALUE, FLAG_VALUE, JSON_TEXT), max_size=8))
@example(values=[b'{"transaction_id":"t-1","score":"x"}'])
def test_review_ingests_hostile_flags_without_raising(values):
    svc = review_service()
    for value in values:
        svc.ingest(as_the_agent_reads(value), 0)  # type: ignore[arg-type]


@REASONS_NOT_A_LIST
@FUZZ
@given(values=st.lists(RANKABLE_FLAG_VALUE, max_size=6))
@example(values=[b'{"transaction_id":"t-1","score":0.9,"reasons":"x"}'])
def test_review_page_shows_hostile_flags_it_queued(values):
    svc = review_service()
    for value in values:
        svc.ingest(as_the_agent_reads(value), 0)  # type: ignore[arg-type]
    shows_everything(svc)


# =============================================================================================
# Model records: ModelSync.sync with signed, malformed champions and seats
# =============================================================================================
KEY = b"fuzz-key"
GOOD_CHAMPION = version_record("lr-000003", 3, LinearChampion().to_state(), "champion", "learned", "test")
NEWER_CHAMPION = version_record("lr-000004", 4, LinearChampion().to_state(), "champion", "learned", "test")


def seat_for(target: dict, current: dict | None) -> dict:
    """The seat record that gives the champion seat to ``target``."""
    writes = seat_change({SEAT: current}.get, target, "promote", "fuzz", "test")
    return dict(next(v for k, v in writes if k == SEAT))


GOOD_SEAT = seat_for(GOOD_CHAMPION, None)
NEWER_SEAT = seat_for(NEWER_CHAMPION, GOOD_SEAT)


def with_defect(record: dict, *edits: tuple[tuple[str, ...], object]) -> dict:
    """A copy of ``record`` with each (path, value) edit made (``DROP`` removes the field)."""
    out = copy.deepcopy(record)
    for path, value in edits:
        node = out
        for key in path[:-1]:
            node = node[key]
        if value is hc.DROP:
            node.pop(path[-1], None)
        else:
            node[path[-1]] = value
    return out


class Worker:
    """A scorer's model handle following a models table, as the worker holds it."""

    def __init__(self) -> None:
        self.table: dict[bytes, bytes] = {}
        self.handle = ModelHandle(LinearChampion())
        self.sync = ModelSync(self.table, self.handle, PipelineMetrics(CollectorRegistry()), KEY)

    def snapshot(self) -> tuple:
        h = self.handle
        return (h.model, h.name, h.sequence, h.epoch, h.seat, h.version)

    def check_after_sync(self, before: tuple) -> bool:
        swapped = self.sync.sync()
        h = self.handle
        if not swapped:
            assert self.snapshot() == before, "a refused record changed the model in use"
        assert isinstance(h.sequence, int) and not isinstance(h.sequence, bool)
        assert isinstance(h.name, str) and isinstance(h.seat, str) and isinstance(h.epoch, int)
        assert scores_finitely(h.model), "the model in use cannot score"
        return swapped


def model_cases(defects, base: dict, key: bytes, crashes: dict[str, pytest.MarkDecorator]) -> list:
    assert set(crashes) <= {name for name, _ in defects}
    return [pytest.param(key, with_defect(base, *edits), id=f"{key.decode()}-{name}",
                         marks=[crashes[name]] if name in crashes else [])
            for name, edits in defects]


@pytest.mark.parametrize(("key", "payload"), model_cases(hc.MODEL_DEFECTS, GOOD_CHAMPION, CHAMPION, {
    "weights_that_overflow": NAN_SCORING_MODEL, "variance_that_overflows": NAN_SCORING_MODEL,
    "sequence_huge_float": WEDGED_BY_NUMBERS, "sequence_bool": WEDGED_BY_NUMBERS,
    "lineage_list": LINEAGE_NOT_A_STRING, "lineage_object": LINEAGE_NOT_A_STRING,
}) + model_cases(hc.SEAT_DEFECTS, GOOD_SEAT, SEAT, {"epoch_huge_float": WEDGED_BY_NUMBERS}))
def test_model_sync_refuses_each_malformed_record_and_keeps_its_version(key: bytes, payload: dict):
    w = Worker()
    w.table[key] = seal(payload, KEY)
    before = w.snapshot()
    assert w.check_after_sync(before) is False, f"adopted a malformed record as {w.handle.version}"
    w.table[key] = seal(NEWER_CHAMPION if key == CHAMPION else NEWER_SEAT, KEY)
    assert w.check_after_sync(before) is True, "a good record after a refused one must be followed"
    assert w.handle.version == "lr-000004"


def _paths(record: dict, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for k, v in record.items():
        out.append((*prefix, k))
        if isinstance(v, dict) and k not in ("gate",):
            out.extend(_paths(v, (*prefix, k)))
    return out


PY_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(), st.text(max_size=8),
              st.sampled_from([1e308, -1e308, 5e-324, 0.0, -0.0, 1e300, 2**63 - 1])),
    lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(st.text(max_size=6), c, max_size=4)),
    max_leaves=8,
)
#: Per-input numbers that pass a type check and still break arithmetic.
EXTREME_INPUTS = st.dictionaries(st.sampled_from(INPUT_NAMES),
                                 st.sampled_from([1e308, -1e308, 5e-324, 1e-300, 1e300, 0.0]), max_size=6)
MODEL_VALUE = st.one_of(PY_JSON, EXTREME_INPUTS, st.just(list(range(20_000))))


@st.composite
def malformed(draw: st.DrawFn, base: dict) -> dict:
    out = base
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(out) or [("x",)]))
        out = with_defect(out, (path, hc.DROP if draw(st.booleans()) and draw(st.booleans())
                                   else draw(MODEL_VALUE)))
    return out


@LINEAGE_NOT_A_STRING
@FUZZ
@given(seat=st.one_of(st.none(), malformed(GOOD_SEAT)),
       champion=st.one_of(st.none(), malformed(GOOD_CHAMPION)))
@example(seat=None, champion=with_defect(GOOD_CHAMPION, (("lineage",), ["lr"])))
def test_model_sync_never_raises_on_hostile_records_and_keeps_a_scoring_model(seat, champion):
    w = Worker()
    for key, payload in ((SEAT, seat), (CHAMPION, champion)):
        if payload is not None:
            w.table[key] = seal(payload, KEY)
    w.check_after_sync(w.snapshot())
