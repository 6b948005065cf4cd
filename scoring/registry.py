"""The model registry: versions, their status, and the champion seat, on the ``models`` topic.

The compacted ``models`` topic is the registry; every worker replicates it (a global
table) and the ``flagstream models`` command reads it to its end. All keys go to
partition 0, so every reader sees the writes in one order:

``b"version:<id>"``
    One record per published version: ``state`` (JSON), ``lineage``, ``sequence``,
    ``parent``, ``status`` (``shadow``, ``champion``, ``retired``) and ``history``
    (status changes with reason, time and who), plus the gate's numbers.
``b"seat"``
    Who holds the champion seat: the version, its state, an ``epoch`` that grows on
    every promotion or rollback, a unique ``id``, the ``stack`` of earlier champions
    (what a plain rollback returns to) and the seat's history. Written only on a
    change of champion: by the CLI, or by the learner's gate.
``b"champion"``
    The newest version of the champion, rewritten by the learner at every publication
    under the seat it follows. Scorers use it when its ``seat`` matches the seat's
    ``id``, otherwise the seat's own version (so a stale write loses, never the seat).
``b"candidate:<lineage>"``
    A submitted model waiting for the learner to shadow it (status ``candidate``).
``b"learner"``
    The learner's snapshot (models + feedback offsets), to restore without a disk.

Every value is sealed (:mod:`flagstream.scoring.snapshots`) and checked before use.

>>> from flagstream.scoring.linear import LinearChampion
>>> state = LinearChampion().to_state()
>>> v1 = version_record("lr-000001", 1, state, "champion", "learned", "learner")
>>> v2 = version_record("x-000002", 2, state, "shadow", "submitted", "cli")
>>> records = {CHAMPION: v1, version_key("lr-000001"): v1, version_key("x-000002"): v2}
>>> writes = seat_change(records.get, v2, "promote", "better", "cli:ann")
>>> [k for k, _ in writes]
[b'version:x-000002', b'version:lr-000001', b'seat', b'champion']
>>> records.update(writes)
>>> choose_champion(records[SEAT], records[CHAMPION])["version"], records[SEAT]["stack"]
('x-000002', ['lr-000001'])
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from flagstream.errors import FlagstreamError
from flagstream.scoring.handle import model_from_state, parse_version
from flagstream.scoring.snapshots import IntegrityError, unseal

SEAT, CHAMPION, LEARNER = b"seat", b"champion", b"learner"
#: The learner's operating point: the threshold every scorer decides with.
OPERATING_POINT = b"operating-point"
VERSION_PREFIX, CANDIDATE_PREFIX = b"version:", b"candidate:"
STATUSES = ("candidate", "shadow", "champion", "retired")
#: Partition every registry record is written to (one total order).
PARTITION = 0
MAX_HISTORY = 50
MAX_STACK = 20
LINEAGE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,39}")

Getter = Callable[[bytes], dict | None]


class RegistryError(FlagstreamError, ValueError):
    """A registry command cannot be carried out (unknown version, nothing to roll back to...)."""


def now_ms() -> int:
    return int(time.time() * 1000)


def version_key(version: str) -> bytes:
    return VERSION_PREFIX + version.encode()


def candidate_key(lineage: str) -> bytes:
    return CANDIDATE_PREFIX + lineage.encode()


def entry(status: str, reason: str, by: str, at_ms: int | None = None) -> dict[str, Any]:
    """One line of a version's status history."""
    return {"status": status, "reason": reason, "by": by, "at_ms": at_ms or now_ms()}


def version_record(version: str, sequence: int, state: dict, status: str, reason: str, by: str,
                   *, parent: str | None = None, epoch: int = 0, seat: str = "",
                   gate: dict | None = None, history: Iterable[dict] = (),
                   at_ms: int | None = None) -> dict[str, Any]:
    """The record published for one version."""
    at = at_ms or now_ms()
    return {
        "kind": "version", "version": version, "lineage": parse_version(version)[0],
        "sequence": sequence, "parent": parent, "epoch": epoch, "seat": seat,
        "status": status, "history": [*history, entry(status, reason, by, at)][-MAX_HISTORY:],
        "gate": gate or {}, "labels": state.get("n_learned", 0), "published_at_ms": at,
        "state": state,
    }


def with_status(record: Mapping[str, Any], status: str, reason: str, by: str,
                at_ms: int | None = None) -> dict[str, Any]:
    """A copy of a version record with a new status appended to its history."""
    out = dict(record)
    out["status"] = status
    out["history"] = [*record.get("history", []), entry(status, reason, by, at_ms)][-MAX_HISTORY:]
    return out


def seat_as_record(seat: Mapping[str, Any]) -> dict[str, Any]:
    """The champion a seat names, shaped like a champion record."""
    return {"version": seat["version"], "lineage": seat["lineage"], "sequence": seat["sequence"],
            "state": seat["state"], "epoch": seat["epoch"], "seat": seat["id"]}


def check_followable(seat: Mapping | None, champion: Mapping | None) -> None:
    """Raise ``ValueError`` unless the fields a worker follows are of the right kind.

    Sequences and epochs are whole numbers in range (a float or a bool would be taken
    for a huge or a tiny one and wedge every worker on it); ids and lineages are the
    strings the learner writes.

    >>> check_followable(None, {"version": "lr-000003", "sequence": 3, "lineage": "lr", "state": {}})
    >>> check_followable(None, {"version": "lr-000003", "sequence": 1e300, "state": {}})
    Traceback (most recent call last):
    ...
    ValueError: champion record: sequence must be a whole number
    """
    for what, record, numbers, strings in (
        ("seat", seat, ("epoch", "sequence"), ("id", "version")),
        ("champion", champion, ("sequence",), ("version",)),
    ):
        if record is None:
            continue
        for name in numbers:
            value = record.get(name, 0) if name == "epoch" else record.get(name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**53:
                raise ValueError(f"{what} record: {name} must be a whole number")
        for name in strings:
            if not isinstance(record.get(name), str):
                raise ValueError(f"{what} record: {name} must be a string")
        lineage = record.get("lineage", parse_version(record["version"])[0])
        if not isinstance(lineage, str) or not LINEAGE.fullmatch(lineage):
            raise ValueError(f"{what} record: lineage must be a name")
        if not isinstance(record.get("state"), dict):
            raise ValueError(f"{what} record: state must be an object")


def choose_champion(seat: Mapping | None, champion: Mapping | None) -> dict | None:
    """What every worker scores with: the champion record if it follows the seat, else the seat's."""
    if seat is None:
        return dict(champion) if champion is not None else None
    if champion is not None and champion.get("seat") == seat["id"]:
        return dict(champion)
    return seat_as_record(seat)


def seat_change(get: Getter, target: Mapping[str, Any], action: str, reason: str, by: str,
                current: Mapping[str, Any] | None = None) -> list[tuple[bytes, dict]]:
    """The records that give the champion seat to version record ``target``, in write order.

    ``action`` is ``promote`` (the old champion goes to shadow and onto the stack) or
    ``rollback`` (the old champion is retired; the stack is unwound to ``target``).
    ``current`` is the champion being replaced (default: what the records say).
    """
    if action not in ("promote", "rollback"):
        raise ValueError(f"action must be promote or rollback, not {action!r}")
    at = now_ms()
    seat = get(SEAT)
    current = current if current is not None else choose_champion(seat, get(CHAMPION))
    old = current["version"] if current else None
    epoch = (seat["epoch"] if seat else 0) + 1
    stack = list(seat["stack"]) if seat else []
    if action == "promote" and old and old != target["version"]:
        stack = [*stack, old][-MAX_STACK:]
    elif action == "rollback" and target["version"] in stack:
        stack = stack[: stack.index(target["version"])]
    seat_id = f"{epoch}-{uuid.uuid4().hex[:8]}"
    promoted = with_status(target, "champion", f"{action}: {reason}", by, at)
    writes = [(version_key(target["version"]), promoted)]
    old_key = version_key(old) if old and old != target["version"] else None
    old_record = get(old_key) if old_key is not None else None
    if old_key is not None and old_record is not None:
        demoted = "shadow" if action == "promote" else "retired"
        writes.append((old_key, with_status(
            old_record, demoted, f"{action} to {target['version']}: {reason}", by, at)))
    history = [*(seat["history"] if seat else []), {
        "epoch": epoch, "action": action, "version": target["version"], "from": old,
        "reason": reason, "by": by, "at_ms": at,
    }][-MAX_HISTORY:]
    writes.append((SEAT, {
        "kind": "seat", "id": seat_id, "epoch": epoch, "version": target["version"],
        "lineage": target["lineage"], "sequence": target["sequence"], "state": target["state"],
        "action": action, "reason": reason, "by": by, "at_ms": at, "from": old,
        "stack": stack, "history": history,
    }))
    writes.append((CHAMPION, {**promoted, "epoch": epoch, "seat": seat_id}))
    return writes


def prune(versions: Iterable[Mapping[str, Any]], keep: int, protect: Iterable[str]) -> list[bytes]:
    """Keys of version records beyond the newest ``keep`` per lineage, except protected ones.

    >>> vs = [{"version": f"a-{i}", "lineage": "a", "sequence": i} for i in range(5)]
    >>> prune(vs, 2, ["a-0"])
    [b'version:a-2', b'version:a-1']
    """
    by_lineage: dict[str, list[Mapping[str, Any]]] = {}
    for v in versions:
        by_lineage.setdefault(v["lineage"], []).append(v)
    keep_ids = set(protect)
    out: list[bytes] = []
    for records in by_lineage.values():
        records.sort(key=lambda r: r["sequence"], reverse=True)
        out.extend(version_key(r["version"]) for r in records[keep:] if r["version"] not in keep_ids)
    return out


class RegistryView:
    """The registry as read from the topic: verified records, and the refused ones with why.

    Parameters
    ----------
    raw
        Key → sealed value (the compacted topic's latest value per key).
    key
        HMAC key, or None.

    Examples
    --------
    >>> from flagstream.scoring.linear import LinearChampion
    >>> from flagstream.scoring.snapshots import seal
    >>> v = version_record("lr-000001", 1, LinearChampion().to_state(), "champion", "x", "y")
    >>> view = RegistryView({CHAMPION: seal(v, b"k"), version_key("lr-000001"): seal(v, b"k"),
    ...                      b"version:evil-000002": b'{"version": "evil-000002"}'}, key=b"k")
    >>> [(r["version"], r["status"]) for r in view.rows()], list(view.refused)
    ([('lr-000001', 'champion')], [b'version:evil-000002'])
    """

    def __init__(self, raw: Mapping[bytes, bytes], key: bytes | None = None) -> None:
        self.records: dict[bytes, dict] = {}
        self.refused: dict[bytes, str] = {}
        for k, value in raw.items():
            try:
                self.records[k] = unseal(value, key, what=k.decode(errors="replace"))
            except IntegrityError as exc:
                self.refused[k] = str(exc)

    def get(self, key: bytes) -> dict | None:
        return self.records.get(key)

    @property
    def seat(self) -> dict | None:
        return self.records.get(SEAT)

    @property
    def champion(self) -> dict | None:
        return choose_champion(self.seat, self.records.get(CHAMPION))

    def versions(self) -> list[dict]:
        """Every version record, oldest first."""
        found = [v for k, v in self.records.items() if k.startswith(VERSION_PREFIX)]
        return sorted(found, key=lambda v: v["sequence"])

    def candidates(self) -> list[dict]:
        return [v for k, v in self.records.items() if k.startswith(CANDIDATE_PREFIX)]

    def version(self, version: str) -> dict:
        """One version's record; RegistryError naming the known ones if absent."""
        record = self.records.get(version_key(version))
        if record is None:
            known = ", ".join(v["version"] for v in self.versions()[-8:]) or "none"
            raise RegistryError(f"unknown version {version!r} (recent: {known})")
        return record

    def status(self, record: Mapping[str, Any]) -> str:
        """A version's status now: only the seat's current version is ``champion``."""
        champion = self.champion
        if champion is not None and record["version"] == champion["version"]:
            return "champion"
        return "retired" if record["status"] == "champion" else record["status"]

    def rows(self, every: bool = False) -> list[dict[str, Any]]:
        """Rows for ``models list``: the newest version of each lineage (or every version)."""
        versions = self.versions()
        if not every:
            newest: dict[str, dict] = {}
            for v in versions:
                newest[v["lineage"]] = v
            champion = self.champion
            if champion and version_key(champion["version"]) in self.records:
                newest[champion["lineage"]] = self.records[version_key(champion["version"])]
            versions = sorted(newest.values(), key=lambda v: v["sequence"])
        rows = [{**v, "status": self.status(v)} for v in versions]
        rows += [{"version": f"({c['lineage']})", "lineage": c["lineage"], "status": "candidate",
                  "labels": c["state"].get("n_learned", 0), "gate": {}, "history": [
                      entry("candidate", c["reason"], c["by"], c["submitted_at_ms"])]}
                 for c in self.candidates()]
        return rows

    def max_sequence(self) -> int:
        seqs = [v["sequence"] for v in self.versions()]
        for record in (self.seat, self.records.get(CHAMPION)):
            if record:
                seqs.append(record["sequence"])
        return max(seqs, default=0)


def check_target(view: RegistryView, target: Mapping[str, Any]) -> None:
    champion = view.champion
    if champion is not None and champion["version"] == target["version"]:
        raise RegistryError(f"{target['version']} is already the champion")
    try:
        model_from_state(target["state"])
    except (KeyError, ValueError) as exc:
        raise RegistryError(f"{target['version']} cannot be loaded: {exc}") from None
