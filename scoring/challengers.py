"""Shadow challengers: score the champion's events, learn its labels, decide nothing.

Where they run: in the learner role, on the decisions the scorers publish on
``scores``. Each decision carries the features the champion saw, so the learner
scores every challenger on exactly the same events without touching the hot path,
and stores the challengers' probabilities on the recorded decision under
``decision["shadow"][lineage]``, beside the champion's own ``score``. When the label
arrives (later), the gate compares both on it: prequential, since every score was
made before its label was known. Challengers learn from the same labels as the
champion, through their own model objects, so they can never change the champion.

Which events: a challenger with ``cutoff`` 0 scores every event (the built-in ones:
:class:`~flagstream.scoring.linear.LinearChampion` variants, vectorized, microseconds per
batch). A heavy model (a tree ensemble, say) would be given a cutoff such as 0.05:
it then scores only the suspicious fraction (champion score >= cutoff) and takes
the champion's score elsewhere, i.e. it is judged as the two-stage cascade it would
be in production (principle 4 in ARCHITECTURE.md).

Built-in challengers come from ``FLAGSTREAM_CHALLENGERS``: ``name:param=value,...``
entries separated by ``;`` (parameters of ``LinearChampion`` plus ``cutoff``); an
empty value means none. Submitted candidates join the same set (see the registry).

>>> import numpy as np
>>> from flagstream.features.layout import N_FEATURES
>>> from flagstream.scoring.linear import LinearChampion
>>> shadow = ShadowSet(challengers_from_spec("fast:learning_rate=0.5", LinearChampion()))
>>> for _ in range(50):
...     shadow.learn_one(np.full(N_FEATURES, 5.0), 1)
>>> decisions = [{"score": 0.01, "features": [5.0] * N_FEATURES}]
>>> shadow.annotate(decisions)
1
>>> decisions[0]["shadow"]["fast"] > 0.9
True
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from flagstream.codec import JSONDecodeError, loads
from flagstream.errors import InvalidRecord
from flagstream.features.layout import EARLIER_FEATURE_COUNTS, N_FEATURES
from flagstream.scoring.feedback import check_decision
from flagstream.scoring.handle import format_version, model_from_state, new_model

#: Used when ``FLAGSTREAM_CHALLENGERS`` is not set: none. Variants of the champion with
#: another calibration (a faster rate, a heavier fraud weight) won the gate on the demo
#: stream and then flagged worse: measure a challenger in a backtest before running it.
DEFAULT_CHALLENGERS = ""
#: Two linear variants, a spec for trying the gate (``FLAGSTREAM_CHALLENGERS``).
EXAMPLE_CHALLENGERS = "lr-fast:learning_rate=0.2;lr-weighted:fraud_weight=5.0"


@dataclass
class Challenger:
    """One shadow model: its lineage, model, and its latest published version.

    Parameters
    ----------
    lineage
        The model's name; its versions are ``<lineage>-<sequence>``.
    model
        The model object (``learn_one``/``score_batch``/``to_state``).
    sequence
        Sequence of its latest published version (0: never published).
    cutoff
        Only events whose champion score is at least this are scored by the model.
    origin
        ``builtin``, ``candidate`` (submitted through the registry) or ``demoted``
        (a former champion).
    dirty
        Learned since its last publication.
    """

    lineage: str
    model: Any
    sequence: int = 0
    cutoff: float = 0.0
    origin: str = "builtin"
    dirty: bool = True

    @property
    def version(self) -> str | None:
        return format_version(self.lineage, self.sequence) if self.sequence else None

    def to_state(self) -> dict[str, Any]:
        return {
            "lineage": self.lineage, "sequence": self.sequence, "cutoff": self.cutoff,
            "origin": self.origin, "dirty": self.dirty, "state": self.model.to_state(),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Challenger:
        return cls(
            state["lineage"], model_from_state(state["state"]), int(state["sequence"]),
            float(state.get("cutoff", 0.0)), state.get("origin", "builtin"),
            bool(state.get("dirty", False)),
        )


def parse_spec(text: str) -> list[tuple[str, dict[str, Any]]]:
    """``"a:learning_rate=0.2;b:l2=0.001"`` → ``[("a", {...}), ("b", {...})]``.

    Values are numbers, except ``model``, which names a model kind.

    >>> parse_spec("lr-fast:learning_rate=0.2; plain; lin:model=linear")
    [('lr-fast', {'learning_rate': 0.2}), ('plain', {}), ('lin', {'model': 'linear'})]
    """
    out = []
    for entry in filter(None, (e.strip() for e in text.split(";"))):
        name, _, params = entry.partition(":")
        values: dict[str, Any] = {}
        for item in filter(None, (p.strip() for p in params.split(","))):
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"challenger {name!r}: expected param=value, got {item!r}")
            key = key.strip()
            values[key] = value.strip() if key == "model" else float(value)
        out.append((name.strip(), values))
    return out


def challengers_from_spec(text: str, base: Any) -> list[Challenger]:
    """Challengers of ``base``'s kind and hyperparameters, with the spec's overrides.

    ``model=<kind>`` makes another kind with the same shared hyperparameters (its own
    default learning rate unless the spec sets one).

    >>> from flagstream.scoring.linear import LinearChampion
    >>> [c.model.kind for c in challengers_from_spec("a:learning_rate=0.1;b:model=binned", LinearChampion())]
    ['linear', 'binned']
    """
    params = base.to_state()["params"]
    out = []
    for name, overrides in parse_spec(text):
        cutoff = float(overrides.pop("cutoff", 0.0))
        kind = overrides.pop("model", base.kind)
        unknown = set(overrides) - set(params)
        if unknown:
            raise ValueError(f"challenger {name!r}: unknown parameters {sorted(unknown)}")
        merged = {**params, **overrides}
        if kind != base.kind and "learning_rate" not in overrides:
            del merged["learning_rate"]  # a rate means something else in another kind
        merged["seed"] = int(merged["seed"])
        out.append(Challenger(name, new_model(kind, **merged), cutoff=cutoff))
    return out


def new_lineages(configured: Sequence[Challenger], known: Iterable[str]) -> list[Challenger]:
    """The configured challengers whose lineage this learner has never had.

    A learner restored from a snapshot has the challengers it had then; a challenger added
    to ``FLAGSTREAM_CHALLENGERS`` since joins them. A lineage seen before (the champion, a
    shadow, a demoted or retired version) keeps what the learner decided about it.

    >>> from flagstream.scoring.linear import LinearChampion
    >>> configured = challengers_from_spec("a:learning_rate=0.1;b:model=binned", LinearChampion())
    >>> [c.lineage for c in new_lineages(configured, ["lr", "a"])]
    ['b']
    """
    seen = set(known)
    return [c for c in configured if c.lineage not in seen]


def parse_decision(value: bytes | None) -> dict | bytes | None:
    """A recorded decision as a dict when it can be shadow-scored, else the raw value.

    >>> parse_decision(b'{"score": 0.1, "features": [0.0]}')
    b'{"score": 0.1, "features": [0.0]}'
    >>> from flagstream.codec import dumps
    >>> sorted(parse_decision(dumps({"score": 0.1, "features": [0.0] * N_FEATURES, "merchant_id": "m",
    ...                              "event_time_ms": 0, "scored_at_ms": 0})))
    ['event_time_ms', 'features', 'merchant_id', 'score', 'scored_at_ms']
    """
    try:
        return check_decision(loads(value) if value is not None else None, N_FEATURES, EARLIER_FEATURE_COUNTS)
    except (JSONDecodeError, InvalidRecord):  # not ours to judge here: kept as it came
        return value


class ShadowSet:
    """The challengers of one learner, keyed by lineage.

    Parameters
    ----------
    challengers
        Initial challengers.
    """

    def __init__(self, challengers: Sequence[Challenger] = ()) -> None:
        self.challengers: dict[str, Challenger] = {c.lineage: c for c in challengers}

    def __iter__(self) -> Iterator[Challenger]:
        return iter(list(self.challengers.values()))

    def __len__(self) -> int:
        return len(self.challengers)

    def __contains__(self, lineage: object) -> bool:
        return lineage in self.challengers

    def names(self) -> list[str]:
        return list(self.challengers)

    def get(self, lineage: str) -> Challenger | None:
        return self.challengers.get(lineage)

    def add(self, challenger: Challenger) -> None:
        self.challengers[challenger.lineage] = challenger

    def remove(self, lineage: str) -> Challenger | None:
        return self.challengers.pop(lineage, None)

    def scores(self, features: np.ndarray, champion: np.ndarray) -> dict[str, np.ndarray]:
        """Each challenger's probabilities for a raw feature matrix (cascade below cutoffs)."""
        out = {}
        for c in self:
            if c.cutoff <= 0.0:
                out[c.lineage] = c.model.score_batch(features)
                continue
            scores = np.array(champion, dtype=np.float64, copy=True)
            rows = np.flatnonzero(champion >= c.cutoff)
            if len(rows):
                scores[rows] = c.model.score_batch(features[rows])
            out[c.lineage] = scores
        return out

    def annotate(self, decisions: Sequence[dict], features: np.ndarray | None = None) -> int:
        """Record every challenger's score on each decision (``decision["shadow"]``).

        ``features`` defaults to the decisions' own ``features`` lists. Returns how
        many decisions were annotated (0 when there are no challengers).
        """
        if not self.challengers or not decisions:
            return 0
        if features is None:
            features = np.asarray([d["features"] for d in decisions], dtype=np.float64)
        champion = np.asarray([d["score"] for d in decisions], dtype=np.float64)
        by_model = {k: np.round(v, 6).tolist() for k, v in self.scores(features, champion).items()}
        for i, decision in enumerate(decisions):
            decision["shadow"] = {k: v[i] for k, v in by_model.items()}
        return len(decisions)

    def learn_one(self, features: np.ndarray, label: int) -> None:
        """Every challenger learns one labelled example."""
        for c in self:
            c.model.learn_one(features, label)
            c.dirty = True

    def learn_many(self, matrix: np.ndarray, labels: np.ndarray) -> None:
        """Every challenger learns labelled rows in order (the same as one
        :meth:`learn_one` per row, through each model's batch learner)."""
        if len(labels) == 0:
            return
        for c in self:
            c.model.learn_many(matrix, labels)
            c.dirty = True

    def to_state(self) -> list[dict[str, Any]]:
        return [c.to_state() for c in self]

    @classmethod
    def from_state(cls, state: Sequence[Mapping[str, Any]]) -> ShadowSet:
        return cls([Challenger.from_state(s) for s in state])
