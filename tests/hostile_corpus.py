"""Known hostile inputs for ``tests/test_fuzz.py``: each a short name and the bytes a topic could carry.

Every topic flagstream reads may carry any byte string (ARCHITECTURE.md, "Hostile input
and faults"). The cases here are the ones worth naming: nesting at every depth up to
past the parser's own limit, numbers JSON allows but floats do not hold, literals JSON
does not allow, broken UTF-8, duplicate keys, every field with every wrong type,
timestamps at and beyond the accepted range, ids with control and right-to-left
characters and at the length limit, records at the size limit, and card numbers where
they must never come back out.

Records are written as raw JSON text (:func:`record`), so a case can hold what no JSON
encoder writes: ``NaN``, duplicate keys, a number with 400 digits.

>>> record([("a", b"NaN"), ("a", b"1")])
b'{"a":NaN,"a":1}'
>>> luhn_ok("4111111111111111"), luhn_ok("4111111111111112")
(True, False)
>>> card_numbers_in("ref 4111-1111-1111-1111, 41111111111111110000 and 12345")
['4111111111111111']
>>> card_numbers_in("4111 1111 1111 1111 0000")
['4111111111111111']
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

import orjson

from flagstream.features.layout import N_FEATURES

#: Outcomes a transaction case expects from the scorer (None: either is acceptable).
DECIDED, REJECTED = "decided", "rejected"
MAX_RECORD_BYTES = 16_384
MAX_NESTING = 8
#: Nesting is tried at every depth up to here (orjson itself stops at 1024).
DEEPEST = 1_100


class Case(NamedTuple):
    """One hostile value: its name, the bytes (None: a record without a value), what to expect."""

    name: str
    value: bytes | None
    expect: str | None = None


# --- card numbers -------------------------------------------------------------------
def luhn_ok(digits: str) -> bool:
    """Whether a digit string passes the Luhn check (what every real card number does)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def luhn_complete(prefix: str) -> str:
    """``prefix`` plus the check digit that makes it Luhn-valid."""
    return next(prefix + str(d) for d in range(10) if luhn_ok(prefix + str(d)))


_DIGIT_RUN = re.compile(r"[0-9](?:[ ./-]?[0-9])*")


def card_numbers_in(text: str) -> list[str]:
    """Luhn-valid card numbers in ``text``: 13–19 ASCII digits with single spaces, dashes,
    dots or slashes allowed between them, not touching another digit (``flagstream.cards``
    masks more: see ``tests/test_cards.py``).

    Inside a longer run such as ``4111 1111 1111 1111 0000``, every span of whole groups
    counts (``4111 1111 1111 1111`` is a card number a reader sees); a 20-digit run without
    separators contains none.
    """
    found = []
    for match in _DIGIT_RUN.finditer(text):
        groups = re.split(r"[ ./-]", match.group(0))
        for first in range(len(groups)):
            digits = ""
            for group in groups[first:]:
                digits += group
                if len(digits) > 19:
                    break
                if len(digits) >= 13 and luhn_ok(digits):
                    found.append(digits)
    return found


PAN = "4111111111111111"
#: Luhn-valid numbers of every length a card can have, in the formats people write them.
PANS = (
    PAN,
    "5500000000000004",
    "340000000000009",
    "4222222222222",
    luhn_complete("601100000000000000"),
    "4111 1111 1111 1111",
    "5500-0000-0000-0004",
    "3400 000000 00009",
)
assert all(luhn_ok(re.sub(r"\D", "", p)) for p in PANS)


# --- writing records as raw JSON text -----------------------------------------------
class Raw(bytes):
    """JSON text to put in a record as it is (``NaN``, a 400-digit number, broken UTF-8)."""


DROP = object()  #: a field override that removes the field


def encode(value: object) -> bytes:
    """JSON text of a value; :class:`Raw` as is, integers of any size as their digits."""
    if isinstance(value, Raw):
        return bytes(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value).encode()
    return orjson.dumps(value)


def record(pairs: Iterable[tuple[str, bytes]]) -> bytes:
    """A JSON object from (key, raw value) pairs, in order, duplicates kept."""
    return b"{" + b",".join(orjson.dumps(k) + b":" + v for k, v in pairs) + b"}"


def with_fields(base: dict, **overrides: object) -> bytes:
    """``base`` as raw JSON with fields replaced (``DROP`` removes one) or appended."""
    pairs = [(k, overrides.get(k, v)) for k, v in base.items()]
    pairs += [(k, v) for k, v in overrides.items() if k not in base]
    return record((k, encode(v)) for k, v in pairs if v is not DROP)


def nested(kind: str, depth: int, leaf: bytes = b"1") -> bytes:
    """``depth`` containers, one inside the other (``{"a":{"a":1}}`` or ``[[1]]`` for 2)."""
    opening, closing = (b'{"a":', b"}") if kind == "object" else (b"[", b"]")
    return opening * depth + leaf + closing * depth


def padded_to(size: int, base: dict, pad_char: str = "x") -> bytes:
    """``base`` with a ``pad`` field (of ``pad_char``, topped up with ``x``) that makes the
    record exactly ``size`` bytes."""
    empty = with_fields(base, pad="")
    per_char = len(pad_char.encode())
    missing = size - len(empty)
    assert missing >= 0, (size, len(empty))
    out = with_fields(base, pad=pad_char * (missing // per_char) + "x" * (missing % per_char))
    assert len(out) == size
    return out


# --- the valid records each topic carries -------------------------------------------
TRANSACTION = {
    "transaction_id": "t-000001", "account_id": "c-42", "merchant_id": "m-7", "amount": 57.16,
    "currency": "USD", "timestamp": "2018-04-01T00:07:56Z",
}
REQUIRED = ("transaction_id", "account_id", "merchant_id", "amount", "timestamp")
OPTIONAL = ("currency", "channel", "country", "is_fraud", "fraud_scenario")
IDS = ("transaction_id", "account_id", "merchant_id")

FEEDBACK = {
    "transaction_id": "t-000001", "label": "fraud", "source": "review", "reviewer": "ana",
    "decided_at": "2018-04-02T10:00:00Z",
}
SCORED_AT_MS = 1_522_541_276_100
DECISION = {
    "transaction_id": "t-000001", "account_id": "c-42", "merchant_id": "m-7", "amount": 57.16,
    "event_time": "2018-04-01T00:07:56Z", "event_time_ms": 1_522_541_276_000, "score": 0.42,
    "threshold": 0.5, "decision": "approve", "model_version": "lr-000001",
    "scored_at_ms": SCORED_AT_MS, "features": [1.0] * N_FEATURES,
}
FLAGGED = {
    **DECISION, "decision": "review", "score": 0.93,
    "reasons": [{"feature": "amount", "text": "amount 6.2× this card's 30-day average"}],
    "features": {"amount": 57.16, "is_night": 1.0},
}


def tx(**overrides: object) -> bytes:
    return with_fields(TRANSACTION, **overrides)


# --- value tokens: every wrong type, the numbers floats do not hold, non-JSON literals ---
#: name → raw JSON text (or not-quite-JSON text). ``invalid`` ones no JSON parser accepts.
TOKENS: dict[str, bytes] = {
    "null": b"null", "true": b"true", "false": b"false", "zero": b"0", "minus_one": b"-1",
    "one_and_a_half": b"1.5", "empty_string": b'""', "string": b'"x"', "string_nan": b'"NaN"',
    "string_number": b'"57.16"', "long_string": b'"' + b"x" * 1_000 + b'"', "empty_list": b"[]",
    "list": b"[1]", "empty_object": b"{}", "object": b'{"a":1}',
    "max_double": b"1e308", "subnormal": b"1e-320", "smallest": b"5e-324", "minus_zero": b"-0.0",
    "two_to_64": str(2**64).encode(), "u64_max": str(2**64 - 1).encode(),
    "i64_min": str(-(2**63)).encode(), "i64_max": str(2**63 - 1).encode(),
    # not JSON at all: the decoder must refuse them, nothing later may see them
    "ten_to_400": str(10**400).encode(), "exp_400": b"1e400", "NaN": b"NaN",
    "Infinity": b"Infinity", "minus_Infinity": b"-Infinity", "nan": b"nan", "inf": b"inf",
    "hex": b"0x1F", "leading_zero": b"01", "plus": b"+1", "bare_dot": b".5", "undefined": b"undefined",
    "single_quoted": b"'x'", "lone_surrogate": b'"\\ud800"', "bad_utf8_string": b'"\xff\xfe"',
}
INVALID_TOKENS = {
    "ten_to_400", "exp_400", "NaN", "Infinity", "minus_Infinity", "nan", "inf", "hex",
    "leading_zero", "plus", "bare_dot", "undefined", "single_quoted", "lone_surrogate",
    "bad_utf8_string",
}
VALID_ID_TOKENS = {"string", "string_nan", "string_number"}
VALID_AMOUNT_TOKENS = {"one_and_a_half", "subnormal", "smallest"}


def _expect_for(field: str, token: str) -> str | None:
    if token in INVALID_TOKENS:
        return REJECTED
    if field in IDS:
        return DECIDED if token in VALID_ID_TOKENS else REJECTED
    if field == "amount":
        return DECIDED if token in VALID_AMOUNT_TOKENS else REJECTED
    if field == "timestamp":
        return REJECTED  # no token is an ISO-8601 time with offset or epoch ms in range
    return DECIDED  # optional and unknown fields are kept, never a failure


def _wrong_types() -> list[Case]:
    return [Case(f"{field}={token}", tx(**{field: Raw(text)}), _expect_for(field, token))
            for field in (*REQUIRED, *OPTIONAL) for token, text in TOKENS.items()]


def _missing_fields() -> list[Case]:
    return [Case(f"missing_{f}", tx(**{f: DROP}), REJECTED) for f in REQUIRED]


# --- timestamps -----------------------------------------------------------------------
MIN_EPOCH_MS, MAX_EPOCH_MS = 946_684_800_000, 4_102_444_800_000
TIMESTAMPS: list[tuple[str, object, str | None]] = [
    ("far_future_iso", "9999-12-31T23:59:59+14:00", REJECTED),
    ("far_future_iso_west", "9999-12-31T23:59:59-14:00", REJECTED),
    ("year_one_iso", "0001-01-01T00:00:00Z", REJECTED),
    ("year_one_east", "0001-01-01T00:00:00+14:00", REJECTED),
    ("epoch_ms_1e20", Raw(b"100000000000000000000"), REJECTED),
    ("epoch_ms_minus_one", -1, REJECTED),
    ("epoch_ms_zero", 0, REJECTED),
    ("epoch_ms_true", True, REJECTED),
    ("epoch_ms_false", False, REJECTED),
    ("epoch_ms_float", 1_522_541_276_000.5, REJECTED),
    ("epoch_ms_float_whole", 1_522_541_276_000.0, REJECTED),
    ("epoch_ms_i64_max", 2**63 - 1, REJECTED),
    ("epoch_ms_i64_min", -(2**63), REJECTED),
    ("epoch_ms_u64_max", 2**64 - 1, REJECTED),
    ("epoch_ms_first_accepted", MIN_EPOCH_MS, DECIDED),
    ("epoch_ms_before_range", MIN_EPOCH_MS - 1, REJECTED),
    # in the schema's range but after the worker's clock: refused as timestamp_in_future
    ("epoch_ms_last_in_range", MAX_EPOCH_MS - 1, REJECTED),
    ("epoch_ms_tomorrow", Raw(b"%d" % (time.time() * 1000 + 86_400_000)), REJECTED),
    ("epoch_ms_a_minute_ahead", Raw(b"%d" % (time.time() * 1000 + 60_000)), DECIDED),
    ("epoch_ms_after_range", MAX_EPOCH_MS, REJECTED),
    ("epoch_ms_as_string", "1522541276000", REJECTED),
    ("iso_first_accepted", "2000-01-01T00:00:00Z", DECIDED),
    ("iso_before_range", "1999-12-31T23:59:59.999Z", REJECTED),
    ("iso_last_in_range", "2099-12-31T23:59:59.999+00:00", REJECTED),
    ("iso_after_range", "2100-01-01T00:00:00Z", REJECTED),
    ("iso_no_offset", "2018-04-01T10:00:00", REJECTED),
    ("iso_date_only", "2018-04-01", REJECTED),
    ("iso_offset_24h", "2018-04-01T10:00:00+24:00", REJECTED),
    ("iso_offset_seconds", "2018-04-01T10:00:00+05:30:17", None),
    ("iso_nanoseconds", "2018-04-01T10:00:00.123456789Z", None),
    ("iso_week_date", "2018-W14-1T10:00:00Z", None),
    ("iso_nul_inside", "2018-04-01T10:00:00\x00Z", None),
    ("iso_arabic_digits", "٢٠١٨-٠٤-٠١T10:00:00Z", None),
    ("iso_rtl_override", "\u202e2018-04-01T10:00:00Z", REJECTED),
    ("iso_leading_space", " 2018-04-01T10:00:00Z", None),
    ("iso_huge_string", "2018-04-01T10:00:00Z" + " " * 15_000, REJECTED),
    ("empty_string", "", REJECTED),
    ("null", None, REJECTED),
]


def _timestamps() -> list[Case]:
    return [Case(f"timestamp_{name}", tx(timestamp=value), expect) for name, value, expect in TIMESTAMPS]


# --- ids -------------------------------------------------------------------------------
HOSTILE_IDS: list[tuple[str, str, str | None]] = [
    ("nul", "t-\x00", None),
    ("all_nul", "\x00" * 128, None),
    ("escape_sequence", "\x1b[2J\x1b[31mred", None),
    ("newlines", "t-1\r\nX-Injected: yes", None),
    ("rtl_override", "t-\u202e1000", None),
    ("rtl_mark", "\u200ft-1", None),
    ("zero_width", "t\u200b-1", None),
    ("bom_inside", "\ufefft-1", None),
    ("emoji_128", "💳" * 128, DECIDED),
    ("accented_128", "é" * 128, DECIDED),
    ("accented_129", "é" * 129, REJECTED),
    ("ascii_128", "x" * 128, DECIDED),
    ("ascii_129", "x" * 129, REJECTED),
    ("space", " ", None),
    ("empty", "", REJECTED),
    ("digits_like_epoch", "1522541276000", None),
]


def _ids() -> list[Case]:
    return [Case(f"{field}_{name}", tx(**{field: value}), expect)
            for field in IDS for name, value, expect in HOSTILE_IDS]


# --- bytes that are not (quite) a JSON object -------------------------------------------
VALID = tx()
NOT_OBJECTS: list[Case] = [
    Case("no_value", None, REJECTED),
    Case("empty_bytes", b"", REJECTED),
    Case("space", b" ", REJECTED),
    Case("json_null", b"null", REJECTED),
    Case("json_list", b"[]", REJECTED),
    Case("json_string", b'"t-1"', REJECTED),
    Case("json_number", b"1", REJECTED),
    Case("empty_object", b"{}", REJECTED),
    Case("nul_byte", b"\x00", REJECTED),
    Case("bom_then_record", b"\xef\xbb\xbf" + VALID, REJECTED),
    Case("utf16_record", b"\xff\xfe" + VALID.decode().encode("utf-16-le"), REJECTED),
    Case("utf32_record", VALID.decode().encode("utf-32"), REJECTED),
    Case("gzip_magic", b"\x1f\x8b\x08\x00" + VALID, REJECTED),
    Case("invalid_utf8_byte", VALID.replace(b"t-000001", b"t-\xff00001"), REJECTED),
    Case("overlong_utf8", VALID.replace(b"t-000001", b"t-\xc0\xaf0001"), REJECTED),
    Case("encoded_surrogate", VALID.replace(b"t-000001", b"t-\xed\xa0\x80001"), REJECTED),
    Case("truncated_utf8", VALID.replace(b"t-000001", b"t-\xe2\x82"), REJECTED),
    Case("escaped_lone_surrogate", VALID.replace(b"t-000001", b"t-\\udc00"), REJECTED),
    Case("truncated_record", VALID[:-1], REJECTED),
    Case("truncated_in_string", VALID[:20], REJECTED),
    Case("trailing_garbage", VALID + b" x", REJECTED),
    Case("two_records", VALID + VALID, REJECTED),
    Case("trailing_comma", VALID[:-1] + b",}", REJECTED),
    Case("comment", b"/* hi */" + VALID, REJECTED),
    Case("single_quotes", VALID.replace(b'"', b"'"), REJECTED),
    Case("trailing_nul", VALID + b"\x00", REJECTED),
    Case("trailing_newline", VALID + b"\n", DECIDED),
    Case("surrounding_whitespace", b" \t\r\n" + VALID + b" \t\r\n", DECIDED),
    Case("only_whitespace_limit", b" " * MAX_RECORD_BYTES, REJECTED),
    Case("random_binary", bytes(range(256)) * 4, REJECTED),
]


def _duplicates() -> list[Case]:
    dup = [(k, encode(v)) for k, v in TRANSACTION.items()]
    return [
        Case("duplicate_amount_last_invalid", record([*dup, ("amount", b'"x"')]), None),
        Case("duplicate_amount_first_invalid", record([("amount", b'"x"'), *dup]), None),
        Case("duplicate_transaction_id", record([*dup, ("transaction_id", b'"t-000002"')]), None),
        Case("duplicate_timestamp_far_future",
             record([*dup, ("timestamp", b'"9999-12-31T23:59:59+14:00"')]), None),
        Case("duplicate_id_wrong_type", record([*dup, ("account_id", b"[]")]), None),
        Case("duplicate_every_field_twice", record(dup + dup), None),
        Case("duplicate_key_10000_times", record(dup + [("x", b"1")] * 2_000), None),
    ]


# --- sizes -----------------------------------------------------------------------------
def _sizes() -> list[Case]:
    deep = with_fields(TRANSACTION, extra=Raw(nested("array", MAX_NESTING)))
    return [
        Case("exactly_the_size_limit", padded_to(MAX_RECORD_BYTES, TRANSACTION), DECIDED),
        Case("one_byte_over_the_limit", padded_to(MAX_RECORD_BYTES + 1, TRANSACTION), REJECTED),
        Case("limit_in_multibyte_chars", padded_to(MAX_RECORD_BYTES, TRANSACTION, "€"), DECIDED),
        Case("two_megabytes", padded_to(2 * 1024 * 1024, TRANSACTION), REJECTED),
        Case("limit_and_too_deep",
             padded_to(MAX_RECORD_BYTES, {**TRANSACTION, "extra": [[[[[[[[1]]]]]]]]}),
             REJECTED),
        Case("too_deep_small", deep, REJECTED),
        Case("big_flat_list", tx(extra=[0] * 7_000), DECIDED),
        Case("many_keys", tx(extra={f"k{i}": i for i in range(1_000)}), DECIDED),
    ]


# --- unknown extra fields of any shape ------------------------------------------------
def _extras() -> list[Case]:
    shapes: dict[str, object] = {
        "empty_key": {"": 1}, "nul_key": {"\x00": 1}, "long_key": {"k" * 5_000: 1},
        "proto": {"__proto__": {"admin": True}}, "lookalike_key": {"Amount": -1, "amount ": "x"},
        "ground_truth_garbage": {"is_fraud": "yes", "fraud_scenario": [[{}]]},
        "extreme_numbers": {"x": Raw(b"[1e308,-1e308,5e-324,-0.0," + str(2**64).encode() + b"]")},
        "nested_at_limit": {"x": Raw(nested("object", MAX_NESTING - 1))},
        "mixed_nesting": {"x": Raw(b'[{"a":[{"b":[{"c":1}]}]}]')},
        "control_chars": {"note": "".join(map(chr, range(32))) + "\u202e\u2066\u200f"},
    }
    return [Case(f"extra_{name}", tx(**fields), DECIDED) for name, fields in shapes.items()]


# --- optional coordinates: a bad one is unknown, the transaction is still decided -----------
def _coordinates() -> list[Case]:
    values: dict[str, object] = {
        "text": "12.5", "bool": True, "null": None, "huge": Raw(b"1e308"),
        "beyond_int64": Raw(str(2**70).encode()), "out_of_range": 1_000_001, "list": [1, 2],
        "object": {"x": 1}, "negative_zero": -0.0,
    }
    cases = [Case(f"coordinate_{name}_{field}", tx(**{field: value, "merchant_y": 1.0}), DECIDED)
             for name, value in values.items() for field in ("merchant_x", "customer_x")]
    cases.append(Case("coordinates_half_a_pair", tx(merchant_x=1.0, customer_y=2.0), DECIDED))
    return cases


# --- card numbers in fields -----------------------------------------------------------
def _card_numbers() -> list[Case]:
    cases = []
    for field in (*IDS, "currency", "channel", "country", "note"):
        for i, pan in enumerate(PANS):
            cases.append(Case(f"pan{i}_in_{field}", tx(**{field: pan}), None))
    cases += [
        Case("pan_as_integer_field", tx(pan=int(PAN)), DECIDED),
        Case("pan_as_amount", tx(amount=int(PAN)), REJECTED),
        Case("pan_inside_text", tx(note=f"card {PAN} declined"), DECIDED),
        Case("pan_in_key", tx(**{PAN: 1}), DECIDED),
    ]
    return cases


# --- nesting at every depth -------------------------------------------------------------
def nesting_cases(wrap: Callable[[bytes], bytes], fits: int) -> list[Case]:
    """Object and array nesting at every depth 1..DEEPEST, as the record itself (``top``) and
    inside an unknown field (``extra``: ``wrap`` puts it in a valid record whose own depth
    leaves ``fits`` levels within the limit)."""
    cases = []
    for kind in ("object", "array"):
        for depth in range(1, DEEPEST + 1):
            value = nested(kind, depth)
            cases.append(Case(f"top_{kind}_{depth}", value, REJECTED))
            cases.append(Case(f"extra_{kind}_{depth}", wrap(value), DECIDED if depth <= fits else REJECTED))
    return cases


TRANSACTION_NESTING = nesting_cases(lambda v: tx(extra=Raw(v)), MAX_NESTING - 1)
TRANSACTIONS: list[Case] = [
    Case("valid", VALID, DECIDED), *NOT_OBJECTS, *_missing_fields(), *_wrong_types(), *_timestamps(),
    *_ids(), *_duplicates(), *_sizes(), *_extras(), *_coordinates(), *_card_numbers(),
]
assert len({c.name for c in TRANSACTIONS}) == len(TRANSACTIONS)


# --- feedback (the ``feedback`` topic) ------------------------------------------------------
def fb(**overrides: object) -> bytes:
    return with_fields(FEEDBACK, **overrides)


FEEDBACKS: list[Case] = [
    Case("valid", fb()),
    *(Case(f"{field}={token}", fb(**{field: Raw(text)}))
      for field in ("transaction_id", "label", "source", "reviewer", "decided_at")
      for token, text in TOKENS.items()),
    *(Case(f"missing_{field}", fb(**{field: DROP})) for field in FEEDBACK),
    *(Case(f"transaction_id_{name}", fb(transaction_id=value)) for name, value, _ in HOSTILE_IDS),
    *(Case(f"pan{i}_as_transaction_id", fb(transaction_id=pan)) for i, pan in enumerate(PANS)),
    Case("label_uppercase", fb(label="FRAUD")),
    Case("label_list_of_fraud", fb(label=["fraud"])),
    Case("label_object", fb(label={"fraud": 1})),
    Case("source_list", fb(source=["review"])),
    Case("source_object", fb(source={})),
    Case("duplicate_label", record([*((k, encode(v)) for k, v in FEEDBACK.items()), ("label", b"[]")])),
    Case("exactly_the_size_limit", padded_to(MAX_RECORD_BYTES, FEEDBACK)),
    Case("one_byte_over_the_limit", padded_to(MAX_RECORD_BYTES + 1, FEEDBACK)),
    *(Case(c.name, c.value) for c in NOT_OBJECTS),
]
FEEDBACK_NESTING = nesting_cases(lambda v: fb(extra=Raw(v)), MAX_NESTING - 1)


# --- recorded decisions (the ``scores`` topic, joined to feedback by the learner) -----------
def decision(**overrides: object) -> bytes:
    return with_fields(DECISION, **overrides)


DECISIONS: list[Case] = [
    Case("valid", decision()),
    *(Case(f"{field}={token}", decision(**{field: Raw(text)}))
      for field in ("features", "score", "merchant_id", "event_time_ms", "scored_at_ms")
      for token, text in TOKENS.items()),
    *(Case(f"missing_{field}", decision(**{field: DROP}))
      for field in ("features", "score", "merchant_id", "event_time_ms", "scored_at_ms")),
    *(Case(f"features_{n}_long", decision(features=[1.0] * n)) for n in (0, 1, 16, 18, 10_000)),
    Case("features_strings", decision(features=["1.0"] * N_FEATURES)),
    Case("features_nulls", decision(features=[None] * N_FEATURES)),
    Case("features_bools", decision(features=[True] * N_FEATURES)),
    Case("features_nested", decision(features=[[1.0]] * N_FEATURES)),
    Case("features_objects", decision(features=[{}] * N_FEATURES)),
    Case("features_object", decision(features={str(i): 1.0 for i in range(N_FEATURES)})),
    Case("features_string", decision(features="1" * N_FEATURES)),
    Case("features_NaN_literal", decision(features=Raw(b"[" + b",".join([b"NaN"] * N_FEATURES) + b"]"))),
    Case("features_max_double", decision(features=[1e308] * N_FEATURES)),
    Case("features_min_double", decision(features=[-1e308] * N_FEATURES)),
    Case("features_subnormal", decision(features=[5e-324] * N_FEATURES)),
    Case("features_u64", decision(features=[2**64 - 1] * N_FEATURES)),
    Case("features_mixed_extremes", decision(features=[1e308, -1e308, 5e-324, -0.0, 2**63 - 1] * 3 + [0, 0])),
    Case("score_above_one", decision(score=1.5)),
    Case("score_negative", decision(score=-0.1)),
    Case("event_time_1e15", decision(event_time_ms=10**15)),
    Case("event_time_float", decision(event_time_ms=1.5e12)),
    Case("event_time_negative", decision(event_time_ms=-86_400_001)),
    Case("scored_at_far_future", decision(scored_at_ms=10**15 - 1)),
    Case("scored_at_zero", decision(scored_at_ms=0)),
    Case("merchant_id_129", decision(merchant_id="m" * 129)),
    Case("merchant_id_empty", decision(merchant_id="")),
    Case("merchant_id_int", decision(merchant_id=7)),
    Case("merchant_id_rtl", decision(merchant_id="\u202em-7")),
    Case("merchant_id_pan", decision(merchant_id=PAN)),
    Case("shadow_garbage", decision(shadow={"lr-fast": "x"})),
    *(Case(c.name, c.value) for c in NOT_OBJECTS),
]
DECISION_NESTING = nesting_cases(lambda v: decision(extra=Raw(v)), MAX_NESTING - 1)


# --- merchant activity (the ``merchant.activity`` topic) ------------------------------------
ACTIVITY = {"m": ["m-1", "m-2"], "d": [17_622, 17_623], "n": [3.0, 1.0], "f": [0.0, 1.0]}


def activity(**overrides: object) -> bytes:
    return with_fields(ACTIVITY, **overrides)


ACTIVITIES: list[Case] = [
    Case("valid", activity()),
    *(Case(f"{field}={token}", activity(**{field: Raw(text)}))
      for field in "mdnf" for token, text in TOKENS.items()),
    *(Case(f"missing_{field}", activity(**{field: DROP})) for field in "mdnf"),
    Case("merchant_ids_not_strings", activity(m=[1, 2])),
    Case("merchant_ids_mixed", activity(m=["m-1", None])),
    Case("merchant_ids_nested", activity(m=[["m-1"], {"m": 2}])),
    Case("merchant_ids_string", activity(m="m1")),
    Case("merchant_ids_object", activity(m={"m-1": 1, "m-2": 2})),
    Case("more_days_than_merchants", activity(d=[17_622, 17_623, 17_624])),
    Case("fewer_days_than_merchants", activity(d=[17_622])),
    Case("no_days", activity(d=[], n=[], f=[])),
    Case("fewer_counts", activity(n=[1.0])),
    Case("fewer_frauds", activity(f=[])),
    Case("days_2d", activity(d=[[17_622], [17_623]])),
    Case("days_ragged", activity(d=[[17_622], 17_623])),
    Case("days_scalar", activity(d=17_622)),
    Case("days_beyond_int64", activity(d=[2**63, 2**64 - 1])),
    Case("days_huge_float", activity(d=[1e300, 1e300])),
    Case("days_float", activity(d=[17_622.5, 17_623.9])),
    Case("days_negative", activity(d=[-(2**63), -1])),
    Case("days_strings", activity(d=["17622", "17623"])),
    Case("days_bools", activity(d=[True, False])),
    Case("counts_huge", activity(n=[1e308, 1e308])),
    Case("counts_negative", activity(n=[-1e308, -1.0])),
    Case("counts_NaN_literal", activity(n=Raw(b"[NaN,1]"))),
    Case("frauds_above_counts", activity(f=[1e9, 1e9])),
    Case("huge_lists", activity(m=[f"m-{i}" for i in range(2_000)], d=[17_622] * 2_000,
                                n=[1.0] * 2_000, f=[0.0] * 2_000)),
    *(Case(c.name, c.value) for c in NOT_OBJECTS),
]


# --- flagged records (the ``review`` topic, read by the review page) -------------------------
def flagged(**overrides: object) -> bytes:
    return with_fields(FLAGGED, **overrides)


REVIEW_FIELDS = ("transaction_id", "account_id", "merchant_id", "amount", "score", "threshold",
                 "decision", "scored_at_ms", "event_time_ms", "event_time", "reasons", "features",
                 "currency", "model_version")
FLAGS: list[Case] = [
    Case("valid", flagged()),
    *(Case(f"{field}={token}", flagged(**{field: Raw(text)}))
      for field in REVIEW_FIELDS for token, text in TOKENS.items()),
    *(Case(f"missing_{field}", flagged(**{field: DROP})) for field in REVIEW_FIELDS),
    Case("reasons_string", flagged(reasons="abc")),
    Case("reasons_numbers", flagged(reasons=[5])),
    Case("reasons_text_number", flagged(reasons=[{"text": 5}])),
    Case("reasons_nested_lists", flagged(reasons=[[{"text": "x"}]])),
    Case("reasons_object", flagged(reasons={"text": "x"})),
    Case("features_list", flagged(features=[1.0] * N_FEATURES)),
    Case("score_huge", flagged(score=1e308)),
    Case("score_minus_huge", flagged(score=-1e308)),
    Case("scored_at_huge", flagged(scored_at_ms=1e308)),
    Case("scored_at_minus_huge", flagged(scored_at_ms=-1e308)),
    Case("account_id_object", flagged(account_id={"a": [1, 2]})),
    Case("account_id_129", flagged(account_id="c" * 129)),
    *(Case(f"pan{i}_in_{field}", flagged(**{field: pan}))
      for i, pan in enumerate(PANS[:3]) for field in ("transaction_id", "account_id", "note")),
    Case("two_megabytes", padded_to(2 * 1024 * 1024, FLAGGED)),
    *(Case(c.name, c.value) for c in NOT_OBJECTS),
]
FLAG_NESTING = nesting_cases(lambda v: flagged(extra=Raw(v)), MAX_NESTING - 1)


# --- raw values for dead letters ---------------------------------------------------------
def _boundary_run(digits: str, cut: int) -> bytes:
    """Filler, then ``digits`` placed so the dead letter's cut at ``cut`` bytes falls inside them."""
    return b"x" * (cut - 16) + digits.encode()


MAX_ORIGINAL = 16_384
DEAD_LETTER_RAWS: list[Case] = [
    Case("none", None), Case("empty", b""),
    Case("nul_bytes_at_cap", b"\x00" * MAX_ORIGINAL),
    Case("invalid_utf8_at_cap", b"\xff" * MAX_ORIGINAL),
    Case("quotes_at_cap", b'"' * MAX_ORIGINAL),
    Case("backslashes_at_cap", b"\\" * MAX_ORIGINAL),
    Case("control_chars_at_cap", bytes(range(32)) * (MAX_ORIGINAL // 32)),
    Case("nul_bytes_5mb", b"\x00" * 5_000_000),
    Case("invalid_utf8_5mb", b"\xff" * 5_000_000),
    Case("digits_5mb", b"4" * 5_000_000),
    Case("pans_5mb", (PAN.encode() + b" ") * (5_000_000 // 17)),
    Case("pan_across_the_cap", b"x" * (MAX_ORIGINAL - 8) + PAN.encode()),
    Case("twenty_digits_cut_to_a_pan", _boundary_run(PAN + "0000", MAX_ORIGINAL)),
    Case("spaced_run_cut_to_a_pan", b"x" * (MAX_ORIGINAL - 19) + b"4111 1111 1111 1111 0000"),
    *(Case(f"pan{i}", f'{{"card": "{pan}"}}'.encode()) for i, pan in enumerate(PANS)),
    Case("pan_as_number", f'{{"card": {PAN}}}'.encode()),
    Case("pan_in_invalid_utf8", b"\xff" + PAN.encode() + b"\xfe"),
    Case("pan_next_to_multibyte", "€".encode() + PAN.encode() + "€".encode()),
    Case("valid_transaction", VALID),
]
DEAD_LETTER_DETAILS: list[tuple[str, str]] = [
    ("plain", "not JSON"),
    ("long", "x" * 100_000),
    ("pan", f"transaction_id {PAN!r} already seen"),
    ("pan_across_the_cap", "x" * 490 + PAN),
    ("twenty_digits_cut_to_a_pan", "x" * 484 + PAN + "0000"),
    ("control_chars", "".join(map(chr, range(32))) * 100),
    ("rtl", "\u202e" * 1_000),
    ("escapes_at_cap", '"\\' * 5_000),
]


# --- malformed model records (the ``models`` topic), as payloads a test seals ----------------
Edit = tuple[tuple[str, ...], object]  #: (path into a record, new value or ``DROP``)


def _one(name: str, path: tuple[str, ...], value: object) -> tuple[str, tuple[Edit, ...]]:
    return name, ((path, value),)


#: Champion records signed with the right key and malformed: (name, edits of a good record).
MODEL_DEFECTS: list[tuple[str, tuple[Edit, ...]]] = [
    _one("no_state", ("state",), DROP),
    _one("state_list", ("state",), [1, 2]),
    _one("state_string", ("state",), "x"),
    _one("state_kind_unknown", ("state", "kind"), "pickle"),
    _one("intercept_string", ("state", "intercept"), "x"),
    _one("intercept_null", ("state", "intercept"), None),
    _one("intercept_nan", ("state", "intercept"), float("nan")),
    _one("intercept_huge_list", ("state", "intercept"), list(range(100_000))),
    _one("weights_nan", ("state", "weights"), {"amount": float("nan")}),
    _one("weights_strings", ("state", "weights"), {"amount": "x"}),
    _one("weights_list", ("state", "weights"), [0.5] * 100_000),
    _one("weights_unknown_inputs", ("state", "weights"), {f"w{i}": 1.0 for i in range(10_000)}),
    _one("weights_nested", ("state", "weights"), {"amount": {"a": 1}}),
    ("weights_that_overflow", ((("state", "weights"), {"amount": 1e308, "amount_over_50": -1e308}),
                               (("state", "scaler", "vars"), {"amount": 1.0, "amount_over_50": 1.0}))),
    ("variance_that_overflows", ((("state", "weights"), {"amount": 1e300, "is_weekend": -1e300}),
                                 (("state", "scaler", "vars"), {"amount": 5e-324, "is_weekend": 5e-324}))),
    _one("means_strings", ("state", "scaler", "means"), {"amount": "x"}),
    _one("vars_negative", ("state", "scaler", "vars"), {"amount": -1.0}),
    _one("counts_list", ("state", "scaler", "counts"), [1, 2]),
    _one("scaler_missing", ("state", "scaler"), DROP),
    _one("params_prior_one", ("state", "params", "prior"), 1.0),
    _one("params_prior_zero", ("state", "params", "prior"), 0.0),
    _one("params_unknown", ("state", "params", "evil"), 1),
    _one("params_string", ("state", "params"), "x"),
    _one("learning_rate_string", ("state", "params", "learning_rate"), "x"),
    _one("n_learned_string", ("state", "n_learned"), "x"),
    _one("no_sequence", ("sequence",), DROP),
    _one("sequence_string", ("sequence",), "9"),
    _one("sequence_list", ("sequence",), [9]),
    _one("sequence_huge_float", ("sequence",), 1e300),
    _one("sequence_bool", ("sequence",), True),
    ("no_lineage_version_int", ((("lineage",), DROP), (("version",), 5))),
    ("no_lineage_no_version", ((("lineage",), DROP), (("version",), DROP))),
    _one("lineage_list", ("lineage",), ["lr"]),
    _one("lineage_object", ("lineage",), {"a": 1}),
]
#: Seat records signed with the right key and malformed.
SEAT_DEFECTS: list[tuple[str, tuple[Edit, ...]]] = [
    _one("no_id", ("id",), DROP),
    _one("no_epoch", ("epoch",), DROP),
    _one("epoch_string", ("epoch",), "x"),
    _one("epoch_null", ("epoch",), None),
    _one("epoch_list", ("epoch",), [1]),
    _one("epoch_huge_float", ("epoch",), 1e300),
    _one("no_version", ("version",), DROP),
    _one("no_state", ("state",), DROP),
    _one("state_intercept_string", ("state", "intercept"), "x"),
    _one("no_sequence", ("sequence",), DROP),
    _one("sequence_string", ("sequence",), "x"),
    _one("no_lineage", ("lineage",), DROP),
]
