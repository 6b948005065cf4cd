"""The ``flagstream`` command.

>>> build_parser().parse_args(["worker", "--role", "learner"]).command
'worker'
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

#: subcommand → (module with add_arguments/run, one-line help)
COMMANDS = {
    "worker": ("streams.worker", "run a scoring/learning worker (Faust)"),
    "simulate": ("perf.simulator", "generate a recorded transaction stream"),
    "replay": ("perf.replay", "produce a recorded stream to the transactions topic"),
    "reviewers": ("perf.reviewers", "simulated reviewers and chargebacks answering on feedback"),
    "backtest": ("perf.backtest", "run the pipeline in-process over a recorded stream"),
    "models": ("scoring.registry_cli", "list, show, promote and roll back model versions"),
    "demo": ("perf.demo", "the whole product on a local broker, in accelerated time"),
}


def _load(module: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flagstream", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        mod = _load(module)
        if mod is None or not hasattr(mod, "add_arguments") or not hasattr(mod, "run"):
            continue
        command = sub.add_parser(name, help=help_text, description=help_text)
        mod.add_arguments(command)
        command.set_defaults(_module=mod)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = build_parser().parse_args(argv)
    return int(args._module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
