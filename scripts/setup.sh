#!/usr/bin/env bash
# Set up dcmnode on a fresh machine: a virtual environment in .venv with dcmnode and its dependencies.
#   bash scripts/setup.sh          the node
#   bash scripts/setup.sh --test   the node, the test dependencies and the Debian packages the tests use (dcmtk)
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[[ "${1:-}" == "--test" ]] && want_test=1

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

if [[ $want_test -eq 1 ]] && ! command -v storescu >/dev/null; then
  echo "setup: installing Debian packages for the tests (dcmtk)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dcmtk >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi

extras=""
[[ $want_test -eq 1 ]] && extras="[test]"
stamp=".venv/.dcmnode-installed$extras"
if [[ ! -f "$stamp" || pyproject.toml -nt "$stamp" ]]; then
  echo "setup: installing dcmnode$extras and its dependencies into .venv"
  # The CPU build of torch first, pinned: an unpinned torch would pull a multi-GB CUDA build.
  .venv/bin/pip install -q "torch==2.13.0"
  .venv/bin/pip install -q -e ".$extras"
  touch "$stamp"
fi
