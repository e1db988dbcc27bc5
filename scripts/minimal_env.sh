#!/usr/bin/env bash
# The minimal environment: the core and [server] only, with no torch and no
# llama.cpp, as a user who points aligntime at their own vLLM server installs it.
# Builds a fresh virtual environment (pip's cache keeps it quick), serves an
# openai-backend policy with `aligntime serve` against the stub OpenAI server,
# drives it with the official openai client, and checks that no heavy backend
# was ever imported. scripts/test.sh runs it; run it alone with
#   bash scripts/minimal_env.sh [VENV_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${1:-${TMPDIR:-/tmp}/aligntime-minimal-env}
started=$(date +%s)
"$PY" -m venv --clear "$VENV"
# Not editable: the check runs what a wheel installs (package data included). The
# openai client that drives the server is a core dependency (the openai backend's).
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check ".[server]" \
  2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -m pip check
"$VENV/bin/python" scripts/minimal_env_check.py
echo "minimal environment: ok in $(( $(date +%s) - started )) s, $(du -sm "$VENV" | cut -f1) MB"
