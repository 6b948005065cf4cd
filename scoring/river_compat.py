"""The one place flagstream touches a private name of River: restoring a linear model's weights.

River's linear models expose their weights read-only (``model.weights`` is a copy);
a snapshot can only be restored by writing the private ``_weights`` mapping. The
supported River version is pinned in ``pyproject.toml`` and checked here.

>>> from river import linear_model
>>> model = linear_model.LogisticRegression()
>>> set_weights(model, {"amount": 0.5})
>>> model.weights
{'amount': 0.5}
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import version
from typing import Any

from flagstream.errors import FlagstreamError

#: The River version whose internals this module was written and tested against.
SUPPORTED_RIVER = "0.26.1"


class UnsupportedRiver(FlagstreamError, RuntimeError):
    """River is at a version whose internals flagstream was not tested with."""


def check_river() -> None:
    """Raise :class:`UnsupportedRiver` unless River is the supported version."""
    have = version("river")
    if have != SUPPORTED_RIVER:
        raise UnsupportedRiver(f"river {have} is not supported; install river=={SUPPORTED_RIVER}")


def set_weights(model: Any, weights: Mapping[str, float]) -> None:
    """Set a River linear model's weights (by feature name)."""
    for name, w in weights.items():
        model._weights[name] = float(w)


check_river()
