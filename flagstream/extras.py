"""Optional parts: plotting and progress bars (``pip install 'flagstream[report]'``) and the
batch model of ``flagstream compare-batch`` (``pip install 'flagstream[batch]'``).

The worker never needs them. A command that does checks for them when it starts,
before any work, and stops with a message that says what to install: never a
silent fallback halfway through a long run.

>>> require("json", "a test")  # present: nothing happens
>>> require("no_such_module_here", "the report")
Traceback (most recent call last):
...
flagstream.extras.MissingExtra: the report needs no_such_module_here: pip install 'flagstream[report]'
>>> require("no_such_module_here", "the batch model", "batch")
Traceback (most recent call last):
...
flagstream.extras.MissingExtra: the batch model needs no_such_module_here: pip install 'flagstream[batch]'
>>> with progress_bar(3, "tx", enabled=False) as bar:
...     bar.update(3)
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flagstream.errors import FlagstreamError


class MissingExtra(FlagstreamError, ImportError):
    """An optional dependency a command needs is not installed."""


def require(module: str, feature: str, extra: str = "report") -> None:
    """Raise :class:`MissingExtra` unless ``module`` can be imported (``extra``: the
    optional part of flagstream that installs it)."""
    if importlib.util.find_spec(module) is None:
        raise MissingExtra(f"{feature} needs {module}: pip install 'flagstream[{extra}]'")


class _NoBar:
    def update(self, n: int = 1) -> None:
        """Nothing to draw."""


@contextmanager
def progress_bar(total: int | None, unit: str, enabled: bool) -> Iterator[Any]:
    """A tqdm bar on stderr when ``enabled`` (tqdm then required), else one that draws nothing."""
    if not enabled:
        yield _NoBar()
        return
    require("tqdm", "a progress bar")
    from tqdm import tqdm

    with tqdm(total=total, unit=unit, unit_scale=True, file=sys.stderr) as bar:
        yield bar
