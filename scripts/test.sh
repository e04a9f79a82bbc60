#!/usr/bin/env bash
# Sets up (Debian packages, pip install -e .[dev]), runs the linters, then the whole test suite.
# The linters (ruff check, ruff format --check, mypy: configured in pyproject.toml) all run and
# report before the script stops on any of them. Exit 5 from pytest (no test collected) counts
# as a failure here: a suite that ran nothing has shown nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
export PYTHONUNBUFFERED=1

failed=()
lint() {
  local name="$1"
  shift
  echo "test.sh: $name" >&2
  "$@" || failed+=("$name")
}
lint "ruff check" python3 -m ruff check .
lint "ruff format --check" python3 -m ruff format --check .
lint "mypy" python3 -m mypy
if [ "${#failed[@]}" -gt 0 ]; then
  printf 'test.sh: FAILED: %s (see its output above; the tests did not run)\n' "${failed[@]}" >&2
  exit 1
fi

python3 -m pytest tests -q -rs -p no:cacheprovider --durations=15 "$@"  # -rs: every skip says why
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "test.sh: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
