"""The promotion gate and the champion's drift watch, on prequential, delayed labels.

Every label is scored against what each model said *before* it was known: the
champion's ``score`` recorded on the decision by the scorer, and each challenger's
shadow score recorded when the learner stored that decision. The gate metric is the
class-balanced mean log-loss (``FLAGSTREAM_GATE_METRIC=brier`` for the Brier score: the
mean over frauds and the mean over legitimate labels, averaged) over the labels both
models scored, counted since the challenger entered shadow under the current
champion. A challenger is promoted when it has at least ``min_labels`` such labels and
its loss is at most ``(1 - margin)`` times the champion's on the same labels; one that
has enough labels and does not pass is *refused* (logged and counted once, re-checked
as labels keep coming).

Drift: ``river.drift.ADWIN`` watches the champion seat's absolute error
``|label - score|`` (across promotions, so a bad promotion shows as a rise). When it
detects a rise, the candidates are the champion versions in use *before* the
versions that made the recent bad decisions, newest first; each is scored now on
the recent labels it never learned from, and the first that beats what the champion
actually said by the margin becomes the rollback target. A shift in the fraud rate
hurts every version alike and rolls nothing back.

>>> gate = Gate(GateConfig(min_labels=20, min_frauds=10, cooldown_labels=40, margin=0.05))
>>> for i in range(40):
...     y = i % 2
...     gate.observe({"score": 0.5, "shadow": {"good": 0.9 if y else 0.1,
...                   "bad": 0.1 if y else 0.9}, "features": [], "model_version": "lr-1"}, y)
>>> [(v.action, v.lineage) for v in gate.verdicts(["good", "bad"])]
[('refuse', 'bad'), ('promote', 'good')]
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from river.drift import ADWIN

EPS = 1e-6
METRICS = ("logloss", "brier")
#: A labelled event kept for drift checks: features, label, champion score, the
#: version that scored it, and the label's running index.
Labelled = tuple[list[float], int, float, str, int]


@dataclass(frozen=True)
class GateConfig:
    """Gate and drift settings (set by ``FLAGSTREAM_GATE_*`` / ``FLAGSTREAM_DRIFT_DELTA``).

    Parameters
    ----------
    min_labels
        Labels a challenger needs before it can be promoted (or refused).
    margin
        Relative improvement over the champion's loss required to promote.
    metric
        ``logloss`` or ``brier``.
    drift_delta
        ADWIN's confidence parameter for the champion's error stream.
    recent
        Labelled events kept in memory to check a rollback target against.
    min_frauds
        Fraud labels among them: a comparison of fraud models needs the rare class.
    cooldown_labels
        Labels since the champion last changed before the gate may change it again, so
        it never goes back and forth on the same evidence.
    """

    min_labels: int = 200
    min_frauds: int = 20
    cooldown_labels: int = 2_000
    margin: float = 0.02
    metric: str = "logloss"
    drift_delta: float = 0.002
    recent: int = 2_000

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"gate metric must be one of {METRICS}, not {self.metric!r}")


def losses(metric: str, labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Per-label loss of fraud probabilities ``probs`` against 0/1 ``labels``.

    >>> losses("brier", np.array([1, 0]), np.array([0.75, 0.25])).tolist()
    [0.0625, 0.0625]
    """
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1 - EPS)
    if metric == "brier":
        return (y - p) ** 2
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def _loss(metric: str, label: int, p: float) -> float:
    p = min(max(float(p), EPS), 1 - EPS)
    if metric == "brier":
        return (label - p) ** 2
    return -math.log(p) if label else -math.log(1 - p)


@dataclass
class Pairing:
    """A challenger and the champion on the same labels: count and summed losses."""

    n: int = 0
    frauds: int = 0
    challenger: float = 0.0
    champion: float = 0.0
    verdict: str = "pending"
    #: the part of each sum that came from fraud labels
    fraud_challenger: float = 0.0
    fraud_champion: float = 0.0

    def means(self) -> tuple[float, float]:
        """Class-balanced mean losses (challenger, champion): see :func:`balanced_mean`."""
        return (balanced_mean(self.challenger, self.fraud_challenger, self.n, self.frauds),
                balanced_mean(self.champion, self.fraud_champion, self.n, self.frauds))


def balanced_mean(total: float, fraud_total: float, n: int, frauds: int) -> float:
    """The mean loss over frauds and the mean over legitimate labels, averaged.

    Frauds are rare: a plain mean is decided by the legitimate labels, and a model that
    is merely surer about them would win while it catches less fraud. With one class
    only, the plain mean.

    >>> balanced_mean(total=3.0, fraud_total=2.0, n=11, frauds=1)   # (2/1 + 1/10) / 2
    1.05
    """
    legits = n - frauds
    if frauds <= 0 or legits <= 0:
        return total / max(n, 1)
    return (fraud_total / frauds + (total - fraud_total) / legits) / 2


@dataclass(frozen=True)
class Verdict:
    """What the gate decided: ``promote`` or ``refuse`` a challenger."""

    action: str
    lineage: str
    reason: str


@dataclass
class Gate:
    """Paired prequential comparison of challengers with the champion, and a drift watch.

    Parameters
    ----------
    config
        Thresholds and metric.
    """

    config: GateConfig = field(default_factory=GateConfig)

    def __post_init__(self) -> None:
        self.pairs: dict[str, Pairing] = {}
        self.seat_n = 0
        self.seat_loss = 0.0
        self.alarm: int | None = None
        self.labels_seen = 0
        self.recent: deque[Labelled] = deque(maxlen=self.config.recent)
        self._adwin = ADWIN(delta=self.config.drift_delta)

    def observe(self, decision: Mapping[str, Any], label: int,
                shadowed: Collection[str] | None = None) -> None:
        """Account one label against the scores recorded on its decision; with
        ``shadowed`` (the challengers seated), only theirs: a decision read back from
        ``scores`` may name any lineage, and each name was a pairing kept for ever."""
        metric = self.config.metric
        score = float(decision["score"])
        champion_loss = _loss(metric, label, score)
        self.seat_n += 1
        self.seat_loss += champion_loss
        self.labels_seen += 1
        for lineage, shadow_score in (decision.get("shadow") or {}).items():
            if shadowed is not None and lineage not in shadowed:
                continue
            pair = self.pairs.setdefault(lineage, Pairing())
            pair.n += 1
            pair.frauds += label
            mine = _loss(metric, label, shadow_score)
            pair.challenger += mine
            pair.champion += champion_loss
            if label:
                pair.fraud_challenger += mine
                pair.fraud_champion += champion_loss
        before = self._adwin.estimation
        self._adwin.update(abs(label - score))
        if self._adwin.drift_detected and self._adwin.estimation > before:
            self.alarm = int(self._adwin.width)
        self.recent.append((decision.get("features") or [], label, score,
                            decision.get("model_version", ""), self.labels_seen))

    def observe_many(self, labelled: Iterable[tuple[Mapping[str, Any], int]],
                     shadowed: Collection[str] | None = None) -> None:
        """Account labels in order, each against its decision's recorded scores (one
        :meth:`observe` each: the sums and the drift detector are sequential)."""
        for decision, label in labelled:
            self.observe(decision, label, shadowed)

    def verdicts(self, active: Iterable[str]) -> list[Verdict]:
        """Refusals (once per challenger, when it first fails) then at most one promotion."""
        cfg = self.config
        out: list[Verdict] = []
        best: tuple[float, str, str] | None = None
        if self.seat_n < cfg.cooldown_labels:  # too soon after the last change: evidence first
            return out
        for lineage in active:
            pair = self.pairs.get(lineage)
            if pair is None or pair.n < cfg.min_labels or pair.frauds < cfg.min_frauds:
                continue
            mine, champ = pair.means()
            summary = (f"{cfg.metric} {mine:.4f} vs champion {champ:.4f} on {pair.n} labels "
                       f"({pair.frauds} frauds)")
            if mine <= champ * (1 - cfg.margin):
                pair.verdict = "passing"
                if best is None or mine < best[0]:
                    best = (mine, lineage, f"gate: {summary} (margin {cfg.margin:.0%})")
            elif pair.verdict != "refused":
                pair.verdict = "refused"
                out.append(Verdict("refuse", lineage, f"gate refused: {summary}"))
        if best is not None:
            out.append(Verdict("promote", best[1], best[2]))
        return out

    def take_alarm(self) -> int | None:
        """The width of the recent window after a detected rise in error, once."""
        alarm, self.alarm = self.alarm, None
        return alarm

    def window(self, width: int) -> list[Labelled]:
        """The last ``width`` labelled events."""
        return list(self.recent)[-width:] if width > 0 else []

    def reset_seat(self, keep_drift: bool = False) -> None:
        """Start over after the champion changed: new pairings; after a rollback (not
        ``keep_drift``) also a fresh drift detector and no recent events."""
        self.pairs.clear()
        self.seat_n, self.seat_loss = 0, 0.0
        if not keep_drift:
            self.alarm = None
            self.recent.clear()
            self._adwin = ADWIN(delta=self.config.drift_delta)

    def forget(self, lineage: str) -> None:
        self.pairs.pop(lineage, None)

    def report(self, active: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
        """Per-model numbers: the champion seat and each (active) challenger's pairing."""
        names = set(self.pairs) if active is None else set(active)
        out: dict[str, dict[str, Any]] = {
            "champion": {"n": self.seat_n, "loss": self.seat_loss / max(self.seat_n, 1),
                         "metric": self.config.metric}
        }
        for lineage, pair in self.pairs.items():
            if lineage in names:
                mine, champ = pair.means()
                out[lineage] = {"n": pair.n, "loss": mine, "champion_loss": champ,
                                "verdict": pair.verdict, "metric": self.config.metric}
        return out

    def to_state(self) -> dict[str, Any]:
        """Pairings and seat totals (the drift detector restarts empty after a restore)."""
        return {"pairs": {k: asdict(v) for k, v in self.pairs.items()},
                "seat_n": self.seat_n, "seat_loss": self.seat_loss, "labels_seen": self.labels_seen}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.pairs = {k: Pairing(**v) for k, v in state.get("pairs", {}).items()}
        self.seat_n = int(state.get("seat_n", 0))
        self.seat_loss = float(state.get("seat_loss", 0.0))
        self.labels_seen = int(state.get("labels_seen", 0))


def rollback_candidates(timeline: Sequence[Sequence[Any]], window: Sequence[Labelled],
                        min_labels: int = 20, limit: int = 5) -> list[tuple[str, list[Labelled]]]:
    """Earlier champion versions to roll back to, newest first, each with its fair labels.

    ``timeline`` lists ``(version, labels seen when it became champion)`` in order.
    Candidates precede the earliest version that decided the later half of ``window``;
    each comes with the window's labels it never learned from (at least ``min_labels``).

    >>> timeline = [("lr-1", 0), ("lr-2", 10), ("x-3", 30)]
    >>> window = [([], 0, 0.9, "x-3", i) for i in range(25, 60)]
    >>> [(v, len(s)) for v, s in rollback_candidates(timeline, window)]
    [('lr-2', 35), ('lr-1', 35)]
    """
    late = {w[3] for w in window[len(window) // 2:]}
    positions = [i for i, (version, _) in enumerate(timeline) if version in late]
    if not positions:
        return []
    out: list[tuple[str, list[Labelled]]] = []
    seen = set(late)
    for version, labels_at in reversed(timeline[: min(positions)]):
        if version in seen:
            continue
        seen.add(version)
        fair = [w for w in window if w[4] > labels_at]
        if len(fair) >= min_labels:
            out.append((version, fair))
        if len(out) == limit:
            break
    return out


def compare_on(window: Sequence[Labelled], model: Any, metric: str) -> tuple[float, float]:
    """(loss of ``model`` scored now, loss of the recorded champion scores) on ``window``."""
    features = np.asarray([w[0] for w in window], dtype=np.float64)
    labels = np.asarray([w[1] for w in window])
    recorded = np.asarray([w[2] for w in window])
    mine = losses(metric, labels, model.score_batch(features))
    theirs = losses(metric, labels, recorded)
    n, frauds = len(labels), int(labels.sum())
    fraud = labels == 1
    return (balanced_mean(float(mine.sum()), float(mine[fraud].sum()), n, frauds),
            balanced_mean(float(theirs.sum()), float(theirs[fraud].sum()), n, frauds))
