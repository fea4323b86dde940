#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite. Extra arguments go to pytest.
# --quick (first argument): the developers' loop, without the learned SR, Orthanc-peer and browser tests.
set -euo pipefail
cd "$(dirname "$0")/.."
quick=()
if [[ "${1:-}" == "--quick" ]]; then
  shift
  quick=(-m "not learned_sr and not orthanc and not browser")
fi
bash scripts/setup.sh --test
exec .venv/bin/python -m pytest "${quick[@]}" "$@"
