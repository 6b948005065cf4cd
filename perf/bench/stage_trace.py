"""Where a decision's latency goes inside the worker: one timestamp per stage, per step.

``python -m flagstream.perf.bench.stage_trace`` runs the real scorer worker (``flagstream
worker --role scorer``) with a few wrappers installed around its stages, and appends one
JSON line per event to the file named by ``BENCH_STAGE_TRACE``:

* ``fetch``: the consumer thread's fetch returned (per topic-partition: first and last
  offset, the newest record's Kafka timestamp);
* ``deliver``: the drain loop handed a chunk to the stream (start and end: the end waits
  for the channel to have room, and for an inline commit when ``broker_commit_every``
  acks have piled up);
* ``step``: the agent took a step (its chunks), staged it (the core) and handed every
  output to the producer (``t_start``, ``t_sent``, ``t_put``: after waiting for a free
  completion slot);
* ``done``: the step's outputs acknowledged (``t_acked``), its account rows written
  (``t_rows``);
* ``commit``: a Faust offset commit (start and end), ``gc``: a garbage collection,
  ``lag``: the event loop came back more than 5 ms later than a timer asked.

The decisions' ``LogAppendTime`` on ``scores`` closes each record's path; joining the
two (:func:`breakdown`) says which stage the slow records spent their time in. This is
a diagnostic, not a contender: the wrappers cost a little, so its figures are not the
worker's.

>>> rows = [{"kind": "fetch", "t": 10.0, "tp": ["tx", 0], "first": 0, "last": 1},
...         {"kind": "step", "t_start": 10.002, "t_sent": 10.004, "t_put": 10.004,
...          "chunks": [["tx", 0, 0, 1]], "step": 1},
...         {"kind": "done", "step": 1, "t_acked": 10.009, "t_rows": 10.010}]
>>> b = breakdown(rows, {("tx", 0, 0): (9_998, 10_011), ("tx", 0, 1): (9_999, 10_011)})
>>> [round(x, 1) for x in b[0][1:]]
[2.0, 2.0, 2.0, 5.0, 2.0, 13.0]
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

_lock = threading.Lock()
_out: Any = None


def emit(row: dict) -> None:
    """Append one trace line (thread-safe: the consumer thread writes too)."""
    with _lock:
        if _out is not None:
            _out.write(orjson.dumps(row) + b"\n")


def install() -> None:
    """Wrap the worker's stages (call before the worker starts)."""
    from flagstream.streams import scorer_agent
    from flagstream.streams.compat import stage_hooks
    from flagstream.streams.faust_batches import ack_all, records_by_partition

    stage_hooks.install(emit)  # (Faust's consumer: fetch, deliver, wait, buffer, commit)
    scorer = scorer_agent.Scorer
    original_score = scorer.score_events
    steps = iter(range(1, 1 << 62))

    async def score_events(self, events, finish):
        step = self._trace_step = next(steps)
        t_start = time.time()
        chunks = [[r.topic, r.partition, r.offsets[0], r.offsets[-1]]
                  for r in records_by_partition(events).values() if len(r)]
        original_put = finish.put

        async def put(item):
            t_sent = time.time()  # (right after the outputs were handed to the producer)
            item.trace_step = step
            await original_put(item)
            emit({"kind": "step", "step": step, "t_start": t_start, "t_sent": t_sent,
                  "t_put": time.time(), "chunks": chunks})

        finish.put = put
        try:
            await original_score(self, events, finish)
        finally:
            del finish.put

    async def complete_steps(self, items):
        await scorer_agent.deliver([sent for item in items for sent in item.pending])
        t_acked = time.time()
        await self.write_accounts([s for item in items for s in item.staged], items[-1].producer)
        t_rows = time.time()
        for item in items:
            ack_all(item.events)
            self.observe(item.staged, item.started)
            emit({"kind": "done", "step": item.trace_step, "t_acked": t_acked, "t_rows": t_rows,
                  "together": len(items)})

    scorer.score_events = score_events  # type: ignore[method-assign]
    scorer.complete_steps = complete_steps  # type: ignore[method-assign]

    gc_started: dict[str, float] = {}

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            gc_started["t"] = time.time()
        elif "t" in gc_started:
            emit({"kind": "gc", "t0": gc_started.pop("t"), "t1": time.time(),
                  "generation": info.get("generation")})

    gc.callbacks.append(on_gc)


async def watch_loop(interval_s: float = 0.005, report_ms: float = 5.0) -> None:
    """Record every time the event loop came back more than ``report_ms`` late."""
    while True:
        asked = time.perf_counter()
        await asyncio.sleep(interval_s)
        late = (time.perf_counter() - asked - interval_s) * 1000.0
        if late > report_ms:
            emit({"kind": "lag", "t": time.time(), "late_ms": late})


def breakdown(rows: Iterable[dict], records: Mapping[tuple[str, int, int], tuple[int, int]]
              ) -> list[tuple[Any, ...]]:
    """Per record: (topic, partition, offset) and ms spent produce→fetch, fetch→step start,
    step start→sent, sent→acked, acked→landed, and the total (produce→landed).

    ``records`` maps each record to (its Kafka timestamp, its decision's LogAppendTime), ms.
    """
    rows = list(rows)
    fetched: dict[tuple[str, int], list[tuple[int, int, float]]] = {}
    for r in rows:
        if r["kind"] == "fetch":
            fetched.setdefault(tuple(r["tp"]), []).append((r["first"], r["last"], r["t"]))
    done = {r["step"]: r for r in rows if r["kind"] == "done"}
    out: list[tuple[Any, ...]] = []
    for r in rows:
        if r["kind"] != "step" or r["step"] not in done:
            continue
        acked = done[r["step"]]["t_acked"]
        for topic, part, first, last in r["chunks"]:
            fetches = fetched.get((topic, part), [])
            for offset in range(first, last + 1):
                key = (topic, part, offset)
                if key not in records:
                    continue
                t_fetch = max((t for lo, hi, t in fetches if lo <= offset <= hi and t <= r["t_start"]),
                              default=r["t_start"])
                produced, landed = (x / 1000.0 for x in records[key])
                out.append((key, *(1000.0 * x for x in (
                    t_fetch - produced, r["t_start"] - t_fetch, r["t_sent"] - r["t_start"],
                    acked - r["t_sent"], landed - acked, landed - produced))))
    return out


async def read_paths(broker: str, prefix: str) -> dict[tuple[str, int, int], tuple[int, int]]:
    """(topic, partition, offset) of every input record → (its Kafka timestamp, its
    decision's LogAppendTime), from a run's kept topics (``compare --keep-topics``)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from flagstream.perf.bench.measure import read_decisions, start_client
    from flagstream.streams.compat import internals as compat
    from flagstream.streams.config import Settings
    from flagstream.streams.topics import SCORES, TRANSACTIONS

    settings = Settings.from_env(broker=broker, topic_prefix=prefix)
    landed = {tx: d.landed_ms for tx, d in (await read_decisions(settings, SCORES))[0].items()}
    name = settings.topic(TRANSACTIONS)
    consumer = AIOKafkaConsumer(bootstrap_servers=broker, enable_auto_commit=False,
                                auto_offset_reset="earliest", **settings.kafka_security())
    await start_client(consumer)
    out = {}
    try:
        await compat.refresh_metadata(consumer)
        tps = [TopicPartition(name, p) for p in consumer.partitions_for_topic(name) or ()]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining:
            for tp, recs in (await consumer.getmany(timeout_ms=1_000, max_records=20_000)).items():
                for rec in recs:
                    tx = orjson.loads(rec.value).get("transaction_id")
                    if tx in landed:
                        out[(name, tp.partition, rec.offset)] = (int(rec.timestamp), landed[tx])
                if recs and recs[-1].offset + 1 >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return out


STAGES = ("produce→fetch", "fetch→step", "step→sent", "sent→acked", "acked→landed", "total")


def report(rows: list[dict], paths: Mapping[tuple[str, int, int], tuple[int, int]],
           min_rate: float, max_rate: float) -> str:
    """Stage percentiles for the records produced at a local rate within [min_rate, max_rate]
    per second, and the mean stages of the slowest 1% of them."""
    import numpy as np

    stamps = np.sort(np.fromiter((p for p, _ in paths.values()), np.int64))

    def local_rate(t_ms: int) -> int:
        return int(np.searchsorted(stamps, t_ms + 500) - np.searchsorted(stamps, t_ms - 500))

    chosen = {k: v for k, v in paths.items() if min_rate <= local_rate(v[0]) <= max_rate}
    table = np.array([b[1:] for b in breakdown(rows, chosen)])
    if not len(table):
        return "no records in that rate band"
    lines = [f"{len(table)} records; stage ms: p50 / p99 / max"]
    for i, name in enumerate(STAGES):
        p50, p99 = np.percentile(table[:, i], (50, 99))
        lines.append(f"  {name:14} {p50:7.1f} {p99:7.1f} {table[:, i].max():7.1f}")
    slow = table[table[:, -1] >= np.percentile(table[:, -1], 99)]
    lines.append("slowest 1%, mean ms per stage: " + ", ".join(
        f"{name} {slow[:, i].mean():.1f}" for i, name in enumerate(STAGES)))
    t0, t1 = min(v[0] for v in chosen.values()) / 1000, max(v[1] for v in chosen.values()) / 1000
    for kind in ("commit", "gc", "lag"):
        spans = [r for r in rows if r["kind"] == kind and t0 <= r.get("t0", r.get("t", 0)) <= t1]
        if kind == "lag":
            ms = [r["late_ms"] for r in spans]
        else:
            ms = [(r["t1"] - r["t0"]) * 1000 for r in spans]
        if ms:
            lines.append(f"{kind}: {len(ms)} in the window, ms p50 {np.median(ms):.1f} max {max(ms):.1f}")
    paused = [r for r in rows if r["kind"] == "buffer_full" and t0 <= r["t"] <= t1]
    lines.append(f"pressure (a partition out of the fetch): {len(paused)} in the window")
    fetched = np.sort([r["t"] for r in rows if r["kind"] == "fetch" and t0 <= r["t"] <= t1])
    if len(fetched) > 1:
        gaps = np.diff(fetched) * 1000
        lines.append(f"fetch returns over 50 ms apart: {int(np.count_nonzero(gaps > 50))}, "
                     f"longest {gaps.max():.1f} ms")
    deliver = [(r["t1"] - r["t0"]) * 1000 for r in rows if r["kind"] == "deliver" and t0 <= r["t0"] <= t1]
    if deliver:
        lines.append(f"deliver (chunk → stream): {len(deliver)}, ms p50 {np.median(deliver):.1f} "
                     f"p99 {np.percentile(deliver, 99):.1f} max {max(deliver):.1f}")
    return "\n".join(lines)


#: The traced contender's name: its topics are ``<the run's prefix><this>.<topic>``.
TRACED = "flagstream_traced"


def contender_prefix(prefix: str) -> str:
    """The traced contender's topic prefix from the run's (the report's ``prefix``) or its own.

    >>> contender_prefix("bench1342ab."), contender_prefix("bench1342ab.flagstream_traced.")
    ('bench1342ab.flagstream_traced.', 'bench1342ab.flagstream_traced.')
    """
    return prefix if prefix.endswith(f".{TRACED}.") else f"{prefix}{TRACED}."


def analyze(argv: list[str]) -> int:
    """``analyze TRACE BROKER PREFIX``: the per-stage report of a traced run's rate phases
    (``PREFIX``: the run's, as ``compare --json`` reports it)."""
    trace, broker, prefix = argv
    prefix = contender_prefix(prefix)
    rows = [orjson.loads(line) for line in open(trace, "rb") if line.strip()]
    paths = asyncio.run(read_paths(broker, prefix))
    for label, lo, hi in (("~1,000/s", 500, 1_800), ("~5,000/s", 3_000, 7_000)):
        print(f"== records produced at {label}")
        print(report(rows, paths, lo, hi))
    return 0


def main() -> int:
    global _out
    if sys.argv[1:2] == ["analyze"]:
        return analyze(sys.argv[2:])
    path = os.environ.get("BENCH_STAGE_TRACE", "stage_trace.jsonl")
    _out = open(path, "ab", buffering=0)  # noqa: SIM115 - unbuffered: the worker may end abruptly
    install()
    from faust import App

    original_on_started = App.on_started

    async def on_started(self) -> None:
        await original_on_started(self)
        self.add_future(watch_loop())

    App.on_started = on_started  # type: ignore[method-assign]
    import argparse

    from flagstream.streams import worker

    parser = argparse.ArgumentParser()
    worker.add_arguments(parser)

    try:
        return worker.run(parser.parse_args(["--role", "scorer", "--loglevel", "warning"]))
    finally:
        with _lock:
            _out.close()
            _out = None


if __name__ == "__main__":
    sys.exit(main())
