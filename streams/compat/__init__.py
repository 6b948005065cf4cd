"""The one place flagstream touches private names of Faust, aiokafka and prometheus-client.

:mod:`.faust_consumer` changes how Faust's consumer hands fetched records to an agent
(whole chunks); :mod:`.internals` wraps every other private attribute in one small
function. Both were written and tested against the versions in :data:`SUPPORTED`;
:func:`check_versions` runs when a worker starts and refuses any other version with
a message that says what to install. A test (``tests/test_import_rules.py``) fails
when a private attribute of another object is read outside this package.

>>> check_versions()  # the versions installed by ``pip install flagstream``
>>> problems({"faust-streaming": "0.16.0"})
['faust-streaming 0.16.0 is not supported (tested: ==0.15.3); install faust-streaming==0.15.3']
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version

from flagstream.errors import FlagstreamError

#: distribution → (lowest supported, first unsupported); equal bounds mean exactly that one.
SUPPORTED: dict[str, tuple[str, str]] = {
    "faust-streaming": ("0.15.3", "0.15.3"),
    "mode-streaming": ("0.4.0", "0.8.0"),
    "aiokafka": ("0.12.0", "0.15.0"),
    "prometheus-client": ("0.20.0", "1.0.0"),
    "rocksdict": ("0.3.20", "0.4.0"),
}


class UnsupportedVersion(FlagstreamError, RuntimeError):
    """A library whose internals flagstream relies on is at a version it was not tested with."""


def _as_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit()) or "0"
        parts.append(int(digits))
        if not piece.isdigit():
            break
    return tuple(parts)


def _wanted(low: str, high: str) -> str:
    return f"=={low}" if low == high else f">={low},<{high}"


def problems(installed: Mapping[str, str] | None = None) -> list[str]:
    """What is wrong with the installed versions (empty when every one is supported)."""
    found = []
    for dist, (low, high) in SUPPORTED.items():
        if installed is not None:
            if dist not in installed:
                continue
            have = installed[dist]
        else:
            try:
                have = version(dist)
            except PackageNotFoundError:
                found.append(f"{dist} is not installed; install {dist}{_wanted(low, high)}")
                continue
        ok = (_as_tuple(have) == _as_tuple(low)) if low == high else (
            _as_tuple(low) <= _as_tuple(have) < _as_tuple(high))
        if not ok:
            found.append(f"{dist} {have} is not supported (tested: {_wanted(low, high)}); "
                         f"install {dist}{_wanted(low, high)}")
    return found


def check_versions() -> None:
    """Raise :class:`UnsupportedVersion` unless every library in :data:`SUPPORTED` fits."""
    found = problems()
    if found:
        raise UnsupportedVersion("; ".join(found))
