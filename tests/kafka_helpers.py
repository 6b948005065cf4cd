"""Test helpers that talk to the real broker: produce, read a topic, run a worker process."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import fields
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from flagstream.codec import dumps, loads
from flagstream.streams.config import Secret, Settings

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def produce(
    settings: Settings, topic: str, records: Iterable[tuple[bytes | None, bytes]]
) -> int:
    """Send (key, value) pairs to a topic and wait for every acknowledgement."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.broker, linger_ms=5, **settings.kafka_security())
    await producer.start()
    try:
        futures = [await producer.send(settings.topic(topic), v, key=k) for k, v in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return len(futures)


async def committed_offsets(settings: Settings, group: str, topic: str = "transactions") -> dict[int, int]:
    """The group's committed offset on each partition of ``topic`` (0 where none)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.broker, group_id=group,
                                enable_auto_commit=False, **settings.kafka_security())
    await consumer.start()
    try:
        name = settings.topic(topic)
        return {p: (await consumer.committed(TopicPartition(name, p))) or 0
                for p in range(settings.partitions)}
    finally:
        await consumer.stop()


def produce_json(settings: Settings, topic: str, objects: Iterable[dict], key_field: str | None):
    pairs = [((o[key_field].encode() if key_field else None), dumps(o)) for o in objects]
    return asyncio.run(produce(settings, topic, pairs))


async def read_topic(
    settings: Settings,
    topic: str,
    expect: int,
    timeout_s: float = 60.0,
    settle_s: float = 1.0,
    distinct_keys: bool = False,
) -> list:
    """Read a topic from the beginning until ``expect`` records (or, with
    ``distinct_keys``, records with ``expect`` distinct keys) arrived, then ``settle_s``
    more seconds to catch extras, or until nothing new arrived for ``timeout_s``: a
    pipeline that keeps deciding on a loaded machine is waited for, one that stopped
    (a loss, a stall) is not. Returns aiokafka records."""
    name = settings.topic(topic)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.broker, enable_auto_commit=False, auto_offset_reset="earliest",
        **settings.kafka_security(),
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(name) or set()
        deadline = time.monotonic() + timeout_s
        while not partitions and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(name) or set()
        consumer.assign([TopicPartition(name, p) for p in partitions])
        await consumer.seek_to_beginning()
        records: list = []
        keys: set = set()
        settle_until = None
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            if batch:
                deadline = max(deadline, time.monotonic() + timeout_s)
            for recs in batch.values():
                records.extend(recs)
                if distinct_keys:
                    keys.update(r.key for r in recs)
            if (len(keys) if distinct_keys else len(records)) >= expect:
                settle_until = settle_until or time.monotonic() + settle_s
                if time.monotonic() >= settle_until:
                    break
        return records
    finally:
        await consumer.stop()


def read_json(
    settings: Settings, topic: str, expect: int, timeout_s: float = 60.0, distinct_keys: bool = False
) -> list[dict]:
    records = asyncio.run(read_topic(settings, topic, expect, timeout_s, distinct_keys=distinct_keys))
    return [loads(r.value) for r in records]


#: Worker settings that flag every decision (an untrained model scores about 0.01): the
#: lowest threshold the operating point allows.
FLAG_EVERYTHING = {"threshold": 0.005, "threshold_floor": 0.005}


class WorkerProcess:
    """A real ``flagstream worker`` subprocess with its own port, data dir and log."""

    #: The command that runs a worker (a test may run another entry point, e.g. a fault injector).
    PROGRAM = ("-m", "flagstream.cli")

    def __init__(self, settings: Settings, log_path: Path, role: str = "all", extra_env=None,
                 program: tuple[str, ...] = PROGRAM):
        self.settings = settings
        self.program = program
        self.log_path = log_path
        self.role = role
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen | None = None
        self.log_start = 0

    @property
    def url(self) -> str:
        return f"http://{self.settings.web_host}:{self.settings.web_port}"

    def env(self) -> dict[str, str]:
        s = self.settings
        env = dict(os.environ)  # FLAGSTREAM_* set by a test (monkeypatch) reach the worker...
        defaults = Settings()
        for f in fields(s):  # ...and so does every setting this test's Settings changed
            value = getattr(s, f.name)
            if value == getattr(defaults, f.name) and f"FLAGSTREAM_{f.name.upper()}" in env:
                continue
            if isinstance(value, Secret):
                value = value.reveal()
            elif isinstance(value, bool):
                value = "1" if value else "0"
            env[f"FLAGSTREAM_{f.name.upper()}"] = str(value)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.extra_env)
        return env

    def start(self, timeout_s: float = 90.0) -> WorkerProcess:
        """Launch the worker and wait until it holds its partitions."""
        self.launch()
        self.wait_ready(timeout_s)
        return self

    def launch(self) -> WorkerProcess:
        """Start the worker process without waiting for it (its log starts a new run)."""
        self.log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, *self.program, "worker", "--role", self.role],
                cwd=ROOT, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
            )
        return self

    def wait_for_log(self, marker: bytes, timeout_s: float = 120.0) -> None:
        """Until this run's log holds ``marker`` (fails after ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        while marker not in self.run_log():
            assert time.monotonic() < deadline, f"{marker!r} not logged in {timeout_s}s"
            time.sleep(0.05)

    def run_log(self) -> bytes:
        """What this run (since the last ``start``) wrote to the log."""
        with open(self.log_path, "rb") as fh:
            fh.seek(self.log_start)
            return fh.read()

    def wait_ready(self, timeout_s: float) -> None:
        """Wait until the web server answers and the agents hold their partitions."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc and self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as resp:
                    if resp.status == 200 and b"Setting newly assigned" in self.run_log():
                        time.sleep(1.0)
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"worker not ready in {timeout_s}s:\n{self.log_tail()}")

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as resp:
            return resp.read().decode()

    def metric(self, name: str) -> float:
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith(name) and not line.startswith("#"):
                head, value = line.rsplit(" ", 1)
                if head == name or head.startswith(name + "{"):
                    total += float(value)
        return total

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no final commit."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 80) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])
