"""Who holds the champion seat: the gate's promotions and the drift watch's rollbacks.

One object, two drivers. The worker's learner runs it and sends the registry writes it
returns to the ``models`` topic; the backtest runs it against a dictionary and applies
the same writes there. Either way a change of champion is a seat record made by
:func:`flagstream.scoring.registry.seat_change` and applied to the learner at once
(:meth:`flagstream.scoring.learner.Learner.adopt_seat`), so the backtest's champion
changes exactly when the worker's would on the same labels.

* :meth:`ChampionLifecycle.verdicts` applies the gate (:mod:`flagstream.scoring.gate`): a
  refused challenger gets a version record carrying the gate's numbers, a passing one
  is promoted with them (labels, frauds, metric, margin).
* :meth:`ChampionLifecycle.drift` answers an ADWIN alarm on the champion's error: the
  earlier champion versions are scored on the recent labels they never learned, and the
  first that beats what the champion said by the margin is rolled back to, on at least
  the gate's minimum of frauds (and as many legitimate labels).

>>> from flagstream.scoring.challengers import Challenger, ShadowSet
>>> from flagstream.scoring.gate import Gate, GateConfig
>>> from flagstream.scoring.handle import ModelHandle
>>> from flagstream.scoring.learner import Learner
>>> from flagstream.scoring.linear import LinearChampion
>>> registry: dict = {}
>>> gate = Gate(GateConfig(min_labels=20, min_frauds=10, cooldown_labels=40))
>>> learner = Learner(ModelHandle(LinearChampion()), registry.get, publish_each_batch=False,
...                   shadow=ShadowSet([Challenger("lr-good", LinearChampion())]), gate=gate)
>>> life = ChampionLifecycle(learner, registry.get, registry.__setitem__)
>>> for i in range(40):
...     y = i % 2
...     gate.observe({"score": 0.5, "shadow": {"lr-good": 0.9 if y else 0.1}}, y)
>>> writes = life.verdicts()
>>> [k for k, _ in writes], learner.handle.name, life.changes[-1]["action"]
([b'version:lr-good-000001', b'version:lr-good-000001', b'seat', b'champion'], 'lr-good', 'promote')
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flagstream.features.layout import N_FEATURES
from flagstream.scoring import registry as reg
from flagstream.scoring.gate import compare_on, rollback_candidates
from flagstream.scoring.handle import model_from_state
from flagstream.scoring.learner import Learner
from flagstream.scoring.operating_point import OperatingPoint

#: Registry writes in order: (key, record), a None record deletes the key.
Writes = list[tuple[bytes, dict | None]]
#: Reads a registry record by key (None when absent).
Getter = Callable[[bytes], dict | None]


def apply_writes(registry: dict[bytes, dict], writes: Writes) -> None:
    """Apply registry writes to an in-memory registry (the backtest's ``models`` topic).

    >>> r = {b"a": {}}
    >>> apply_writes(r, [(b"b", {"x": 1}), (b"a", None)]); r
    {b'b': {'x': 1}}
    """
    for key, record in writes:
        if record is None:
            registry.pop(key, None)
        else:
            registry[key] = record


class ChampionLifecycle:
    """The gate's promotions and the drift watch's rollbacks, as registry writes.

    Parameters
    ----------
    learner
        The learner whose champion and challengers compete (it must have a gate).
    get
        Reads the registry (the worker: its own recent writes, then the ``models`` table).
    remember
        Keeps a version record written now so that later reads in the same step see it.
    on_seat
        Called with every new seat record and who made it, after the learner adopted it
        (the worker logs, counts and hands the new champion to its scorer).
    on_refusal
        Called with every challenger version the gate refused and the reason.
    operating_point
        The decision policy's operating point (if any): its estimates start again when the
        champion's lineage changes (:meth:`OperatingPoint.new_model`).
    """

    def __init__(self, learner: Learner, get: Getter,
                 remember: Callable[[bytes, dict], None],
                 on_seat: Callable[[dict, str], None] | None = None,
                 on_refusal: Callable[[dict, str], None] | None = None,
                 operating_point: OperatingPoint | None = None) -> None:
        if learner.gate is None:
            raise ValueError("a champion lifecycle needs a learner with a gate")
        self.learner = learner
        self.gate = learner.gate
        self.get = get
        self.remember = remember
        self.on_seat = on_seat
        self.on_refusal = on_refusal
        self.operating_point = operating_point
        #: every change of champion made here: action, version, from, by, reason
        self.changes: list[dict[str, Any]] = []
        self.refusals = 0

    def seat_writes(self, target: dict, action: str, reason: str, by: str) -> Writes:
        """Give the seat to version record ``target`` and apply it to the learner now."""
        h = self.learner.handle
        current = {"version": h.version} if h.sequence else None
        writes: Writes = list(reg.seat_change(self.get, target, action, reason, by, current))
        seat = writes[-2][1]
        assert seat is not None, "seat_change writes the new seat second to last"
        lineage = self.learner.handle.name
        if self.learner.adopt_seat(seat):
            self.adopted(seat, by, lineage)
        return writes

    def adopted(self, seat: dict, by: str, lineage: str) -> None:
        """The learner adopted ``seat`` (made here, or by the CLI) replacing ``lineage``."""
        self.changes.append({"action": seat["action"], "version": seat["version"],
                             "from": seat["from"], "by": by, "reason": seat["reason"]})
        del self.changes[:-200]
        if self.operating_point is not None and seat["lineage"] != lineage:
            self.operating_point.new_model()
        if self.on_seat is not None:
            self.on_seat(seat, by)

    def verdicts(self) -> Writes:
        """Apply the gate: refusals get a version record with the numbers; a winner is promoted."""
        writes: Writes = []
        learner = self.learner
        for v in self.gate.verdicts(learner.shadow.names()):
            challenger = learner.shadow.get(v.lineage)
            if challenger is None:
                continue
            reason = v.reason if v.action == "refuse" else "promoted by the gate"
            record = learner.publish_challenger(challenger, reason)  # with the gate's numbers
            key = reg.version_key(record["version"])
            writes.append((key, record))
            self.remember(key, record)
            if v.action == "refuse":
                self.refusals += 1
                if self.on_refusal is not None:
                    self.on_refusal(record, v.reason)
            else:
                writes += self.seat_writes(record, "promote", v.reason, "gate")
        return writes

    def drift(self) -> tuple[Writes, list[str]]:
        """After ADWIN saw the champion's error rise: roll back if an earlier version does
        better. Returns the writes and, when nothing was rolled back, what was tried."""
        width = self.gate.take_alarm()
        if not width:
            return [], []
        cfg = self.gate.config
        window = [w for w in self.gate.window(width) if len(w[0]) == N_FEATURES]
        tried = []
        for version, fair in rollback_candidates(self.learner.timeline, window):
            target = self.get(reg.version_key(version))
            if target is None:
                continue
            frauds = sum(int(w[1]) for w in fair)
            if min(frauds, len(fair) - frauds) < cfg.min_frauds:
                # the loss is class-balanced: with a few frauds (or none) its fraud half says
                # little, and a rollback on it flaps (a demo rolled back on 80 labels, 0 frauds)
                tried.append(f"{version}: too little evidence ({len(fair)} labels, {frauds} "
                             f"frauds; a rollback needs {cfg.min_frauds} of each class)")
                continue
            mine, champ = compare_on(fair, model_from_state(target["state"]), cfg.metric)
            summary = (f"{version} {cfg.metric} {mine:.4f} vs champion {champ:.4f} on "
                       f"{len(fair)} labels ({frauds} frauds), margin {cfg.margin:.0%}")
            if mine <= champ * (1 - cfg.margin):
                return self.seat_writes(target, "rollback", f"drift (ADWIN): {summary}", "drift"), []
            tried.append(summary)
        return [], tried or ["no candidates"]

    def prunable(self, versions: list[dict], keep: int) -> list[bytes]:
        """Keys of version records to delete: beyond the newest ``keep`` per lineage, except
        recent champions, the seat's stack and the challengers' current versions."""
        seat = self.get(reg.SEAT)
        protect = {t[0] for t in self.learner.timeline[-50:]} | set(seat["stack"] if seat else [])
        protect |= {c.version for c in self.learner.shadow if c.version}
        return reg.prune(versions, keep, protect)
