"""``flagstream demo``: the whole product on a local broker, in accelerated time.

Starts a worker (scoring, learning, review page, metrics), generates a simulated
stream if there is none, replays it in accelerated event time, runs simulated
reviewers and chargebacks, and prints a live summary until Ctrl-C, which stops
everything cleanly. The broker is started by ``make demo`` (scripts/kafka.sh).

>>> parser = __import__("argparse").ArgumentParser(); add_arguments(parser)
>>> parser.parse_args([]).speedup
7200.0
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from flagstream.codec import dumps
from flagstream.demo import outcome as result
from flagstream.sinks.review.credentials import REVIEWERS_FILE, ReviewerTokens
from flagstream.streams.config import Settings
from flagstream.streams.kafka_access import require_access

STREAM = Path("var/demo/stream.jsonl.gz")
#: Each run keeps its worker state and logs in DEMO_DIR/<run id>/.
DEMO_DIR = Path("var/demo")
#: The name the person watching the demo reviews under.
DEMO_REVIEWER = "you"
#: Times a worker that exits with a failure status (its app crashed) is started again.
WORKER_RESTARTS = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stream", type=Path, default=STREAM, help="recorded stream to replay")
    parser.add_argument("--customers", type=int, default=2_000)
    parser.add_argument("--terminals", type=int, default=4_000)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--speedup", type=float, default=7200.0, help="event seconds per second")
    parser.add_argument("--review-capacity", type=int, default=300, help="reviews per event day")
    parser.add_argument(
        "--chargeback-delay-days", type=float, default=2.0,
        help="event days until a missed fraud is reported (7 in the benchmark; shorter here)",
    )
    parser.add_argument(
        "--auto-decline-fdr", type=float, default=0.05,
        help="decline flags with nobody looking where at most this share is legitimate "
             "(FLAGSTREAM_AUTO_DECLINE_FALSE_DISCOVERY_RATE; 0: every flag to a person)",
    )
    parser.add_argument("--port", type=int, default=6066, help="review page and metrics port")
    parser.add_argument("--refresh", type=float, default=2.0, help="summary refresh, seconds")
    parser.add_argument("--duration", type=float, default=0.0, help="stop after N seconds (0: Ctrl-C)")
    parser.add_argument("--json", action="store_true",
                        help="headless: progress on stderr, one JSON object at the end (live "
                             "figures beside a backtest of the same events with the same policy)")


class Metrics:
    """Reads the worker's Prometheus endpoint into {name{labels}: value}."""

    def __init__(self, url: str) -> None:
        self.url = url

    def read(self) -> dict[str, float]:
        try:
            with urllib.request.urlopen(self.url, timeout=2) as resp:
                text = resp.read().decode()
        except OSError:
            return {}
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                try:
                    values[name] = float(value)
                except ValueError:
                    pass
        return values


def total(values: dict[str, float], name: str, **labels: str) -> float:
    """Sum a metric's samples whose labels include ``labels``."""
    out = 0.0
    for key, value in values.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            out += value
    return out


def carry_over(carried: dict[str, float], last: dict[str, float]) -> dict[str, float]:
    """The counters (``*_total``) of a worker that stopped, added to those carried so far:
    its successor counts from zero, and the run's figures go on from where it stopped.

    >>> carry_over({"a_total": 1.0}, {"a_total": 2.0, 'b_total{x="y"}': 3.0, "depth": 9.0})
    {'a_total': 3.0, 'b_total{x="y"}': 3.0}
    """
    out = dict(carried)
    for key, value in last.items():
        if key.partition("{")[0].endswith("_total"):
            out[key] = out.get(key, 0.0) + value
    return out


def with_carried(now: dict[str, float], carried: dict[str, float]) -> dict[str, float]:
    """A reading of the running worker plus what its predecessors counted.

    >>> with_carried({"a_total": 1.0, "depth": 4.0}, {"a_total": 3.0})
    {'a_total': 4.0, 'depth': 4.0}
    """
    out = dict(now)
    for key, value in carried.items():
        out[key] = out.get(key, 0.0) + value
    return out


def summary_line(now: dict[str, float], before: dict[str, float], seconds: float) -> str:
    """One line: throughput, flags, queue, recall and false-discovery rate so far, version."""
    events = total(now, "flagstream_events_in_total")
    rate = (events - total(before, "flagstream_events_in_total")) / max(seconds, 1e-9)
    flags = total(now, "flagstream_flags_total")
    fraud_reviewed = total(now, "flagstream_feedback_labels_total", label="fraud", source="review")
    legit_reviewed = total(now, "flagstream_feedback_labels_total", label="legit", source="review")
    missed = total(now, "flagstream_feedback_labels_total", label="fraud", source="chargeback")
    found = fraud_reviewed + missed
    recall = f"{fraud_reviewed / found:.0%}" if found else "-"
    reviewed = fraud_reviewed + legit_reviewed
    fdr = f"{legit_reviewed / reviewed:.0%}" if reviewed else "-"
    queue = total(now, "flagstream_review_queue_depth")
    version = int(total(now, "flagstream_model_sequence"))
    return (
        f"{rate:8,.0f} ev/s | {events:10,.0f} scored | {flags:7,.0f} flagged | queue {queue:5,.0f}"
        f" | recall {recall:>4} | false alarms {fdr:>4} | model v{version}"
    )


def run(args: argparse.Namespace) -> int:
    out = sys.stderr if args.json else sys.stdout  # with --json, stdout is the JSON object
    run_id = time.strftime("%Y%m%d-%H%M%S")  # each run its own topics and state: no stale records
    data_dir = DEMO_DIR / run_id / "worker"
    settings = Settings.from_env(data_dir=str(data_dir))
    require_access(settings)  # the worker, replay and reviewers check again; fail before starting them
    # the person at the console reviews as DEMO_REVIEWER: a fresh token each run, shown
    # here only (the worker keeps its hash; the simulated reviewers answer on Kafka)
    token = ReviewerTokens(settings.data_path / REVIEWERS_FILE).add(DEMO_REVIEWER)
    prefix = f"{settings.topic_prefix}demo-{run_id}."
    # the replay runs --speedup event hours per hour, and so the simulated reviewers' labels:
    # their hourly budgets scale with it (unless set)
    budgets = {name: int(getattr(settings, name) * max(args.speedup, 1.0))
               for name in ("feedback_labels_per_reviewer_hour", "feedback_labels_per_source_hour")
               if f"FLAGSTREAM_{name.upper()}" not in os.environ}
    # what the worker runs with: the backtest of the same events is given the same
    run_settings = settings.with_(topic_prefix=prefix,
                                  review_capacity_per_day=float(args.review_capacity),
                                  label_maturity_s=args.chargeback_delay_days * 86_400,
                                  auto_decline_false_discovery_rate=args.auto_decline_fdr, **budgets)
    env = {**os.environ, "FLAGSTREAM_WEB_PORT": str(args.port),
           "FLAGSTREAM_TOPIC_PREFIX": prefix, "FLAGSTREAM_DATA_DIR": str(data_dir),
           "FLAGSTREAM_REVIEW_CAPACITY_PER_DAY": str(args.review_capacity),
           "FLAGSTREAM_LABEL_MATURITY_S": str(run_settings.label_maturity_s),
           "FLAGSTREAM_AUTO_DECLINE_FALSE_DISCOVERY_RATE": str(args.auto_decline_fdr),
           "PYTHONUNBUFFERED": "1"}
    env.update({f"FLAGSTREAM_{name.upper()}": str(value) for name, value in budgets.items()})
    logs = DEMO_DIR / run_id / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    flagstream = [sys.executable, "-m", "flagstream.cli"]
    if not args.stream.exists():
        print(f"generating a {args.days}-day stream of {args.customers} cards → {args.stream}",
              file=out)
        subprocess.run(
            [*flagstream, "simulate", "--customers", str(args.customers), "--terminals",
             str(args.terminals), "--days", str(args.days), "--out", str(args.stream)],
            check=True, env=env, stdout=out,
        )
    procs: list[tuple[str, subprocess.Popen]] = []

    def start(name: str, argv: list[str], at: int | None = None) -> None:
        log = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        proc = (name, subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT))
        if at is None:
            procs.append(proc)
        else:
            procs[at] = proc

    start("worker", [*flagstream, "worker"])
    base = f"http://127.0.0.1:{args.port}"
    metrics = Metrics(base + "/metrics")
    deadline = time.monotonic() + 120
    while not metrics.read():
        if time.monotonic() > deadline or procs[0][1].poll() is not None:
            print(f"worker did not start; see {logs / 'worker.log'}", file=sys.stderr)
            return stop_all(procs, 1)
        time.sleep(0.5)
    start("replay", [*flagstream, "replay", str(args.stream), "--speedup", str(args.speedup)])
    start("reviewers", [*flagstream, "reviewers", str(args.stream), "--auto-legit",
                        "--speedup", str(args.speedup), "--review-delay", "7200",
                        "--capacity-per-day", str(args.review_capacity),
                        "--chargeback-delay-days", str(args.chargeback_delay_days)])
    print(f"\nbroker      {settings.broker}\n"
          f"review page {base}/review   sign in as {DEMO_REVIEWER!r} with the token {token}\n"
          f"            (more reviewers: FLAGSTREAM_DATA_DIR={data_dir} "
          "flagstream review-tokens add NAME)\n"
          f"metrics     {base}/metrics\n"
          f"logs        {logs}/\n(Ctrl-C stops everything)\n", file=out)
    stop = {"now": False}
    signal.signal(signal.SIGINT, lambda *_: stop.update(now=True))
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    before, t0, started = metrics.read(), time.monotonic(), time.monotonic()
    restarts = 0
    now, last = before, before
    carried: dict[str, float] = {}  # (counters of workers that stopped: the run goes on counting)
    while not stop["now"]:
        time.sleep(args.refresh)
        reading, t1 = metrics.read(), time.monotonic()
        if reading:  # (nothing while a restarted worker starts)
            last, now = reading, with_carried(reading, carried)
            print(summary_line(now, before, t1 - t0), file=out, flush=True)
            before, t0 = now, t1
        if args.duration and t1 - started > args.duration:
            break
        status = procs[0][1].poll()
        if status is not None:  # (a crashed worker exits with a failure status)
            if status == 0 or restarts >= WORKER_RESTARTS:
                print(f"the worker stopped (status {status}); see its log", file=sys.stderr)
                return stop_all(procs, 1)
            restarts += 1
            carried, last = carry_over(carried, last), {}  # (its successor counts from zero)
            print(f"the worker stopped (status {status}); restarting it, as a supervisor would "
                  f"({restarts}/{WORKER_RESTARTS}; see its log)", file=sys.stderr)
            start("worker", [*flagstream, "worker"], at=0)
    status = stop_all(procs, 0)
    if args.json and status == 0:
        print(dumps(outcome(args, run_settings, now)).decode())
    return status


def outcome(args: argparse.Namespace, run_settings: Settings, last: dict[str, float]) -> dict:
    """The run's JSON object: what it did, live, and a backtest of the same events."""
    capacity = float(args.review_capacity)
    live, last_ms = result.live(run_settings, args.stream, capacity)
    backtest = result.backtest(run_settings, args.stream, capacity, last_ms,
                               review_delay_hours=2.0, chargeback_delay_days=args.chargeback_delay_days)
    return {
        "events": total(last, "flagstream_events_in_total"),
        "flagged": total(last, "flagstream_flags_total"),
        "declined": total(last, "flagstream_decisions_total", decision="decline"),
        "review_capacity_per_day": capacity,
        "target_false_discovery_rate": run_settings.target_false_discovery_rate,
        "promotions": total(last, "flagstream_model_promotions_total"),
        "rollbacks": total(last, "flagstream_model_rollbacks_total"),
        "model_version": int(total(last, "flagstream_model_sequence")),
        "live": live["all"], "live_second_half": live["second_half"],
        "backtest": {"all": backtest["all"], "second_half": backtest["second_half"],
                     "promotions": backtest["promotions"], "rollbacks": backtest["rollbacks"]},
    }


def stop_all(procs: list[tuple[str, subprocess.Popen]], status: int) -> int:
    """Stop children in reverse order: producers first, the worker last."""
    for name, proc in reversed(procs):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                print(f"{name} did not stop; killing it", file=sys.stderr)
                proc.kill()
    print("stopped", file=sys.stderr)
    return status
