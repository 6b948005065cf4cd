"""The contenders: how each one is started as its own process, and stopped.

Every contender reads the worker's ``FLAGSTREAM_*`` environment (broker, topic
prefix, partitions, threshold, ...) and consumes its own pre-loaded copy of the input.

>>> CONTENDERS["flagstream"].command()[1:5]
['-m', 'flagstream.cli', 'worker', '--role']
>>> sorted(CONTENDERS)  # doctest: +NORMALIZE_WHITESPACE
['aiokafka_ceiling', 'api', 'api_2w', 'api_mixed', 'api_worker', 'api_worker_2w',
 'api_worker_mixed', 'flagstream', 'flagstream_threaded', 'flagstream_traced', 'naive_faust']
>>> CONTENDERS["api_2w"].command()[-2:], CONTENDERS["api_2w"].path
(['--workers', '2'], 'api')

A contender's ``path`` says how its rate phases are driven: ``stream`` (records produced
on ``transactions``, latency to the decision on ``scores``), ``api`` (calls to the
scoring API, latency to the answer) or ``mixed`` (half of each, both measured).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from flagstream.perf.bench.api_contender import BENCH_KEY
from flagstream.perf.bench.measure import ProcessSampler
from flagstream.streams.config import Settings

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Contender:
    """A contender: the module run with ``python -m`` and its arguments."""

    name: str
    module: str
    args: tuple[str, ...] = ()
    about: str = ""
    path: str = "stream"
    #: Variables set for this contender on top of the shared environment.
    env: tuple[tuple[str, str], ...] = ()

    def command(self) -> list[str]:
        return [sys.executable, "-m", self.module, *self.args]

    @property
    def api_on_worker(self) -> bool:
        """Whether the workers serve the API (on the first one's web port)."""
        return "--in-worker" in self.args

    @property
    def workers(self) -> int:
        """Scorer workers it runs (``--workers N``; one otherwise)."""
        return int(self.args[self.args.index("--workers") + 1]) if "--workers" in self.args else 1


_WORKER = ("worker", "--role", "scorer", "--loglevel", "warning")

CONTENDERS = {
    c.name: c
    for c in (
        Contender("flagstream", "flagstream.cli", _WORKER, "the real worker (scorer role), unchanged"),
        Contender("flagstream_threaded", "flagstream.cli", _WORKER,
                  "the real worker with Faust's consumer in its own thread (FLAGSTREAM_CONSUMER_IN_LOOP=off)",
                  env=(("FLAGSTREAM_CONSUMER_IN_LOOP", "off"),)),
        Contender("naive_faust", "flagstream.perf.bench.naive_faust", (),
                  "per-event Faust agent, dict state, River predict_proba_one per event"),
        Contender("aiokafka_ceiling", "flagstream.perf.bench.aiokafka_ceiling", (),
                  "aiokafka getmany loop around the same ScoringCore, no Faust"),
        Contender("api", "flagstream.perf.bench.api_contender", (),
                  "flagstream api in front of one scorer worker; latency: call to answer", "api"),
        Contender("api_2w", "flagstream.perf.bench.api_contender", ("--workers", "2"),
                  "flagstream api in front of two scorer workers sharing the partitions", "api"),
        Contender("api_mixed", "flagstream.perf.bench.api_contender", (),
                  "one scorer worker; half the rate API calls, half stream records", "mixed"),
        Contender("api_worker", "flagstream.perf.bench.api_contender", ("--in-worker",),
                  "the API served by one scorer worker itself (FLAGSTREAM_WORKER_API)", "api"),
        Contender("api_worker_2w", "flagstream.perf.bench.api_contender",
                  ("--in-worker", "--workers", "2"),
                  "the API served by two scorer workers (calls to the first; it forwards the "
                  "other's accounts)", "api"),
        Contender("api_worker_mixed", "flagstream.perf.bench.api_contender", ("--in-worker",),
                  "one scorer worker serving the API; half the rate API calls, half stream "
                  "records", "mixed"),
        Contender("flagstream_traced", "flagstream.perf.bench.stage_trace", (),
                  "the real worker with a timestamp per stage (BENCH_STAGE_TRACE); a diagnostic"),
    )
}


def environment(settings: Settings, model_path: Path | None) -> dict[str, str]:
    """The process environment a contender runs with."""
    env = dict(os.environ)
    env.update(
        {
            "FLAGSTREAM_BROKER": settings.broker,
            "FLAGSTREAM_TOPIC_PREFIX": settings.topic_prefix,
            "FLAGSTREAM_PARTITIONS": str(settings.partitions),
            "FLAGSTREAM_DATA_DIR": settings.data_dir,
            "FLAGSTREAM_WEB_PORT": str(settings.web_port),
            "FLAGSTREAM_THRESHOLD": str(settings.threshold),
            # every contender decides by the fixed threshold: the worker's review capacity
            # (which holds back flags past the day's share) is off, as the peers have none
            "FLAGSTREAM_REVIEW_CAPACITY_PER_DAY": "0",
            # (read by the api contender only)
            "FLAGSTREAM_API_PORT": str(settings.api_port),
            "FLAGSTREAM_API_KEY": BENCH_KEY,
            "FLAGSTREAM_API_DEADLINE_MS": str(settings.api_deadline_ms),
            "PYTHONUNBUFFERED": "1",
        }
    )
    if model_path is not None:
        env["BENCH_MODEL_PATH"] = str(model_path)
    return env


@dataclass
class Running:
    """A started contender process, its sampler and its log."""

    contender: Contender
    proc: subprocess.Popen
    sampler: ProcessSampler
    log_path: Path
    started_at: float
    exit_code: int | None = field(default=None)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout_s``; returns the exit code."""
        self.sampler.stop()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.exit_code = self.proc.returncode
        return self.exit_code

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def start(contender: Contender, settings: Settings, model_path: Path | None, log_dir: Path) -> Running:
    """Start a contender process with CPU/memory sampling."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{contender.name}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - owned by the child process
    started = time.time()
    env = environment(settings, model_path) | dict(contender.env)
    proc = subprocess.Popen(contender.command(), cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    log.close()
    sampler = ProcessSampler(proc.pid)
    sampler.start()
    return Running(contender, proc, sampler, log_path, started)
