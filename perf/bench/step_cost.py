"""``python -m flagstream.perf steps``: what one call of the scoring core costs, by step size.

At a thousand API calls a second a worker's steps hold one or two records, so the core's
fixed cost per call (numpy and Numba call overheads on tiny arrays) matters as much as its
cost per record. This trains the benchmark's champion on the first ``train`` records of the
stream (as ``compare`` does), then feeds the following records to one
:class:`~flagstream.streams.core.ScoringCore` in steps of each size, the way a worker would
(source offsets given), and reports the median over repeats of the CPU microseconds per
call and per record. No machine is quiet enough for a timed assertion: this prints numbers.

>>> values = [b'{"transaction_id": "t-%d", "account_id": "c-%d", "merchant_id": "m-1",'
...           b' "amount": 5.0, "timestamp": "2018-04-01T00:07:56Z"}' % (i, i % 7) for i in range(40)]
>>> report = measure(ScoringCore(), values, sizes=(1, 4), calls=5, repeats=1)
>>> sorted(report), sorted(report[1])
([1, 4], ['calls', 'us_per_call', 'us_per_record'])
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Sequence
from itertools import islice
from pathlib import Path

from flagstream.perf.bench.harness import Options
from flagstream.perf.bench.workload import encode, ensure_stream, train_champion
from flagstream.scoring.handle import ModelHandle, model_from_state
from flagstream.simulation.simulator import read_stream
from flagstream.streams.core import ScoringCore


def measure(core: ScoringCore, values: Sequence[bytes], sizes: Sequence[int] = (1, 2, 4, 64),
            calls: int = 2_000, repeats: int = 5) -> dict[int, dict[str, float]]:
    """CPU µs per call and per record of ``core.process`` in steps of each size (medians).

    Each repeat of each size scores fresh records (``values`` wraps around: a record seen
    again is a duplicate, refused cheaply, so give enough values for the run)."""
    out: dict[int, dict[str, float]] = {}
    position = 0
    for size in sizes:
        per_call = []
        for _ in range(repeats):
            steps = []
            for _ in range(calls):
                start = position % max(1, len(values) - size)
                steps.append((list(values[start:start + size]), list(range(position, position + size))))
                position += size
            gc.collect()
            began = time.process_time()
            for step, offsets in steps:
                core.process(step, offsets)
            per_call.append((time.process_time() - began) / calls * 1e6)
        median = statistics.median(per_call)
        out[size] = {"calls": calls, "us_per_call": round(median, 1),
                     "us_per_record": round(median / size, 2)}
    return out


def run(stream: str | None, out_dir: str, train: int, sizes: Sequence[int], calls: int,
        repeats: int) -> dict[int, dict[str, float]]:
    """Train the benchmark's champion, then :func:`measure` a core that scores with it."""
    needed = train + sum(sizes) * calls * (repeats + 1)
    path = ensure_stream(stream, Path(out_dir), needed)
    records = [rec for _, rec in islice(read_stream(path, on_error="skip"), needed)]
    head = records[:train]
    state = train_champion(head, [int(r.get("is_fraud", 0)) for r in head], Options().fraud_weight)
    core = ScoringCore(ModelHandle(model_from_state(state)))
    values = [r.value for r in encode(records[train:], 1)]
    measure(core, values, sizes=sizes[:1], calls=min(calls, 200), repeats=1)  # warm up: compile, caches
    return measure(core, values, sizes, calls, repeats)


def table(report: dict[int, dict[str, float]]) -> str:
    lines = [f"{'records/step':>12} {'µs/call':>9} {'µs/record':>10}"]
    for size, row in report.items():
        lines.append(f"{size:>12} {row['us_per_call']:>9.1f} {row['us_per_record']:>10.2f}")
    return "\n".join(lines)
