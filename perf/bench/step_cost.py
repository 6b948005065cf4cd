"""``python -m flagstream.perf steps``: what one call of the scoring core costs, by step size.

At a thousand API calls a second a worker's steps hold one or two records, so the core's
fixed cost per call (numpy and Numba call overheads on tiny arrays) matters as much as its
cost per record. This trains the benchmark's champion on the first ``train`` records of the
stream (as ``compare`` does), then feeds the following records to one
:class:`~flagstream.streams.core.ScoringCore` in steps of each size, the way a worker would
(source offsets given), and reports the median over repeats of the CPU microseconds per
call and per record. With ``partitions``, it also measures each step as a worker's step
over that many partitions: every record told its account's partition, in one call (what a
worker does) and in one call per partition the step touches (what it did before session 19).
No machine is quiet enough for a timed assertion: this prints numbers.

>>> values = [b'{"transaction_id": "t-%d", "account_id": "c-%d", "merchant_id": "m-1",'
...           b' "amount": 5.0, "timestamp": "2018-04-01T00:07:56Z"}' % (i, i % 7) for i in range(40)]
>>> report = measure(ScoringCore(), values, sizes=(1, 4), calls=5, repeats=1, partitions=4)
>>> sorted(report), sorted(report[4])
([1, 4], ['calls', 'us_per_call', 'us_per_record', 'us_per_step_by_partition', 'us_per_step_routed'])
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Sequence
from itertools import islice
from pathlib import Path

from flagstream.codec import loads
from flagstream.perf.bench.harness import Options
from flagstream.perf.bench.workload import encode, ensure_stream, train_champion
from flagstream.scoring.handle import ModelHandle, model_from_state
from flagstream.simulation.simulator import read_stream
from flagstream.streams.core import ScoringCore, partitions_for


def measure(core: ScoringCore, values: Sequence[bytes], sizes: Sequence[int] = (1, 2, 4, 64),
            calls: int = 2_000, repeats: int = 5,
            partitions: int | None = None) -> dict[int, dict[str, float]]:
    """CPU µs per call and per record of ``core.process`` in steps of each size (medians);
    with ``partitions``, also µs per step routed over them in one call and in one call per
    partition (see the module's docstring).

    Each repeat of each size scores fresh records (``values`` wraps around: a record seen
    again is a duplicate, refused cheaply, so give enough values for the run)."""
    homes = [] if partitions is None else partitions_for(
        [str(loads(v)["account_id"]) for v in values], partitions).tolist()
    out: dict[int, dict[str, float]] = {}
    position = 0
    for size in sizes:
        timings: dict[str, list[float]] = {"us_per_call": [], "us_per_step_routed": [],
                                           "us_per_step_by_partition": []}
        for _ in range(repeats):
            for way, timed in timings.items():
                if way != "us_per_call" and partitions is None:
                    continue
                calls_made: list[tuple] = []  # (each step's calls, built before the clock starts)
                for _ in range(calls):
                    start = position % max(1, len(values) - size)
                    step, offsets = values[start:start + size], list(range(position, position + size))
                    position += size
                    if way == "us_per_call":
                        calls_made.append((step, offsets, None, None))
                    elif way == "us_per_step_routed":
                        calls_made.append((step, offsets, homes[start:start + size], partitions))
                    else:
                        for home in dict.fromkeys(homes[start:start + size]):
                            mine = [i for i in range(size) if homes[start + i] == home]
                            calls_made.append(([step[i] for i in mine], [offsets[i] for i in mine],
                                               home, partitions))
                gc.collect()
                began = time.process_time()
                for args in calls_made:
                    core.process(*args)
                timed.append((time.process_time() - began) / calls * 1e6)
        out[size] = {"calls": calls}
        for way, timed in timings.items():
            if timed:
                out[size][way] = round(statistics.median(timed), 1)
        out[size]["us_per_record"] = round(out[size]["us_per_call"] / size, 2)
    return out


def run(stream: str | None, out_dir: str, train: int, sizes: Sequence[int], calls: int,
        repeats: int, partitions: int | None = 4) -> dict[int, dict[str, float]]:
    """Train the benchmark's champion, then :func:`measure` a core that scores with it."""
    ways = 1 if partitions is None else 3  # (each way scores fresh records)
    needed = train + sum(sizes) * calls * (ways * repeats + 1)
    path = ensure_stream(stream, Path(out_dir), needed)
    records = [rec for _, rec in islice(read_stream(path, on_error="skip"), needed)]
    head = records[:train]
    state = train_champion(head, [int(r.get("is_fraud", 0)) for r in head], Options().fraud_weight)
    core = ScoringCore(ModelHandle(model_from_state(state)))
    values = [r.value for r in encode(records[train:], 1)]
    measure(core, values, sizes=sizes[:1], calls=min(calls, 200), repeats=1)  # warm up: compile, caches
    return measure(core, values, sizes, calls, repeats, partitions)


def table(report: dict[int, dict[str, float]]) -> str:
    """The report as text: one row per step size (``-`` where not measured).

    >>> print(table({2: {"calls": 9, "us_per_call": 150.0, "us_per_record": 75.0}}))
    records/step   µs/call  µs/record  routed: one call  a call per partition
               2     150.0      75.00                 -                     -
    """
    lines = [f"{'records/step':>12} {'µs/call':>9} {'µs/record':>10} {'routed: one call':>17} "
             f"{'a call per partition':>21}"]
    for size, row in report.items():
        routed, split = (f"{row[k]:.1f}" if k in row else "-"
                         for k in ("us_per_step_routed", "us_per_step_by_partition"))
        lines.append(f"{size:>12} {row['us_per_call']:>9.1f} {row['us_per_record']:>10.2f} "
                     f"{routed:>17} {split:>21}")
    return "\n".join(lines)
