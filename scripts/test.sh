#!/usr/bin/env bash
# Sets up (Debian packages, pip install -e .[dev]) and runs the whole test suite.
# Exit 5 from pytest (no test collected) counts as a failure here: a suite that ran
# nothing has shown nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
export PYTHONUNBUFFERED=1
python3 -m pytest tests -q -p no:cacheprovider --durations=15 "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "test.sh: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
