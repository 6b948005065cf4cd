"""Every field of a registry record checked before anything uses it.

A record on the ``models`` topic passed its signature check; it is still refused
unless each field is of the expected type and in range: whole numbers for
sequences, epochs and times, names of the right shape, lists no longer than the
registry writes, only known keys, and a model state that loads and scores finite
probabilities (:meth:`flagstream.scoring.linear.LinearChampion.from_state`). A
record that passes can be followed without a ``KeyError`` or a ``TypeError``.

>>> from flagstream.scoring.linear import LinearChampion
>>> from flagstream.scoring.registry import version_record
>>> good = version_record("lr-000003", 3, LinearChampion().to_state(), "champion", "", "test")
>>> check_record(b"champion", good)
>>> check_record(b"champion", {**good, "state": {**good["state"], "intercept": "x"}})
Traceback (most recent call last):
...
ValueError: champion record: model state: intercept must be a finite number
>>> try:
...     check_record(b"seat", {"kind": "seat", "epoch": 5})
... except ValueError as exc:
...     print(str(exc)[:43])
seat record: missing action, at_ms, by, fro
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from flagstream.scoring.handle import model_from_state, parse_version
from flagstream.scoring.registry import (
    CANDIDATE_PREFIX,
    CHAMPION,
    LEARNER,
    LINEAGE,
    MAX_HISTORY,
    MAX_STACK,
    OPERATING_POINT,
    SEAT,
    STATUSES,
    VERSION_PREFIX,
)

#: The largest whole number a record may carry (JSON readers agree up to here).
MAX_WHOLE = 2**53
#: The longest free-text field (reasons, names of who did it).
MAX_TEXT = 1_000
#: The latest event time a record may carry (2100-01-01, as transactions are held to).
MAX_EVENT_MS = 4_102_444_800_000

Check = Callable[[Any], bool]


def whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_WHOLE


def number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def text(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= MAX_TEXT


def name(value: Any) -> bool:
    return isinstance(value, str) and LINEAGE.fullmatch(value) is not None


def version_id(value: Any) -> bool:
    if not isinstance(value, str) or len(value) > 64:
        return False
    try:
        lineage, _ = parse_version(value)
    except ValueError:
        return False
    return name(lineage)


def optional(check: Check) -> Check:
    return lambda v: v is None or check(v)


def list_of(check: Check, longest: int) -> Check:
    return lambda v: isinstance(v, list) and len(v) <= longest and all(check(x) for x in v)


def obj(value: Any) -> bool:
    return isinstance(value, dict)


def state(value: Any) -> bool:
    model_from_state(value)  # raises ValueError with the field that is wrong
    return True


HISTORY = list_of(obj, MAX_HISTORY)

VERSION_FIELDS: dict[str, Check] = {
    "kind": lambda v: v == "version", "version": version_id, "lineage": name, "sequence": whole,
    "parent": optional(version_id), "epoch": whole, "seat": text, "status": lambda v: v in STATUSES,
    "history": HISTORY, "gate": obj, "labels": lambda v: number(v) and v >= 0,
    "published_at_ms": whole, "state": state,
}
SEAT_FIELDS: dict[str, Check] = {
    "kind": lambda v: v == "seat", "id": lambda v: text(v) and bool(v), "epoch": whole,
    "version": version_id, "lineage": name, "sequence": whole, "state": state,
    "action": lambda v: v in ("promote", "rollback"), "reason": text, "by": text, "at_ms": whole,
    "from": optional(version_id), "stack": list_of(version_id, MAX_STACK), "history": HISTORY,
}
CANDIDATE_FIELDS: dict[str, Check] = {
    "kind": lambda v: v == "candidate", "id": text, "lineage": name, "state": state,
    "reason": text, "by": text, "submitted_at_ms": whole, "cutoff": number,
}


OPERATING_POINT_FIELDS: dict[str, Check] = {
    "kind": lambda v: v == "operating-point", "threshold": lambda v: number(v) and 0.0 <= v <= 1.0,
    "sequence": whole, "at_ms": whole, "reason": text, "target_met": optional(lambda v: isinstance(v, bool)),
}

DECLINE_FIELD: dict[str, Check] = {
    "decline_threshold": lambda v: number(v) and 0.0 < v <= 1.0,
}
#: what the update behind an operating-point record saw (absent in records before it existed)
EVIDENCE_KEYS = frozenset({"target_threshold", "event_time_ms", "false_discovery_rate", "fdr_low",
                           "fdr_high", "recall", "flags_per_day", "capacity_threshold", "labels",
                           "frauds"})


def evidence(value: Any) -> bool:
    """An object of known keys, each a finite number or null."""
    return (isinstance(value, dict) and set(value) <= EVIDENCE_KEYS
            and all(v is None or (number(v) and math.isfinite(v)) for v in value.values()))


EVIDENCE_FIELD: dict[str, Check] = {"evidence": evidence}


def check_fields(what: str, record: Any, fields: Mapping[str, Check]) -> None:
    """Raise ``ValueError`` unless ``record`` has exactly ``fields``, each passing its check."""
    if not isinstance(record, dict):
        raise ValueError(f"{what}: not an object")
    missing, unknown = sorted(set(fields) - set(record)), sorted(set(record) - set(fields))
    if missing:
        raise ValueError(f"{what}: missing {', '.join(missing)}")
    if unknown:
        raise ValueError(f"{what}: unknown fields {', '.join(map(repr, unknown))[:200]}")
    for field, check in fields.items():
        try:
            ok = check(record[field])
        except ValueError as exc:
            raise ValueError(f"{what}: {exc}") from None
        if not ok:
            raise ValueError(f"{what}: {field} is not valid")


def check_version(what: str, record: Any) -> None:
    """A version record (also the ``champion`` record): fields, and an id that matches them."""
    check_fields(what, record, VERSION_FIELDS)
    if parse_version(record["version"]) != (record["lineage"], record["sequence"]):
        raise ValueError(f"{what}: version {record['version']!r} does not match its lineage "
                         "and sequence")


def check_record(key: bytes, record: Any) -> None:
    """Raise ``ValueError`` (naming the field) unless ``record`` is valid under ``key``.

    The learner's snapshot (``b"learner"``) is checked by the learner itself, on restore.
    """
    what = f"{key.decode(errors='replace')[:80]} record"
    if key == SEAT:
        check_fields(what, record, SEAT_FIELDS)
        if parse_version(record["version"]) != (record["lineage"], record["sequence"]):
            raise ValueError(f"{what}: version does not match its lineage and sequence")
    elif key == CHAMPION or key.startswith(VERSION_PREFIX):
        check_version(what, record)
        if key != CHAMPION and key != VERSION_PREFIX + record["version"].encode():
            raise ValueError(f"{what}: holds version {record['version']!r}")
    elif key.startswith(CANDIDATE_PREFIX):
        check_fields(what, record, CANDIDATE_FIELDS)
        if key != CANDIDATE_PREFIX + record["lineage"].encode():
            raise ValueError(f"{what}: holds lineage {record['lineage']!r}")
    elif key == OPERATING_POINT:
        # the decline threshold is there only while automatic declines are on
        fields = OPERATING_POINT_FIELDS
        if isinstance(record, dict):
            fields = fields | (DECLINE_FIELD if "decline_threshold" in record else {})
            fields = fields | (EVIDENCE_FIELD if "evidence" in record else {})
        check_fields(what, record, fields)
    elif key != LEARNER:
        raise ValueError(f"{what}: not a registry key")


def offset(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and -1 <= value < 2**63


CHALLENGER_FIELDS: dict[str, Check] = {
    "lineage": name, "sequence": whole, "cutoff": number, "origin": text,
    "dirty": lambda v: isinstance(v, bool), "state": state,
}
SNAPSHOT_CHAMPION_FIELDS: dict[str, Check] = {
    "lineage": name, "sequence": whole, "epoch": whole, "seat": text,
    "dirty": lambda v: isinstance(v, bool), "labels_since_publish": whole, "state": state,
}
LEARNER_FIELDS: dict[str, Check] = {
    "kind": lambda v: v == "learner", "snapshot_seq": whole, "saved_at_ms": whole,
    "offsets": lambda v: isinstance(v, dict) and len(v) <= 10_000 and all(
        isinstance(p, str) and p.isdigit() and len(p) < 7 and offset(o) for p, o in v.items()),
    "champion": obj, "challengers": list_of(obj, 100), "gate": obj,
    "timeline": list_of(lambda t: isinstance(t, list) and len(t) == 2 and version_id(t[0])
                        and whole(t[1]), 1_000),
    "next_sequence": whole, "adopted": list_of(optional(text), 1_000),
    "waiting": lambda v: waiting_positions(v),
    # when the learner's stream state began (event ms; null: no decision seen yet)
    "since_ms": optional(lambda v: whole(v) and v < MAX_EVENT_MS),
}
#: The most waiting-label positions a learner snapshot may hold (the setting's bound).
MAX_WAITING = 50_000


def waiting_positions(value: Any) -> bool:
    """Positions of labels waiting for their decisions (:mod:`flagstream.scoring.feedback_wait`).

    >>> waiting_positions({"0": {"offsets": [5, 1], "waited_s": [3, 2]}})
    True
    >>> waiting_positions({"0": {"offsets": [5, -1], "waited_s": [3, 2]}})
    False
    """
    if not isinstance(value, dict) or len(value) > 10_000:
        return False
    total = 0
    for p, group in value.items():
        if not (isinstance(p, str) and p.isdigit() and len(p) < 7 and isinstance(group, dict)
                and set(group) == {"offsets", "waited_s"}):
            return False
        offsets, waited = group["offsets"], group["waited_s"]
        if not (isinstance(offsets, list) and isinstance(waited, list)
                and len(offsets) == len(waited) and all(map(whole, offsets))
                and all(map(whole, waited))):
            return False
        total += len(offsets)
    return total <= MAX_WAITING


def check_learner_snapshot(snapshot: Any) -> None:
    """Raise ``ValueError`` unless ``snapshot`` is a learner snapshot with every field valid.

    >>> try:
    ...     check_learner_snapshot({"kind": "learner", "snapshot_seq": 9})
    ... except ValueError as exc:
    ...     print(str(exc)[:49])
    learner snapshot: missing adopted, challengers, c
    """
    if isinstance(snapshot, dict) and "waiting" not in snapshot:  # written before labels waited
        snapshot = {**snapshot, "waiting": {}}
    if isinstance(snapshot, dict) and "since_ms" not in snapshot:  # written before it was kept
        snapshot = {**snapshot, "since_ms": 0}
    check_fields("learner snapshot", snapshot, LEARNER_FIELDS)
    check_fields("learner snapshot: champion", snapshot["champion"], SNAPSHOT_CHAMPION_FIELDS)
    for c in snapshot["challengers"]:
        check_fields("learner snapshot: challenger", c, CHALLENGER_FIELDS)
