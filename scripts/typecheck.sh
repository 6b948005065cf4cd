#!/usr/bin/env bash
# Type-check the whole flagstream package with mypy.
#
# The repository keeps one folder per part (streams/, features/, ...) and pyproject.toml
# maps them into one package, flagstream.*. mypy cannot follow that mapping (it reads
# folders, not setuptools' import hook), so this script builds the package's shape out
# of symlinks under .venv/typecheck and checks that.
set -euo pipefail
cd "$(dirname "$0")/.."
MYPY=${MYPY:-.venv/bin/mypy}
tree=.venv/typecheck
rm -rf "$tree"
mkdir -p "$tree/flagstream"
for f in flagstream/*.py; do ln -s "$PWD/$f" "$tree/$f"; done
for part in features scoring sinks streams simulation evaluation perf demo; do
  ln -s "$PWD/$part" "$tree/flagstream/$part"
done
exec "$MYPY" --config-file pyproject.toml "$tree/flagstream" "$@"
