"""The model a worker scores with, and the immutable version id of its current state.

A version names one exact model state: ``<lineage>-<sequence>``, where the lineage
says which model it is (``lr``, ``lr-fast`` ...) and the sequence is allocated by
the one learner from a single counter, so ids are unique, never reused and sort in
publication order. Every decision records the version that made it.

The handle also remembers which *seat* it follows: the seat is the registry's
record of who is champion (see :mod:`flagstream.scoring.registry`); its ``epoch`` grows on
every promotion or rollback, and ``seat`` is that change's id.

>>> handle = ModelHandle(LinearChampion(), name="lr")
>>> handle.version
'lr-000000'
>>> handle.publish()
'lr-000001'
>>> parse_version("lr-fast-000042")
('lr-fast', 42)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from flagstream.scoring.binned import BinnedLogistic
from flagstream.scoring.linear import LinearChampion


class OnlineModel(Protocol):
    """What the scorer and the learner need from a model (``LinearChampion`` has it all)."""

    kind: str

    def learn_one(self, features: np.ndarray, label: int) -> None: ...

    def learn_many(self, matrix: np.ndarray, labels: np.ndarray) -> None: ...

    def score_batch(self, matrix: np.ndarray) -> np.ndarray: ...

    def contributions(self, matrix: np.ndarray) -> np.ndarray: ...

    def to_state(self) -> dict[str, Any]: ...


#: Model kinds that can be rebuilt from JSON state (``state["kind"]`` → class).
MODEL_KINDS: dict[str, Any] = {LinearChampion.kind: LinearChampion, BinnedLogistic.kind: BinnedLogistic}


#: Each kind's lineage when it is the starting champion (``<lineage>-000000`` until the
#: learner publishes a version).
LINEAGES: dict[str, str] = {LinearChampion.kind: "lr", BinnedLogistic.kind: "gam"}
#: The kind a worker and a backtest start with (``FLAGSTREAM_MODEL``, ``--model``): the binned
#: model caught more fraud at the same false alarms on every stream measured (README).
DEFAULT_KIND = BinnedLogistic.kind


def new_model(kind: str = DEFAULT_KIND, learning_rate: float | None = None, **params: Any) -> Any:
    """A fresh model of ``kind``; ``learning_rate`` None means the kind's own default.

    >>> new_model("linear").learning_rate, new_model("binned").learning_rate
    (0.005, 0.2)
    >>> new_model("binned", 0.1, fraud_weight=2.0).fraud_weight
    2.0
    >>> new_model("forest")
    Traceback (most recent call last):
    ...
    ValueError: unknown model kind 'forest'; known: ['binned', 'linear']
    """
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; known: {sorted(MODEL_KINDS)}")
    if learning_rate is not None:
        params["learning_rate"] = learning_rate
    return MODEL_KINDS[kind](**params)


def model_from_state(state: dict[str, Any]) -> Any:
    """Rebuild a model from its JSON state; unknown kinds are refused.

    >>> model_from_state(LinearChampion(learning_rate=0.2).to_state()).learning_rate
    0.2
    """
    kind = state.get("kind") if isinstance(state, dict) else None
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; known: {sorted(MODEL_KINDS)}")
    return MODEL_KINDS[kind].from_state(state)


def format_version(name: str, sequence: int) -> str:
    """``name-NNNNNN``: sorts in publication order and reads well in a log."""
    return f"{name}-{sequence:06d}"


def parse_version(version: str) -> tuple[str, int]:
    """``(lineage, sequence)`` of a version id; ValueError if it is not one."""
    lineage, _, number = version.rpartition("-")
    if not lineage or not number.isdigit():
        raise ValueError(f"not a version id: {version!r} (expected e.g. 'lr-000042')")
    return lineage, int(number)


@dataclass
class ModelHandle:
    """A model plus its version; ``publish`` gives the current state a new id.

    Parameters
    ----------
    model
        The model (``score_batch``/``contributions`` for the scorer, ``learn_one`` for the learner).
    name
        Its lineage.
    sequence
        Sequence of the version it holds (0: an unpublished initial model).
    epoch, seat
        The registry seat change this handle follows (0 and "" before any).
    """

    model: OnlineModel
    name: str = "lr"
    sequence: int = 0
    history: list[str] = field(default_factory=list)
    epoch: int = 0
    seat: str = ""

    @property
    def version(self) -> str:
        return format_version(self.name, self.sequence)

    def publish(self) -> str:
        """Mark the model's current state as a new version and return its id."""
        self.sequence += 1
        self.history.append(self.version)
        del self.history[:-1000]
        return self.version

    def adopt(self, model: Any, name: str, sequence: int, epoch: int | None = None,
              seat: str | None = None) -> str:
        """Switch to another version (a hot swap, a promotion or a rollback); its id."""
        self.model, self.name, self.sequence = model, name, sequence
        if epoch is not None:
            self.epoch = epoch
        if seat is not None:
            self.seat = seat
        self.history.append(self.version)
        del self.history[:-1000]
        return self.version
