"""``flagstream api``: the synchronous scoring API as its own process.

It needs a running worker (the worker decides; the API asks it through Kafka) and
``FLAGSTREAM_API_KEY``. Stop it with SIGTERM or SIGINT: calls in flight are answered
(or fall back) before it closes.

>>> parser = __import__("argparse").ArgumentParser(); add_arguments(parser)
>>> parser.parse_args(["--port", "7000"]).port
7000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from aiohttp import web

from flagstream.streams.api_answers import AnswerBook
from flagstream.streams.api_kafka import KafkaLink
from flagstream.streams.api_service import ScoringApi
from flagstream.streams.config import Settings
from flagstream.streams.kafka_access import require_access
from flagstream.streams.topics import create_topics

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--broker", help="Kafka bootstrap servers (FLAGSTREAM_BROKER)")
    parser.add_argument("--host", help="address to listen on (FLAGSTREAM_API_HOST)")
    parser.add_argument("--port", type=int, help="port to listen on (FLAGSTREAM_API_PORT)")


def run(args: argparse.Namespace) -> int:
    overrides = {name: value for name, value in (
        ("broker", args.broker), ("api_host", args.host), ("api_port", args.port)) if value is not None}
    settings = Settings.from_env(**overrides)
    if not settings.api_key:
        print("flagstream api: set FLAGSTREAM_API_KEY (at least 16 characters) first", file=sys.stderr)
        return 2
    require_access(settings)
    asyncio.run(serve(settings))
    return 0


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Serve the API until ``stop`` is set (or SIGTERM/SIGINT)."""
    await create_topics(settings)
    book = AnswerBook(settings.api_answers)
    link = KafkaLink(settings, book)
    api = ScoringApi(settings, book, link)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    await link.start()
    runner = web.AppRunner(api.application(), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.api_host, settings.api_port)
        await site.start()
        log.info("scoring API listening on http://%s:%d/v1/score", settings.api_host, settings.api_port)
        await stop.wait()
    finally:
        await runner.cleanup()
        await link.stop()
