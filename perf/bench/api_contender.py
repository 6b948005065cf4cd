"""The ``api`` contender: ``flagstream api`` in front of one scorer worker, as one process tree.

This process runs the scoring API (:func:`flagstream.streams.api_cli.serve`) and starts
the worker (``flagstream worker --role scorer``) as its child, stopping it on exit. The
drain phase is the worker's; in the rate phases the harness calls the API at a fixed
rate (:func:`call_at_rate`) and the latency is each call's, request sent to answer read,
as a client in the authorization path would see it. The sampled CPU and memory are
this process's (the API's), not the worker's.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence

from flagstream.perf.bench.workload import Record

#: The key the harness gives the API (a benchmark on loopback, not a secret).
BENCH_KEY = "flagstream-bench-api-key"


async def call_at_rate(url: str, records: Sequence[Record], rate: float,
                       key: str = BENCH_KEY, timeout_s: float = 30.0,
                       ) -> tuple[dict[str, float], Counter, dict[str, int]]:
    """Call ``POST url`` once per record at ``rate`` per second (open loop: a slow answer
    does not delay the next call); each call's latency in ms by transaction id, how many
    calls ended how (HTTP status, ``fallback``, or the exception's name), and when each
    call was made (epoch ms)."""
    import aiohttp

    latencies: dict[str, float] = {}
    outcomes: Counter = Counter()
    sent: dict[str, int] = {}
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    async def call(session: aiohttp.ClientSession, record: Record) -> None:
        started = time.perf_counter()
        try:
            async with session.post(url, data=record.value, headers=headers) as resp:
                body = await resp.json(content_type=None)
                outcome = "fallback" if resp.status == 200 and body.get("fallback") else str(resp.status)
        except Exception as exc:  # counted, never raised: the run reports it
            outcomes[type(exc).__name__] += 1
            return
        outcomes[outcome] += 1
        if outcome == "200":
            latencies[record.transaction_id] = (time.perf_counter() - started) * 1000.0

    connector = aiohttp.TCPConnector(limit=256)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        loop = asyncio.get_running_loop()
        start, i, tasks = loop.time(), 0, []
        while i < len(records):
            due = min(len(records), int((loop.time() - start) * rate) + 1)
            now_ms = int(time.time() * 1000)
            while i < due:
                sent[records[i].transaction_id] = now_ms
                tasks.append(asyncio.ensure_future(call(session, records[i])))
                i += 1
            await asyncio.sleep(0.001)
        await asyncio.gather(*tasks)
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


def main() -> int:
    from flagstream.streams.api_cli import serve
    from flagstream.streams.config import Settings

    worker = subprocess.Popen([sys.executable, "-m", "flagstream.cli", "worker", "--role", "scorer",
                               "--loglevel", "warning"], env=dict(os.environ))
    try:
        asyncio.run(serve(Settings.from_env()))
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
