"""The ``flagstream`` command: one subcommand per job, each in the module that does it.

Only the module of the subcommand being run is imported, so ``flagstream worker``
loads neither the simulator nor plotting libraries. A subcommand whose module fails
to import is an error that says why, never a subcommand that silently disappears.

>>> build_parser("worker").parse_args(["worker", "--role", "learner"]).role
'learner'
>>> sorted(COMMANDS)[:4]
['api', 'backtest', 'ceiling', 'compare-batch']
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from types import ModuleType

from flagstream.cards import install_log_masking, mask_text
from flagstream.errors import ConfigurationError

#: subcommand → (module with ``add_arguments(parser)`` and ``run(args)``, one-line help)
COMMANDS = {
    "worker": ("flagstream.streams.worker", "run a scoring/learning worker (Faust)"),
    "api": ("flagstream.streams.api_cli", "serve the synchronous scoring API (POST /v1/score)"),
    "config": ("flagstream.streams.settings_cli", "print the effective settings (secrets masked)"),
    "models": ("flagstream.streams.models_cli", "list, show, promote and roll back model versions"),
    "review-tokens": ("flagstream.streams.review_access",
                      "add, remove and list reviewers' own review page tokens"),
    "simulate": ("flagstream.simulation.simulator", "generate a recorded transaction stream"),
    "replay": ("flagstream.simulation.replay", "produce a recorded stream to the transactions topic"),
    "reviewers": ("flagstream.simulation.reviewers",
                  "simulated reviewers and chargebacks answering on feedback"),
    "backtest": ("flagstream.evaluation.backtest", "run the pipeline in-process over a recorded stream"),
    "compare-batch": ("flagstream.evaluation.compare_batch",
                      "the online model against a batch gradient-boosted model on the same features"),
    "ceiling": ("flagstream.evaluation.ceiling",
                "an oracle's ranking of a simulated test week: what its labels reveal in time"),
    "demo": ("flagstream.demo.orchestrator", "the whole product on a local broker, in accelerated time"),
}


def load(command: str) -> ModuleType:
    """The module of ``command``; raises a clear error when it cannot be imported."""
    module_name = COMMANDS[command][0]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f"flagstream {command}: cannot load {module_name}: {exc}") from exc
    for needed in ("add_arguments", "run"):
        if not hasattr(module, needed):
            raise SystemExit(f"flagstream {command}: {module_name} has no {needed}()")
    return module


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s own arguments are loaded (every name is listed)."""
    parser = argparse.ArgumentParser(prog="flagstream", description=(__doc__ or "").splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        child = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = load(name)
            module.add_arguments(child)
            child.set_defaults(command_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    install_log_masking()  # before anything logs: no card number in any log line
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    try:
        return int(args.command_module.run(args) or 0)
    except ConfigurationError as exc:  # a setting that cannot work, or a broker refusing it
        print(mask_text(f"flagstream {args.command}: {exc}"), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
