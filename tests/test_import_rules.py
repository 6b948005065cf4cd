"""Imports run one way, along the data's path; every module is reached as ``flagstream.*``.

The rule is read from the source (every ``import``, including those inside functions
and ``TYPE_CHECKING`` blocks), so an import hidden in a function cannot dodge it.
Each part may import only the parts listed before it in :data:`LAYERS`, and the
modules of its own part.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: part → folder, lowest first. A part may import itself and the parts above it here.
LAYERS: list[tuple[str, str]] = [
    ("flagstream.errors", "flagstream/errors.py"),
    ("flagstream.codec", "flagstream/codec.py"),
    ("flagstream.extras", "flagstream/extras.py"),
    ("flagstream.cards", "flagstream/cards.py"),
    ("flagstream.throttle", "flagstream/throttle.py"),
    ("flagstream.quick_stats", "flagstream/quick_stats.py"),
    ("flagstream.features", "features"),
    ("flagstream.scoring", "scoring"),
    ("flagstream.sinks", "sinks"),
    ("flagstream.streams", "streams"),
    ("flagstream.simulation", "simulation"),
    ("flagstream.evaluation", "evaluation"),
    ("flagstream.perf", "perf"),
    ("flagstream.demo", "demo"),
    ("flagstream.cli", "flagstream/cli.py"),
    ("flagstream.__main__", "flagstream/__main__.py"),
]
RANK = {part: rank for rank, (part, _) in enumerate(LAYERS)}
OLD_TOP_LEVEL = {"streams", "features", "scoring", "sinks", "perf", "simulation", "evaluation", "demo"}


def part_of(module: str) -> str | None:
    """The part a ``flagstream.*`` module belongs to (None for ``flagstream`` itself).

    >>> part_of("flagstream.streams.app"), part_of("flagstream.codec"), part_of("flagstream")
    ('flagstream.streams', 'flagstream.codec', None)
    """
    for part, _ in LAYERS:
        if module == part or module.startswith(part + "."):
            return part
    return None


def source_files() -> list[tuple[str, Path]]:
    out = []
    for part, folder in LAYERS:
        path = ROOT / folder
        files = [path] if path.suffix == ".py" else sorted(path.rglob("*.py"))
        out.extend((part, f) for f in files)
    return out


def imported_modules(path: Path, package: str) -> list[tuple[int, str]]:
    """Every module ``path`` imports, absolute, with its line number."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            found.extend((node.lineno, f"{module}.{alias.name}") for alias in node.names)
    return found


def module_package(part: str, path: Path) -> str:
    folder = dict(LAYERS)[part]
    if folder.endswith(".py"):
        return "flagstream"
    rel = path.relative_to(ROOT / folder).with_suffix("")
    parts = [part, *rel.parts[:-1]]
    return ".".join(parts)


def violations(files: list[tuple[str, Path]] | None = None) -> list[str]:
    problems = []
    for part, path in source_files() if files is None else files:
        package = module_package(part, path) if path.is_relative_to(ROOT) else part
        for line, module in imported_modules(path, package):
            where = f"{path.name if not path.is_relative_to(ROOT) else path.relative_to(ROOT)}:{line}"
            top = module.split(".")[0]
            if top in OLD_TOP_LEVEL:
                problems.append(f"{where} imports {module!r}: use flagstream.{module}")
                continue
            if top != "flagstream":
                continue
            target = part_of(module)
            if target is None:
                continue  # ``flagstream`` itself (version) or a name imported from it
            if RANK[target] > RANK[part]:
                problems.append(f"{where}: {part} must not import {target} ({module})")
    return problems


def test_imports_run_one_way_along_the_data_path():
    assert violations() == []


def test_the_rule_catches_imports_hidden_in_functions_and_old_names(tmp_path):
    bad = tmp_path / "probe.py"
    bad.write_text("import numpy\n\ndef f():\n    from flagstream.streams import app\n"
                   "    from ..sinks import metrics\n    import scoring.linear\n")
    assert violations([("flagstream.features", bad)]) == [
        "probe.py:4: flagstream.features must not import flagstream.streams (flagstream.streams)",
        "probe.py:4: flagstream.features must not import flagstream.streams (flagstream.streams.app)",
        "probe.py:5: flagstream.features must not import flagstream.sinks (flagstream.sinks)",
        "probe.py:5: flagstream.features must not import flagstream.sinks (flagstream.sinks.metrics)",
        "probe.py:6 imports 'scoring.linear': use flagstream.scoring.linear",
    ]


def test_every_source_file_belongs_to_a_part():
    known = {f for _, f in source_files()} | {ROOT / "flagstream" / "__init__.py"}
    for folder in ("flagstream", *sorted(OLD_TOP_LEVEL)):
        for path in (ROOT / folder).rglob("*.py"):
            assert path in known, f"{path} is in no part of LAYERS"


@pytest.mark.parametrize("module", ["streams", "features", "scoring", "sinks", "perf"])
def test_no_generic_top_level_package(module):
    """``import streams`` fails outside the repository: only ``flagstream`` is installed."""
    probe = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is not None)"
    result = subprocess.run([sys.executable, "-c", probe], cwd="/", capture_output=True, text=True)
    assert result.returncode == 0, f"a top-level {module!r} package is importable"


def test_the_worker_does_not_load_offline_parts():
    """The worker command loads neither plotting nor the simulated world."""
    probe = (
        "import sys; import flagstream.cli as c; c.build_parser(); "
        "import flagstream.streams.worker, flagstream.streams.app; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'matplotlib', 'tqdm'} "
        "or m.startswith(('flagstream.simulation', 'flagstream.evaluation', 'flagstream.perf', "
        "'flagstream.demo'))); print(bad); sys.exit(bool(bad))"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd="/", capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


#: Where other libraries' private names may be touched: Faust, aiokafka and
#: prometheus-client in one package, River in one module.
COMPAT = ROOT / "streams" / "compat"
RIVER_COMPAT = ROOT / "scoring" / "river_compat.py"


def private_reads(path: Path) -> list[str]:
    """``obj._name`` reads of another object's private attribute, and private imports.

    ``self._x`` and ``cls._x`` are an object's own business; dunders are public.
    """
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            owner = node.value
            if not (isinstance(owner, ast.Name) and owner.id in {"self", "cls"}):
                found.append(f"{path.name}:{node.lineno} .{node.attr}")
        elif isinstance(node, ast.ImportFrom) and not node.level:
            if (node.module or "").split(".")[0] != "flagstream":
                found.extend(f"{path.name}:{node.lineno} import {a.name}"
                             for a in node.names if _private(a.name))
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_private_names_of_other_libraries_are_touched_only_in_compat():
    outside = [f for _, f in source_files() if not f.is_relative_to(COMPAT) and f != RIVER_COMPAT]
    found = [hit for f in outside for hit in private_reads(f)]
    assert found == []


def test_the_private_name_check_sees_reads_and_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("from faust.streams import _current_event\n"
                     "def f(store, self):\n    return store._db, self._mine, store.__dict__\n")
    assert private_reads(probe) == ["probe.py:1 import _current_event", "probe.py:3 ._db"]


@pytest.mark.slow
def test_the_wheel_installs_one_top_level_package_with_every_part(tmp_path):
    """What ``pip install .`` puts in site-packages: ``flagstream/`` and its dist-info only."""
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("flagstream-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"flagstream"}
    for part in ("features", "scoring", "sinks", "streams", "streams/compat", "simulation",
                 "evaluation", "perf", "perf/bench", "demo"):
        assert f"flagstream/{part}/__init__.py" in names, part
    assert "flagstream/sinks/review/static/review.html" in names
