#!/usr/bin/env bash
# Install the core at the lower bounds pyproject.toml claims, in a throwaway
# virtual environment, and run the tests that need nothing but the core.
# Usage: bash scripts/lower_bounds.sh [VENV_DIR]   (default: a temporary folder)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${1:-$(mktemp -d)/venv}
# Keep in step with [project] dependencies in pyproject.toml.
LOWER=(pydantic==2.9.0 PyYAML==6.0.1 typer==0.19.2 rich==13.7.0 numpy==1.26.0 openai==3.57.0
  httpx2==2.12.0)
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${LOWER[@]}" pytest==9.0.3 \
  2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e . \
  2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -m pip check
"$VENV/bin/python" -m pip list --format=freeze | grep -iE "^(pydantic|pyyaml|typer|rich|numpy|openai|httpx2|click)=="
"$VENV/bin/aligntime" --help > /dev/null
"$VENV/bin/aligntime" policies list --json > /dev/null
"$VENV/bin/python" -m pytest -q -p no:cacheprovider \
  tests/unit/test_policy.py tests/unit/test_combine.py tests/unit/test_prompting.py \
  tests/unit/test_rules.py tests/unit/test_strategies.py tests/unit/test_eval_metrics.py \
  tests/unit/test_cli_conventions.py tests/unit/test_openai_generator.py \
  -k "not serve and not piped_prompt and not judge and not example_policy"
