"""Profile one worker draining a pre-loaded topic with py-spy: flame graph and top costs.

``python -m flagstream.perf.bench.profile --label after`` pre-loads ``--events`` records under a
fresh topic prefix, starts ``flagstream worker --role scorer`` (from ``--root``, so an
older checkout can be profiled the same way), records it with ``py-spy`` from its
first decision to its last, and writes ``artifacts/bench/profile_<label>.svg`` (flame
graph), ``.txt`` (py-spy's collapsed stacks) and ``.json`` (throughput, the top
functions by own and total samples, and samples by category).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from flagstream.perf.bench import contenders as cont
from flagstream.perf.bench import flame, measure, workload
from flagstream.perf.bench.harness import free_port
from flagstream.streams.config import Settings
from flagstream.streams.topics import SCORES, TRANSACTIONS

#: Path fragment → category, matched against the innermost frames first.
CATEGORIES = {
    "dumps (/": "encode outputs (orjson)",  # (codec.py's, before its loads below)
    "/streams/schema.py": "decode+validate (schema, orjson)",
    "/streams/iso_times.py": "decode+validate (schema, orjson)",
    "/flagstream/codec.py": "decode+validate (schema, orjson)",
    "/features/": "core (features, scoring, decisions)",
    "/scoring/": "core (features, scoring, decisions)",
    "/streams/core.py": "core (features, scoring, decisions)",
    "/sinks/": "agent, delivery, metrics",
    "/prometheus_client/": "agent, delivery, metrics",
    "/streams/delivery.py": "agent, delivery, metrics",
    "/streams/scorer_agent.py": "agent, delivery, metrics",
    "/streams/faust_batches.py": "agent, delivery, metrics",
    "/streams/compat/faust_consumer.py": "faust (consumer, conductor, streams, tables)",
    "/rocksdict/": "faust tables (rocksdb)",
    "/faust/stores/": "faust tables (rocksdb)",
    "/faust/tables/": "faust tables (rocksdb)",
    "/faust/": "faust (consumer, conductor, streams, tables)",
    "/mode/": "faust (consumer, conductor, streams, tables)",
    "/aiokafka/": "aiokafka (fetch, records, produce)",
    "/asyncio/": "event loop",
    "selectors.py": "event loop",
}


async def _prepare(args: argparse.Namespace) -> tuple[Settings, int]:
    wl = workload.load_workload(workload.ensure_stream(args.stream, Path(args.out_dir),
                                                      args.events + args.train),
                                args.train, args.events, (), 1.0, 4)
    settings = Settings.from_env(topic_prefix=f"prof{uuid.uuid4().hex[:8]}.", partitions=4,
                                 data_dir=tempfile.mkdtemp(prefix="flagstream-prof-"),
                                 web_port=free_port(), threshold=args.threshold)
    await workload.create_bench_topics(settings)
    if args.model:
        state = workload.train_champion(wl.train, wl.labels, 20.0)
        await workload.publish_champion(settings, state)
    await workload.preload(settings, TRANSACTIONS, wl.preload)
    return settings, wl.expected(wl.preload)


def profile(args: argparse.Namespace) -> dict:
    settings, expected = asyncio.run(_prepare(args))
    out = Path(args.out_dir)
    cont.ROOT = Path(args.root).resolve()
    env_extra = dict(kv.split("=", 1) for kv in args.env)
    os.environ.update(env_extra)
    c = cont.CONTENDERS["flagstream"]
    run = cont.start(c, settings, None, out / "logs")
    raw = out / f"profile_{args.label}.txt"
    try:
        asyncio.run(measure.wait_for_count(settings, SCORES, 1, 120, poll_s=0.05))
        spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "-p",
                                str(run.proc.pid), "-r", str(args.rate), "--format", "raw",
                                "--full-filenames", "-o", str(raw)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started, faults = time.time(), measure.minor_faults(run.proc.pid)
        got, complete = asyncio.run(measure.wait_for_count(settings, SCORES, expected, 60, poll_s=0.1))
        elapsed, faults = time.time() - started, measure.minor_faults(run.proc.pid) - faults
        spy.send_signal(signal.SIGINT)
        spy.wait(30)
    finally:
        run.stop()
    stacks = flame.parse(raw.read_text().splitlines())
    flame.write_svg(stacks, out / f"profile_{args.label}.svg",
                    f"flagstream worker draining {expected:,} records ({args.label})")
    decisions, _ = asyncio.run(measure.read_decisions(settings, SCORES))
    asyncio.run(workload.delete_topics(settings))
    shutil.rmtree(settings.data_dir, ignore_errors=True)
    report = {
        "label": args.label, "root": str(cont.ROOT), "env": env_extra, "events": expected,
        "decided": len(decisions), "complete": complete,
        "events_per_s": round(measure.throughput(d.landed_ms for d in decisions.values()), 1),
        "profiled_s": round(elapsed, 2), "samples": sum(stacks.values()),
        "minor_faults_per_event": round(faults / max(expected, 1), 3),
        "categories": flame.categories(stacks, CATEGORIES),
        "top_self": flame.top(stacks, "self", 25),
        "top_total": flame.top(stacks, "total", 40),
    }
    (out / f"profile_{args.label}.json").write_text(json.dumps(report, indent=1))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flagstream.perf.bench.profile", description=__doc__)
    parser.add_argument("--label", required=True)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--train", type=int, default=20_000)
    parser.add_argument("--threshold", type=float, default=0.1)
    parser.add_argument("--root", default=str(cont.ROOT), help="checkout to run the worker from")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the worker")
    parser.add_argument("--no-model", dest="model", action="store_false",
                        help="score with the untrained model (no champion published)")
    parser.add_argument("--stream")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--out-dir", default="artifacts/bench")
    report = profile(parser.parse_args(argv))
    total = report["samples"] or 1
    print(f"{report['label']}: {report['events_per_s']:,} events/s, "
          f"{report['minor_faults_per_event']} page faults/event; samples by category:")
    for name, k in report["categories"].items():
        print(f"  {k / total:6.1%}  {name}")
    print("top own samples:")
    for frame, _, share in report["top_self"][:15]:
        print(f"  {share:6.1%}  {frame}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
