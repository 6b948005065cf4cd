"""The ``api`` contenders: ``flagstream api`` in front of scorer workers, as one process tree.

This process runs the scoring API (:func:`flagstream.streams.api_cli.serve`) and starts
the workers (``flagstream worker --role scorer``, ``--workers N``, one by default) as its
children, stopping them on exit; with ``--in-worker`` the workers serve the API themselves
(``FLAGSTREAM_WORKER_API``) and this process only starts and stops them. Workers share the
partitions as one consumer group (each with its own data directory and web port). The
drain phase is the workers'; in the rate phases the harness calls the API at a fixed rate
(:func:`call_at_rate`) and the latency is each call's, request sent to answer read, as a
client in the authorization path would see it; in a mixed phase (:func:`mixed_at_rate`)
half the load is API calls and half records produced on the stream, each path measured its
own way. The sampled CPU and memory are this process's (the API's), not the workers'.

>>> worker_environment({"PATH": "/bin"}, 0, "/d", 7001)
{'PATH': '/bin'}
>>> worker_environment({"PATH": "/bin"}, 1, "/d", 7001)
{'PATH': '/bin', 'FLAGSTREAM_DATA_DIR': '/d/worker-1', 'FLAGSTREAM_WEB_PORT': '7001'}
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from flagstream.perf.bench.workload import Record

#: The key the harness gives the API (a benchmark on loopback, not a secret).
BENCH_KEY = "flagstream-bench-api-key"


async def call_at_rate(url: str, records: Sequence[Record], rate: float,
                       key: str = BENCH_KEY, timeout_s: float = 30.0,
                       ) -> tuple[dict[str, float], Counter, dict[str, int]]:
    """Call ``POST url`` once per record at ``rate`` per second (open loop: a slow answer
    does not delay the next call); each call's latency in ms by transaction id, how many
    calls ended how (HTTP status, ``fallback``, or the exception's name), and when each
    call was made (epoch ms). Calls go through :class:`~flagstream.perf.bench.http_load.
    KeepAliveClient` (aiohttp's client took more CPU than the API it measured)."""
    import orjson

    from flagstream.perf.bench.http_load import KeepAliveClient

    latencies: dict[str, float] = {}
    outcomes: Counter = Counter()
    sent: dict[str, int] = {}

    async def call(client: KeepAliveClient, record: Record) -> None:
        started = time.perf_counter()
        try:
            status, answer = await client.post(record.value)
            fallback = status == 200 and orjson.loads(answer).get("fallback")
        except Exception as exc:  # counted, never raised: the run reports it
            outcomes[type(exc).__name__] += 1
            return
        outcome = "fallback" if fallback else str(status)
        outcomes[outcome] += 1
        if outcome == "200":
            latencies[record.transaction_id] = (time.perf_counter() - started) * 1000.0

    client = KeepAliveClient(url, key, limit=256, timeout_s=timeout_s)
    try:
        loop = asyncio.get_running_loop()
        start, i, tasks = loop.time(), 0, []
        while i < len(records):
            due = min(len(records), int((loop.time() - start) * rate) + 1)
            now_ms = int(time.time() * 1000)
            while i < due:
                sent[records[i].transaction_id] = now_ms
                tasks.append(asyncio.ensure_future(call(client, records[i])))
                i += 1
            await asyncio.sleep(0.001)
        await asyncio.gather(*tasks)
    finally:
        await client.close()
    return latencies, outcomes, sent


async def wait_ready(url: str, timeout_s: float = 120.0) -> bool:
    """Whether the API answers (401 without a key is an answer) within ``timeout_s``."""
    import aiohttp

    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.post(url, data=b"{}") as resp:
                    if resp.status == 401:
                        return True
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.5)
    return False


async def mixed_at_rate(url: str, settings: Any, topic: str, records: Sequence[Record], rate: float,
                        key: str = BENCH_KEY) -> tuple[dict[str, float], Counter, dict[str, int],
                                                      dict[str, int]]:
    """Half of ``records`` (every other one) through the API, half produced on ``topic``,
    both at ``rate / 2`` at the same time; the API calls' latencies, outcomes and send
    times (as :func:`call_at_rate`), and each stream record's produce timestamp (ms)."""
    from flagstream.perf.bench.workload import replay_at_rate

    (lat, outcomes, called), produced = await asyncio.gather(
        call_at_rate(url, records[0::2], rate / 2, key),
        replay_at_rate(settings, topic, records[1::2], rate / 2),
    )
    return lat, outcomes, called, produced


async def wait_assigned(base_url: str, share: int, timeout_s: float = 120.0) -> bool:
    """Whether the worker at ``base_url`` says on ``/healthz``, within ``timeout_s``, that it
    is not rebalancing and, when it serves the API itself, that its assignment is current
    and gives it at most ``share`` partitions (the whole group's assignment, not one it
    held before the others joined)."""
    import aiohttp

    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(f"{base_url}/healthz") as resp:
                    health = await resp.json()
                api = health.get("api", {"assigned": True, "decided_here": 0})
                if not health["rebalancing"] and api["assigned"] and api["decided_here"] <= share:
                    return True
            except (aiohttp.ClientError, ValueError, KeyError):
                pass
            await asyncio.sleep(0.2)
    return False


def worker_environment(env: Mapping[str, str], index: int, data_dir: str,
                       web_port: int) -> dict[str, str]:
    """The environment of worker ``index``: the first one's as given, every other one with its
    own data directory under ``data_dir`` (RocksDB stores are one process's) and web port."""
    out = dict(env)
    if index:
        out["FLAGSTREAM_DATA_DIR"] = os.path.join(data_dir, f"worker-{index}")
        out["FLAGSTREAM_WEB_PORT"] = str(web_port)
    return out


async def _until_stopped() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    from flagstream.perf.bench.harness import free_port
    from flagstream.streams.api_cli import serve
    from flagstream.streams.config import Settings

    parser = argparse.ArgumentParser(prog="python -m flagstream.perf.bench.api_contender")
    parser.add_argument("--workers", type=int, default=1, help="scorer workers behind the API")
    parser.add_argument("--in-worker", action="store_true",
                        help="the workers serve the API themselves (FLAGSTREAM_WORKER_API); "
                             "calls go to the first one's web port")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    env = {**os.environ, "FLAGSTREAM_WORKER_API": "1"} if args.in_worker else os.environ
    workers = [
        subprocess.Popen([sys.executable, "-m", "flagstream.cli", "worker", "--role", "scorer",
                          "--loglevel", "warning"],
                         env=worker_environment(env, i, settings.data_dir, free_port()))
        for i in range(args.workers)
    ]
    try:
        if args.in_worker:
            asyncio.run(_until_stopped())
        else:
            asyncio.run(serve(settings))
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
