"""Every docstring example in the package runs as a test (the documentation is a regression test).

Modules are imported by their ``flagstream.*`` names, never by file path, so no module
is ever imported twice under two names.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Every package the distribution installs, as pyproject.toml lists them.
PACKAGES = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]

#: Modules that do something when imported (``python -m`` entry points).
ENTRY_POINTS = {"__main__"}


def all_modules() -> list[str]:
    names = set()
    for package in PACKAGES:
        imported = importlib.import_module(package)
        if imported.__file__ is None:
            continue  # a data folder (no __init__.py)
        names.add(package)
        path = imported.__path__
        for info in pkgutil.iter_modules(path, package + "."):
            if not info.ispkg and info.name.rsplit(".", 1)[-1] not in ENTRY_POINTS:
                names.add(info.name)
    return sorted(names)


def test_every_part_is_found():
    parts = {name.split(".")[1] for name in all_modules() if name.count(".") >= 1}
    assert {"features", "scoring", "sinks", "streams", "simulation", "evaluation", "perf", "demo"} <= parts


@pytest.mark.parametrize("name", all_modules())
def test_docstring_examples(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, name):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
