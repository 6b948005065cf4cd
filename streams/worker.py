"""Start a worker: create the topics, then run the Faust app for one role.

>>> parser = __import__("argparse").ArgumentParser(); add_arguments(parser)
>>> parser.parse_args(["--role", "scorer"]).role
'scorer'
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from flagstream.cards import install_log_masking
from flagstream.streams.agents import build_app
from flagstream.streams.app import ROLES
from flagstream.streams.compat import check_versions
from flagstream.streams.compat.internals import DeadlineWorker
from flagstream.streams.config import Settings
from flagstream.streams.core import warm_up
from flagstream.streams.kafka_access import require_access
from flagstream.streams.topics import create_topics

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--role", choices=ROLES, default="all", help="what this worker does")
    parser.add_argument("--broker", help="Kafka bootstrap servers (FLAGSTREAM_BROKER)")
    parser.add_argument("--web-port", type=int, help="metrics/review port (FLAGSTREAM_WEB_PORT)")
    parser.add_argument("--data-dir", help="RocksDB table directory (FLAGSTREAM_DATA_DIR)")
    parser.add_argument("--loglevel", default="info")


def settings_from(args: argparse.Namespace) -> Settings:
    overrides = {
        name: value
        for name, value in (
            ("broker", args.broker),
            ("web_port", args.web_port),
            ("data_dir", args.data_dir),
        )
        if value is not None
    }
    return Settings.from_env(**overrides)


def run(args: argparse.Namespace) -> int:
    """Create topics and run the worker until interrupted (SIGTERM/SIGINT: within the deadline)."""
    install_log_masking()  # (again, for callers that skip the CLI): logs never carry a card number
    check_versions()  # before anything touches Faust's internals
    settings = settings_from(args)
    require_access(settings)  # a refused login ends the worker here, not in endless retries
    warm_up()  # compile the Numba kernels before the first batch, not during it
    asyncio.run(create_topics(settings))
    pipeline = build_app(settings, args.role)
    log.info("starting %s worker on %s", args.role, settings.broker)
    worker = DeadlineWorker(pipeline.app, deadline_s=settings.shutdown_deadline_s,
                            loglevel=args.loglevel, quiet=True)
    worker.execute_from_commandline()
    return 0
