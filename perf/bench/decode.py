"""``python -m flagstream.perf decode``: the transaction decoder, batch path against the reference.

Both paths validate the same batches of wire records, the ones the ``compare`` benchmark
produces (a simulated stream, ground truth stripped): ``validate_transactions`` (orjson for
every value, msgspec's typed check, numpy timestamps) and ``validate_transactions_reference``
(orjson plus Python checks, one record at a time). Each repeat times every batch with one
path and then the other; the report gives the median over repeats of the CPU and wall
microseconds per record, and the ratio reference / batch. A second workload has a share of
bad records mixed in (the batch path hands those to the per-record checks). A third row
measures the same way one step of decision building, the context fields copied from each
record onto its decision (``copy_context`` against ``copy_context_reference``); a fourth, the
reasons a decision carries when it is not an approval (``explain_rows`` of a step's rows
against ``explain`` row by row, every row explained: features and contributions of a
champion trained on the stream's first records, the collector tuned as the worker tunes
it). No machine is quiet enough for a timed assertion: this prints numbers, nothing fails
on them.

>>> values = sample_values(Path("/nonexistent"), 0) or [b'{"transaction_id": "t-1"}'] * 40
>>> report = measure(values, batch=20, repeats=1)
>>> sorted(report["reference"]), report["records"], report["agree"]
(['cpu_us', 'wall_us'], 40, True)
>>> measure_context(values, batch=20, repeats=1)["agree"]
True
>>> import numpy as np
>>> measure_reasons(np.ones((40, 29)), np.linspace(-1, 1, 40 * 29).reshape(40, 29), 20, 1)["agree"]
True
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Sequence
from itertools import islice
from pathlib import Path

import numpy as np

from flagstream.codec import dumps
from flagstream.perf.bench.harness import Options
from flagstream.perf.bench.workload import encode, ensure_stream, train_champion
from flagstream.scoring.handle import ModelHandle, model_from_state
from flagstream.scoring.reasons import explain, explain_rows
from flagstream.simulation.simulator import read_stream
from flagstream.streams.core import ScoringCore, copy_context, copy_context_reference
from flagstream.streams.process_tuning import tune_gc
from flagstream.streams.schema import TransactionBatch, validate_transactions, validate_transactions_reference

#: Records the reasons row's champion is trained on (before the rows it explains).
REASONS_TRAIN = 10_000

#: What a share of bad records looks like: each a refusal of a different kind.
BAD_RECORDS = (
    b'{"transaction_id": "t-x", "account_id": "c-1"}',
    b'{"transaction_id": "t-x", "account_id": "c-1", "merchant_id": "m-1", "amount": -1,'
    b' "timestamp": "2018-04-01T00:07:56Z"}',
    b"not json",
    b'{"transaction_id": "t-x", "account_id": "c-1", "merchant_id": "m-1", "amount": 5,'
    b' "timestamp": "2018-04-01 00:07"}',
)


def sample_values(path: Path, count: int) -> list[bytes]:
    """The first ``count`` records of the stream at ``path`` as wire values ([] if missing)."""
    if not path.exists():
        return []
    records = [rec for _, rec in islice(read_stream(path, on_error="skip"), count)]
    return [r.value for r in encode(records, 1)]


def with_bad_records(values: Sequence[bytes], share: float) -> list[bytes]:
    """``values`` with every ``1/share``-th one replaced by a bad record."""
    step = max(1, round(1 / share)) if share > 0 else len(values) + 1
    return [BAD_RECORDS[(i // step) % len(BAD_RECORDS)] if i % step == step - 1 else v
            for i, v in enumerate(values)]


def _same(a: TransactionBatch, b: TransactionBatch) -> bool:
    return (a.indices == b.indices and a.records == b.records and a.rejections == b.rejections
            and a.amounts.tolist() == b.amounts.tolist()
            and a.timestamps_ms.tolist() == b.timestamps_ms.tolist())


def _timed(validate: Callable[[Sequence[bytes]], TransactionBatch], batches: list[list[bytes]]) -> tuple[
        float, float]:
    gc.collect()  # (neither path pays for the other's garbage)
    cpu, wall = time.process_time(), time.perf_counter()
    for batch in batches:
        validate(batch)
    return time.process_time() - cpu, time.perf_counter() - wall


def measure(values: Sequence[bytes], batch: int = 1_000, repeats: int = 7) -> dict:
    """Median CPU and wall µs per record of both paths over ``values`` cut into batches."""
    batches = [list(values[i : i + batch]) for i in range(0, len(values), batch)]
    agree = all(_same(validate_transactions(b), validate_transactions_reference(b)) for b in batches)
    paths = {"reference": validate_transactions_reference, "batch": validate_transactions}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in paths}
    for _ in range(repeats):
        for name, validate in paths.items():
            times[name].append(_timed(validate, batches))
    return _report(times, len(values), batch, repeats, agree)


def measure_context(values: Sequence[bytes], batch: int = 1_000, repeats: int = 7) -> dict:
    """The same report for the decision step that copies context fields (currency, channel,
    country) from records onto decisions: ``copy_context`` against its per-record reference."""
    records = [r for i in range(0, len(values), batch)
               for r in validate_transactions(values[i : i + batch]).records]
    groups = [records[i : i + batch] for i in range(0, len(records), batch)]
    fresh = [[{"transaction_id": r["transaction_id"]} for r in g] for g in groups]
    paths = {"reference": copy_context_reference, "batch": copy_context}
    out = {name: [[dict(d) for d in g] for g in fresh] for name in paths}
    for name, copy in paths.items():
        for decisions, g in zip(out[name], groups, strict=True):
            copy(decisions, g)
    agree = [dumps(d) for g in out["batch"] for d in g] == [dumps(d) for g in out["reference"] for d in g]
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in paths}
    for _ in range(repeats):
        for name, copy in paths.items():
            work = [[dict(d) for d in g] for g in fresh]
            gc.collect()
            cpu, wall = time.process_time(), time.perf_counter()
            for decisions, g in zip(work, groups, strict=True):
                copy(decisions, g)
            times[name].append((time.process_time() - cpu, time.perf_counter() - wall))
    return _report(times, len(records), batch, repeats, agree)


def measure_reasons(features: np.ndarray, contributions: np.ndarray, batch: int = 1_000,
                    repeats: int = 7) -> dict:
    """The same report for the reasons of a step's decisions: ``explain_rows`` of each batch
    of rows against ``explain`` of one row at a time (per row explained)."""
    groups = [(features[i : i + batch], contributions[i : i + batch]) for i in range(0, len(features), batch)]
    paths: dict[str, Callable[[np.ndarray, np.ndarray], list]] = {
        "reference": lambda rows, pushes: [explain(r, c) for r, c in zip(rows, pushes, strict=True)],
        "batch": explain_rows,
    }
    agree = all(paths["reference"](*g) == paths["batch"](*g) for g in groups)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in paths}
    thresholds = gc.get_threshold()
    tune_gc()  # (as the worker, once ready: young collections rare, what was alive frozen)
    try:
        for _ in range(repeats):
            for name, explain_step in paths.items():
                cpu, wall = time.process_time(), time.perf_counter()
                for rows, pushes in groups:
                    explain_step(rows, pushes)
                times[name].append((time.process_time() - cpu, time.perf_counter() - wall))
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
    return _report(times, len(features), batch, repeats, agree)


def scored_rows(path: Path, train: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Features of ``count`` records of the stream at ``path`` after the first ``train``, as the
    core computes them, and their contributions to the score of a champion trained on those
    first ``train`` (the benchmark's champion)."""
    records = [rec for _, rec in islice(read_stream(path, on_error="skip"), train + count)]
    head = records[:train]
    core = ScoringCore(ModelHandle(model_from_state(
        train_champion(head, [int(r.get("is_fraud", 0)) for r in head], Options().fraud_weight))))
    values = [r.value for r in encode(records[train:], 1)]
    features = np.concatenate([core.process(values[i : i + 1_000]).features
                               for i in range(0, len(values), 1_000)])
    return features, core.handle.model.contributions(features)


def _report(times: dict[str, list[tuple[float, float]]], n: int, batch: int, repeats: int,
            agree: bool) -> dict:
    report: dict = {"records": n, "batch_size": batch, "repeats": repeats, "agree": agree}
    for name, spent in times.items():
        report[name] = {
            "cpu_us": statistics.median(t[0] for t in spent) / max(n, 1) * 1e6,
            "wall_us": statistics.median(t[1] for t in spent) / max(n, 1) * 1e6,
        }
    report["ratio"] = report["reference"]["cpu_us"] / max(report["batch"]["cpu_us"], 1e-9)
    return report


def run(stream: str | None, out_dir: str, records: int, batch: int, repeats: int,
        bad_share: float) -> dict:
    """Both decoding workloads (clean, and with ``bad_share`` bad records) on the benchmark's
    stream, and the decisions' context copy and reasons on the clean one."""
    path = ensure_stream(stream, Path(out_dir), records + REASONS_TRAIN)
    values = sample_values(path, records + REASONS_TRAIN)
    # (a stream given, or the reference one, may be shorter: the reasons row then trains on
    # half of what there is and explains the rest, and says how many rows it explained)
    train = min(REASONS_TRAIN, len(values) // 2)
    report = {"clean": measure(values[:records], batch, repeats),
              f"bad_{bad_share:g}": measure(with_bad_records(values[:records], bad_share), batch, repeats),
              "context": measure_context(values[:records], batch, repeats)}
    if len(values) - train > 0 and train > 0:
        report["reasons"] = measure_reasons(*scored_rows(path, train, min(records, len(values) - train)),
                                            batch, repeats)
    return report


def table(report: dict) -> str:
    """The report as text: one line per workload."""
    lines = [f"{'workload':10} {'records':>8} {'batch':>6} {'reference µs/rec':>17} "
             f"{'batch µs/rec':>13} {'ratio':>6} {'agree':>6}   (CPU; wall in brackets)"]
    for name, r in report.items():
        ref, new = r["reference"], r["batch"]
        lines.append(
            f"{name:10} {r['records']:>8} {r['batch_size']:>6} "
            f"{ref['cpu_us']:>6.2f} [{ref['wall_us']:>6.2f}]   "
            f"{new['cpu_us']:>5.2f} [{new['wall_us']:>5.2f}] "
            f"{r['ratio']:>6.2f} {str(r['agree']):>6}"
        )
    return "\n".join(lines)
