#!/usr/bin/env bash
# Mutation testing of the modules that decide what a user sees: the gates
# (scorers/combine.py), the strategies, the server's keys and rate limit
# (server/security.py) and the evaluation estimators (evaluation/metrics.py).
#
# mutmut changes the code one small edit at a time ("mutants") and runs these
# modules' own unit tests against each; a mutant the tests still pass is a
# regression they would not notice. The run works on a copy of the tree in a
# temporary folder, so the working tree is never touched, and prints the kill
# rate per module (scripts/mutation_report.py): killed / (mutants - equivalent),
# where equivalent mutants change no behaviour (reason texts nothing shows, and
# the hand-judged entries of scripts/mutation-equivalent.txt, each with its why);
# every other survivor is printed with its diff. Log calls are not mutated.
# Not part of CI: about ten minutes on two busy cores.
#
#   bash scripts/mutation.sh                 # the working tree as it is
#   bash scripts/mutation.sh --ref a3c301b   # src and tests of a commit
#   bash scripts/mutation.sh --keep          # keep the temporary copy (mutmut show/browse there)
#   bash scripts/mutation.sh --jobs 1        # fewer parallel test processes (default 2)
#   bash scripts/mutation.sh combine         # only modules whose path contains "combine"
#
# Needs the dev extra (`pip install -e '.[dev]'`, which pins mutmut).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}

REF=""
KEEP=0
JOBS=2
FILTERS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --ref) REF=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --jobs) JOBS=$2; shift 2 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    -*) echo "mutation.sh: unknown option $1" >&2; exit 2 ;;
    *) FILTERS+=("$1"); shift ;;
  esac
done

# Each module and the unit tests that are its own; files that do not exist in
# the tree being tested (an older --ref) are left out.
MODULES=(
  src/aligntime/scorers/combine.py
  src/aligntime/strategies/base.py
  src/aligntime/strategies/best_of_n.py
  src/aligntime/strategies/rejection.py
  src/aligntime/strategies/soft.py
  src/aligntime/strategies/vote.py
  src/aligntime/strategies/passthrough.py
  src/aligntime/strategies/adaptive.py
  src/aligntime/strategies/early_rejection.py
  src/aligntime/strategies/guided.py
  src/aligntime/server/security.py
  src/aligntime/evaluation/metrics.py
)
TESTS=(
  tests/unit/test_combine.py
  tests/unit/test_strategies.py
  tests/unit/test_search.py
  tests/unit/test_search_behaviour.py
  tests/unit/test_gates_mutants.py
  tests/unit/test_server_limits.py
  tests/unit/test_security_behaviour.py
  tests/unit/test_eval_metrics.py
)

if ! "$PY" -c "import mutmut" 2>/dev/null; then
  echo "mutation.sh: mutmut is not installed in $PY; run: $PY -m pip install -e '.[dev]'" >&2
  exit 2
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/aligntime-mutation.XXXXXX")
if [ "$KEEP" = 1 ]; then
  echo "mutation.sh: working copy kept in $WORK"
else
  trap 'rm -rf "$WORK"' EXIT
fi

if [ -n "$REF" ]; then
  git archive "$REF" src tests bench examples pyproject.toml | tar -x -C "$WORK"
else
  tar -c --exclude=__pycache__ --exclude=.pytest_cache src tests bench examples pyproject.toml | tar -x -C "$WORK"
fi
cd "$WORK"

selected_modules=()
for m in "${MODULES[@]}"; do
  [ -f "$m" ] || continue
  if [ ${#FILTERS[@]} -gt 0 ]; then
    keep=0
    for f in "${FILTERS[@]}"; do [[ "$m" == *"$f"* ]] && keep=1; done
    [ "$keep" = 1 ] || continue
  fi
  selected_modules+=("$m")
done
selected_tests=()
for t in "${TESTS[@]}"; do [ -f "$t" ] && selected_tests+=("$t"); done
if [ ${#selected_modules[@]} -eq 0 ]; then
  echo "mutation.sh: no module matches ${FILTERS[*]}" >&2
  exit 2
fi

# mutmut reads [tool.mutmut] from pyproject.toml; only the copy gets it.
"$PY" - "${#selected_modules[@]}" "${selected_modules[@]}" "${selected_tests[@]}" <<'EOF'
import json
import sys

count = int(sys.argv[1])
modules, tests = sys.argv[2 : 2 + count], sys.argv[2 + count :]
with open("pyproject.toml", "a", encoding="utf-8") as fh:
    fh.write("\n[tool.mutmut]\n")
    fh.write('source_paths = ["src"]\n')
    # Tests read the benches and example policies.
    fh.write('also_copy = ["bench", "examples"]\n')
    # Log calls are left alone: their wording is for operators, not behaviour under test
    # (that no prompt or answer is logged is tests/unit/test_no_logging_of_text.py's job).
    log_call = r"^\s*log\.(debug|info|warning|error|exception)\("
    fh.write(f"do_not_mutate_patterns = {json.dumps([log_call])}\n")
    fh.write(f"only_mutate = {json.dumps(modules)}\n")
    fh.write(f"pytest_add_cli_args_test_selection = {json.dumps(tests)}\n")
    fh.write('pytest_add_cli_args = ["-q", "-p", "no:cacheprovider"]\n')
EOF

echo "mutation.sh: ${#selected_modules[@]} modules, tests: ${selected_tests[*]}"
start=$(date +%s)
# Single-threaded torch and BLAS: two parallel test processes on two cores.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
nice -n 10 "$PY" -m mutmut run --max-children "$JOBS" >"$WORK/mutmut-run.log" 2>&1 || {
  echo "mutation.sh: mutmut run failed; its log:" >&2
  tail -n 40 "$WORK/mutmut-run.log" >&2
  exit 1
}
elapsed=$(( $(date +%s) - start ))

echo "mutation.sh: mutmut run took $elapsed s ($JOBS parallel test processes)"
"$PY" "$ROOT/scripts/mutation_report.py" "$ROOT/scripts/mutation-equivalent.txt" "${selected_modules[@]}"
