"""The model a worker scores with, and the immutable version id of its current state.

A version names one exact model state: it changes every time the learner publishes
an update, and every decision records the version that made it.

>>> handle = ModelHandle(LinearChampion(), name="lr")
>>> handle.version
'lr-000000'
>>> handle.publish()
'lr-000001'
"""

from __future__ import annotations

from dataclasses import dataclass, field

from scoring.linear import LinearChampion


def format_version(name: str, sequence: int) -> str:
    """``name-NNNNNN``: sorts in publication order and reads well in a log."""
    return f"{name}-{sequence:06d}"


@dataclass
class ModelHandle:
    """A model plus its version; ``publish`` gives the current state a new id."""

    model: LinearChampion
    name: str = "lr"
    sequence: int = 0
    history: list[str] = field(default_factory=list)

    @property
    def version(self) -> str:
        return format_version(self.name, self.sequence)

    def publish(self) -> str:
        """Mark the model's current state as a new version and return its id."""
        self.sequence += 1
        self.history.append(self.version)
        return self.version
