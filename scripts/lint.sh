#!/usr/bin/env bash
# The static checks CI runs before the tests: ruff (lint and format) and mypy --strict over src/dcmnode.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test >/dev/null
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
.venv/bin/mypy
