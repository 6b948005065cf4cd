"""``flagstream models``: list, show, promote, roll back and submit model versions.

It reads the compacted ``models`` topic to its end and writes new registry records;
every worker follows them within a second or so (see :mod:`flagstream.streams.model_sync`).

>>> import argparse
>>> parser = argparse.ArgumentParser(prog="models"); add_arguments(parser)
>>> args = parser.parse_args(["rollback", "--reason", "bad precision"])
>>> args.action, args.to, args.reason
('rollback', None, 'bad precision')
>>> print(format_rows([{"version": "lr-000003", "status": "champion", "labels": 120,
...                     "gate": {"n": 100, "loss": 0.1234}, "history": []}]))
VERSION    STATUS    LABELS  GATE N  LOSS    SINCE  REASON
lr-000003  champion  120     100     0.1234  -      -
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from flagstream.errors import ConfigurationError
from flagstream.scoring.registry import RegistryError
from flagstream.streams.config import Settings
from flagstream.streams.kafka_access import require_access
from flagstream.streams.registry_client import RegistryClient

COLUMNS = ("VERSION", "STATUS", "LABELS", "GATE N", "LOSS", "SINCE", "REASON")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--broker", help="Kafka bootstrap servers (FLAGSTREAM_BROKER)")
    sub = parser.add_subparsers(dest="action", required=True)
    ls = sub.add_parser("list", help="the newest version of each model, with its status")
    ls.add_argument("--all", action="store_true", help="every version record")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    show = sub.add_parser("show", help="one version: status history, gate numbers")
    show.add_argument("version")
    show.add_argument("--state", action="store_true", help="include the model state")
    promote = sub.add_parser("promote", help="make VERSION the champion")
    promote.add_argument("version")
    promote.add_argument("--reason", required=True)
    rollback = sub.add_parser("rollback", help="return to the previous champion (or --to VERSION)")
    rollback.add_argument("--to", help="version to return to (default: the previous champion)")
    rollback.add_argument("--reason", required=True)
    submit = sub.add_parser("submit", help="offer a model state (JSON file) as a shadow candidate")
    submit.add_argument("file", type=Path, help="JSON from LinearChampion.to_state()")
    submit.add_argument("--name", required=True, help="lineage name for its versions")
    submit.add_argument("--reason", required=True)
    submit.add_argument("--cutoff", type=float, default=0.0,
                        help="score only events whose champion score is at least this")


def _when(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_rows(rows: list[dict]) -> str:
    """A plain-text table of registry rows."""
    table = [COLUMNS]
    for r in rows:
        gate = r.get("gate") or {}
        last = (r.get("history") or [{}])[-1]
        loss = gate.get("loss")
        table.append((
            r["version"], r["status"], str(r.get("labels", "")), str(gate.get("n", "-")),
            f"{loss:.4f}" if isinstance(loss, float) else "-", _when(last.get("at_ms")),
            last.get("reason", "-"),
        ))
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip()
                     for row in table)


def _by() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no user name in some containers
        return "cli"


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    out = sys.stdout
    async with RegistryClient(settings) as client:  # signs with the workers' model key
        if args.action == "list":
            view = await client.read()
            rows = view.rows(every=args.all)
            if args.json:
                out.write(json.dumps([{k: v for k, v in r.items() if k != "state"} for r in rows],
                                     indent=2) + "\n")
            else:
                out.write(format_rows(rows) + "\n")
            for key, why in view.refused.items():
                print(f"refused {key.decode(errors='replace')}: {why}", file=sys.stderr)
        elif args.action == "show":
            view = await client.read()
            record = dict(view.version(args.version))
            record["status"] = view.status(record)
            if not args.state:
                record.pop("state", None)
            out.write(json.dumps(record, indent=2) + "\n")
        elif args.action == "promote":
            seat = await client.promote(args.version, args.reason, _by())
            out.write(f"champion is now {seat['version']} (epoch {seat['epoch']}, was {seat['from']})\n")
        elif args.action == "rollback":
            seat = await client.rollback(args.to, args.reason, _by())
            out.write(f"rolled back to {seat['version']} (epoch {seat['epoch']}, was {seat['from']})\n")
        elif args.action == "submit":
            state = json.loads(args.file.read_text())
            record = await client.submit(args.name, state, args.reason, _by(), args.cutoff)
            out.write(f"candidate {record['lineage']} submitted; the learner will shadow it\n")
    return 0


def run(args: argparse.Namespace) -> int:
    """Carry out one ``models`` command; 2 on a registry error (message on stderr)."""
    overrides = {"broker": args.broker} if args.broker else {}
    try:
        settings = Settings.from_env(**overrides)
        require_access(settings)
        return asyncio.run(_run(args, settings))
    except (RegistryError, ConfigurationError) as exc:
        print(f"flagstream models: {exc}", file=sys.stderr)
        return 2
