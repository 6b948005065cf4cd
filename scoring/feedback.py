"""What a label is: the feedback record's fields, checked.

>>> check_feedback({"transaction_id": "t-1", "label": "fraud", "source": "review"})
('t-1', 1)
"""

from __future__ import annotations

import math
import time
from typing import TypeGuard

from flagstream.cards import card_numbers, may_carry_card_number
from flagstream.codec import deeper_than
from flagstream.errors import InvalidRecord

#: The longest transaction id accepted (the same limit as the transaction schema).
MAX_ID_LENGTH = 128
#: The largest feature value a recorded decision may carry (counts, amounts, seconds and
#: ratios are all far below it; a model fed more could overflow its statistics).
MAX_FEATURE = 1e12
#: The deepest nesting a recorded decision may have (it is stored and re-encoded).
MAX_DECISION_NESTING = 8
FEEDBACK_LABELS = {"fraud": 1, "legit": 0}
FEEDBACK_SOURCES = {"review", "chargeback", "auto"}
assert MAX_DECISION_NESTING >= 2  # (what _has_grandchildren relies on)
#: What a decoded value can nest in (a tuple: ``isinstance`` is quicker with one than a union).
CONTAINERS = (dict, list)
#: The longest reviewer name accepted (the review page writes at most 64 characters).
MAX_REVIEWER = 64
#: A recorded decision may be stamped at most this far after this machine's clock, ms: the
#: scorer refuses transactions stamped over an hour ahead of its own clock
#: (``FLAGSTREAM_MAX_EVENT_LEAD_S``), and the two machines' clocks may differ.
DECISION_LEAD_MS = 2 * 3_600_000


def check_feedback(obj: dict) -> tuple[str, int]:
    """Check a decoded feedback record; return (transaction_id, label as 0/1)."""
    tx = obj.get("transaction_id")
    if not isinstance(tx, str) or not tx or len(tx) > MAX_ID_LENGTH:
        raise InvalidRecord("invalid_field", "feedback needs a transaction_id string")
    if may_carry_card_number(tx) and card_numbers(tx):  # refused at scoring: no decision will come
        raise InvalidRecord("card_number_in_field", "transaction_id carries a card number")
    label = obj.get("label")
    if not isinstance(label, str) or label not in FEEDBACK_LABELS:
        raise InvalidRecord("invalid_label", "label must be 'fraud' or 'legit'")
    source = obj.get("source", "review")
    if not isinstance(source, str) or source not in FEEDBACK_SOURCES:
        raise InvalidRecord("invalid_source", f"source must be one of {sorted(FEEDBACK_SOURCES)}")
    return tx, FEEDBACK_LABELS[label]


def feedback_identity(obj: dict) -> tuple[str, str]:
    """Who says a label: ``(source, reviewer)`` of a record :func:`check_feedback` accepted.

    The reviewer is a name of at most :data:`MAX_REVIEWER` characters ("" when absent).

    >>> feedback_identity({"transaction_id": "t-1", "label": "fraud", "reviewer": "ana"})
    ('review', 'ana')
    """
    reviewer = obj.get("reviewer")
    reviewer = "" if reviewer is None else reviewer
    if not isinstance(reviewer, str) or len(reviewer) > MAX_REVIEWER:
        raise InvalidRecord("invalid_field", f"reviewer must be a string of at most {MAX_REVIEWER}")
    return obj.get("source", "review"), reviewer


def check_decision(obj: object, n_features: int, earlier: tuple[int, ...] = ()) -> dict:
    """A recorded decision fit to learn from: ``n_features`` finite numbers as ``features``, a
    probability as ``score``, a merchant id and integer event and scoring times. A decision
    recorded by an earlier layout, with as many features as one of ``earlier`` (each a prefix
    of today's), gets the later features as 0 ("not known"), in place.

    The learner joins each label to the decision it read from the ``scores`` topic;
    that topic is as hostile as any other, so a decision is checked before any model
    sees it. Raises :class:`InvalidRecord` (``invalid_decision``) otherwise.

    A decision shaped as the scorer writes an approval (:func:`_plainly_fit`: exact types,
    floats within bounds, nothing nested but its features) is accepted at once; every other
    one takes :func:`check_decision_reference`, which decides alone (the quick look only
    ever accepts what the reference accepts: ``tests/test_learner_batch.py``).

    >>> d = {"features": [0.5, 1.0], "score": 0.2, "merchant_id": "m-1", "event_time_ms": 0,
    ...      "scored_at_ms": 10}
    >>> check_decision(d, 2) is d
    True
    >>> check_decision({**d, "features": [0.5, float("nan")]}, 2)
    Traceback (most recent call last):
    ...
    flagstream.errors.InvalidRecord: recorded decision: features must be 2 finite numbers
    >>> check_decision({**d, "features": [0.5]}, 2, earlier=(1,))["features"]
    [0.5, 0.0]
    """
    if _plainly_fit(obj, n_features):
        return obj  # type: ignore[return-value]  # (a dict: _plainly_fit says so)
    return check_decision_reference(obj, n_features, earlier)


#: Value types a decision's plain fields have (exact types: a subclass takes the full check).
PLAIN_VALUES = frozenset({str, int, float, bool, type(None), list})


def _plainly_fit(obj: object, n_features: int) -> bool:
    """Whether ``obj`` is a decision as the scorer writes an approval, every check passed
    in a few C-level passes: a dict whose values are strings, numbers, booleans or None
    and one list (``features``: ``n_features`` floats whose absolute values add up to at
    most :data:`MAX_FEATURE`, so each is finite and within bounds), no ``shadow``, a float
    ``score`` in [0, 1], a merchant id and integer times. False says nothing: the
    reference then decides.

    >>> d = {"features": [0.5, 1.0], "score": 0.2, "merchant_id": "m-1", "event_time_ms": 0,
    ...      "scored_at_ms": 10}
    >>> _plainly_fit(d, 2), _plainly_fit({**d, "score": 1}, 2), _plainly_fit({**d, "x": {}}, 2)
    (True, False, False)
    """
    if type(obj) is not dict:
        return False
    features = obj.get("features")
    if type(features) is not list or len(features) != n_features or "shadow" in obj:
        return False
    kinds = list(map(type, obj.values()))
    if kinds.count(list) != 1 or not PLAIN_VALUES.issuperset(kinds):
        return False  # another container (``reasons``, ``shadow``, a nested field)
    if set(map(type, features)) != {float} or not sum(map(abs, features)) <= MAX_FEATURE:
        return False  # (a NaN or an infinity makes the sum fail the comparison)
    score, merchant = obj.get("score"), obj.get("merchant_id")
    if type(score) is not float or not 0.0 <= score <= 1.0:
        return False
    if type(merchant) is not str or not 0 < len(merchant) <= MAX_ID_LENGTH:
        return False
    at, scored = obj.get("event_time_ms"), obj.get("scored_at_ms")
    return type(at) is int and type(scored) is int and 0 <= at < _latest_ms() and 0 <= scored < 10**15


def _latest_ms() -> float:
    """The latest event time a recorded decision may carry now (:data:`DECISION_LEAD_MS`)."""
    return time.time() * 1000 + DECISION_LEAD_MS


def check_decision_reference(obj: object, n_features: int, earlier: tuple[int, ...] = ()) -> dict:
    """:func:`check_decision`, every check in turn (what it is held to, and what decides
    every decision its quick look does not accept: one of an earlier layout among them, whose
    quick look fails on its count of features)."""
    if not isinstance(obj, dict):
        raise InvalidRecord("invalid_decision", "recorded decision is not a JSON object")
    features = obj.get("features")
    if isinstance(features, list) and len(features) in earlier and len(features) < n_features \
            and _features_ok(features, len(features)):
        features = obj["features"] = [*features, *[0.0] * (n_features - len(features))]
    if not _features_ok(features, n_features):
        raise InvalidRecord("invalid_decision",
                            f"recorded decision: features must be {n_features} finite numbers")
    # ``features`` is a flat list of numbers by now: only the other containers can nest (their
    # list sits where the decision did, so every one keeps its depth)
    nested = [v for v in obj.values() if isinstance(v, CONTAINERS) and v is not features]
    if nested and _has_grandchildren(nested) and deeper_than(nested, MAX_DECISION_NESTING):
        raise InvalidRecord("invalid_decision", "recorded decision: nested too deep")
    shadow = obj.get("shadow", {})
    if not isinstance(shadow, dict) or not all(
            isinstance(k, str) and _finite(v) and 0.0 <= v <= 1.0 for k, v in shadow.items()):
        raise InvalidRecord("invalid_decision", "recorded decision: shadow must map names to scores")
    score = obj.get("score")
    if not _finite(score) or not 0.0 <= score <= 1.0:
        raise InvalidRecord("invalid_decision", "recorded decision: score must be in [0, 1]")
    merchant = obj.get("merchant_id")
    if not isinstance(merchant, str) or not merchant or len(merchant) > MAX_ID_LENGTH:
        raise InvalidRecord("invalid_decision", "recorded decision: merchant_id must be a short string")
    for name in ("event_time_ms", "scored_at_ms"):
        value = obj.get(name)
        if not _finite(value) or not 0 <= value < 10**15:
            raise InvalidRecord("invalid_decision", f"recorded decision: {name} must be epoch ms")
    if obj["event_time_ms"] >= _latest_ms():  # (its windows would jump ahead: ``refuse_future``)
        raise InvalidRecord("invalid_decision", "recorded decision: event_time_ms is in the future")
    return obj


def _features_ok(features: object, n_features: int) -> bool:
    """``n_features`` finite numbers within ±MAX_FEATURE (bools are not numbers).

    The common case, floats as the JSON decoder gives them, is checked first with C-level
    passes (floats with a finite sum hold no NaN or infinity, and then the smallest and the
    largest bound the rest); anything else (integers, say, or a sum that overflows) takes the
    general check, which decides alone.

    >>> _features_ok([1.0, 2], 2), _features_ok([1.0, float("nan")], 2), _features_ok([True, 1.0], 2)
    (True, False, False)
    """
    if not isinstance(features, list) or len(features) != n_features:
        return False
    # floats whose sum is finite hold no NaN or infinity; then the extremes say the rest
    if set(map(type, features)) == {float} and math.isfinite(sum(features)) and (
            -MAX_FEATURE <= min(features) and max(features) <= MAX_FEATURE):
        return True
    return all(_finite(x) and abs(x) <= MAX_FEATURE for x in features)


def _has_grandchildren(containers: list) -> bool:
    """Whether one of ``containers`` holds a container. When none does, nothing is deeper than
    the decision's own values, so no nesting limit of 2 or more can be passed (the usual case:
    an approval's ``reasons`` is empty; :func:`deeper_than` decides the rest).

    >>> _has_grandchildren([[], {"a": 1}]), _has_grandchildren([[{"feature": "amount"}]])
    (False, True)
    """
    for value in containers:
        children = value.values() if isinstance(value, dict) else value
        if any(isinstance(child, CONTAINERS) for child in children):
            return True
    return False


def _finite(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
