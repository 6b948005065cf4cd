"""Who may review: reviewer tokens in the data directory, and ``flagstream review-tokens``.

``flagstream review-tokens add NAME`` makes a token for one reviewer, prints it once
and keeps only its SHA-256 in ``<FLAGSTREAM_DATA_DIR>/reviewers.json``; a running
worker picks it up at once. ``remove NAME`` withdraws it (the reviewer's sessions
end); ``list`` names the reviewers. ``FLAGSTREAM_REVIEW_TOKEN``, when set, is one
more token, the reviewer :data:`ADMIN`'s.

A worker that serves the review page while nobody has a token makes one for
:data:`ADMIN` at start and prints it on the console: printed, never logged, and only
then (its hash is stored like any other).

>>> import contextlib, io, tempfile
>>> settings = Settings(data_dir=tempfile.mkdtemp())
>>> added, listed = io.StringIO(), io.StringIO()
>>> with contextlib.redirect_stdout(added):
...     status = run(argparse.Namespace(action="add", name="Ana Ruiz"), settings)
>>> with contextlib.redirect_stdout(listed):
...     _ = run(argparse.Namespace(action="list", name=None), settings)
>>> token = added.getvalue().split()[-1]
>>> status, reviewer_tokens(settings).match(token).reviewer, listed.getvalue().splitlines()
(0, 'Ana Ruiz', ['Ana Ruiz'])
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from flagstream.errors import ConfigurationError
from flagstream.sinks.review.credentials import REVIEWERS_FILE, BadReviewerName, ReviewerTokens
from flagstream.streams.config import Settings

#: The reviewer whose token ``FLAGSTREAM_REVIEW_TOKEN`` is, and who gets the first token.
ADMIN = "admin"


def reviewer_tokens(settings: Settings) -> ReviewerTokens:
    """The reviewers' tokens of this data directory, and the configured one (as :data:`ADMIN`)."""
    tokens = ReviewerTokens(settings.data_path / REVIEWERS_FILE)
    if settings.review_token:
        tokens.allow(ADMIN, settings.review_token.reveal())
    return tokens


def ensure_a_reviewer(tokens: ReviewerTokens, console: TextIO | None = None) -> str | None:
    """Make a token for :data:`ADMIN` if nobody has one, print it once on ``console``; return it.

    The token goes to the console (standard output), not to the logging system: logs
    are shipped and kept, and a token in them is a token for whoever reads them.
    """
    if len(tokens):
        return None
    token = tokens.add(ADMIN)
    print(
        "\n" + "=" * 78 + "\n"
        f"No reviewer had a token, so this one was made for the reviewer {ADMIN!r}.\n"
        "It is shown only now (only its hash is kept). Sign in at /review/login with it:\n\n"
        f"    {token}\n\n"
        "Give each reviewer their own: flagstream review-tokens add NAME\n" + "=" * 78,
        file=console or sys.stdout, flush=True,
    )
    return token


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("add", "remove", "list"),
                        help="add: make (or replace) NAME's token and print it once; "
                             "remove: withdraw NAME's token; list: name the reviewers")
    parser.add_argument("name", nargs="?", help="the reviewer, as labels will name them")


def run(args: argparse.Namespace, settings: Settings | None = None) -> int:
    try:
        settings = settings or Settings.from_env()
    except ConfigurationError as exc:
        print(f"flagstream review-tokens: {exc}", file=sys.stderr)
        return 2
    tokens = ReviewerTokens(settings.data_path / REVIEWERS_FILE)
    if args.action == "list":
        for name in tokens.names():
            print(name)
        return 0
    if not args.name:
        print(f"flagstream review-tokens {args.action}: name the reviewer", file=sys.stderr)
        return 2
    try:
        if args.action == "add":
            token = tokens.add(args.name)
            print(f"token for {args.name.strip()!r} (shown once; only its hash is kept in "
                  f"{tokens.path}):\n{token}")
            return 0
    except BadReviewerName as exc:
        print(f"flagstream review-tokens add: {exc}", file=sys.stderr)
        return 2
    if not tokens.remove(args.name):
        print(f"flagstream review-tokens remove: {args.name!r} has no token", file=sys.stderr)
        return 1
    print(f"withdrew {args.name!r}'s token; their sessions end at their next request")
    return 0
