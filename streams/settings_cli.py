"""``flagstream config``: the effective settings, from the environment, with secrets masked.

>>> import argparse, contextlib, io
>>> out = io.StringIO()
>>> with contextlib.redirect_stdout(out):
...     _ = run(argparse.Namespace(), environ={"FLAGSTREAM_SASL_PASSWORD": "hunter2"})
>>> "FLAGSTREAM_SASL_PASSWORD=***" in out.getvalue(), "hunter2" in out.getvalue()
(True, False)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping

from flagstream.errors import ConfigurationError
from flagstream.streams.config import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options: the settings come from ``FLAGSTREAM_*`` variables."""


def run(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> int:
    try:
        settings = Settings.from_env(environ)
    except ConfigurationError as exc:
        print(f"flagstream config: {exc}", file=sys.stderr)
        return 2
    for name, shown in settings.describe():
        print(f"{name}={shown}")
    return 0
