"""Whether two ``flagstream backtest --json`` outputs agree on every result.

A speed-up of the backtest must not change a single figure: run it before and after, then

    python -m flagstream.perf.backtest_diff before.json after.json

prints the fields that differ (timing fields left out: ``wall_seconds``, ``load_seconds``,
``events_per_s``) and the two throughputs; the exit status is 1 when anything differs.

>>> differences({"auc": 0.9, "events_per_s": 1.0, "x": {"a": [1, 2]}},
...             {"auc": 0.9, "events_per_s": 2.0, "x": {"a": [1, 3]}})
['/x/a: [1, 2] != [1, 3]']
"""

from __future__ import annotations

import sys
from typing import Any

import orjson

#: Fields that measure the run, not its results.
TIMING = frozenset({"wall_seconds", "load_seconds", "events_per_s"})


def differences(before: Any, after: Any, path: str = "") -> list[str]:
    """Where ``after`` differs from ``before`` (exact equality; top-level timing fields left out)."""
    if isinstance(before, dict) and isinstance(after, dict):
        out = []
        for key in sorted(set(before) | set(after)):
            if not path and key in TIMING:
                continue
            if key not in before or key not in after:
                out.append(f"{path}/{key}: only in {'after' if key in after else 'before'}")
            else:
                out += differences(before[key], after[key], f"{path}/{key}")
        return out
    return [] if before == after else [f"{path}: {before!r} != {after!r}"]


def read(path: str) -> dict[str, Any]:
    """The JSON object a ``--json`` run printed (its last line that is one)."""
    with open(path, "rb") as f:
        lines = [line for line in f.read().splitlines() if line.startswith(b"{")]
    if not lines:
        raise SystemExit(f"{path}: no JSON object")
    return orjson.loads(lines[-1])


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m flagstream.perf.backtest_diff BEFORE.json AFTER.json", file=sys.stderr)
        return 2
    before, after = read(args[0]), read(args[1])
    found = differences(before, after)
    print("\n".join(found[:50]) if found else "identical on every result (timing fields left out)")
    print(f"events/s {before.get('events_per_s')} -> {after.get('events_per_s')}, "
          f"wall s {before.get('wall_seconds')} -> {after.get('wall_seconds')}")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
