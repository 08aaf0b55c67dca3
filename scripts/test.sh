#!/usr/bin/env bash
# The test command: creates .venv with the pinned dev requirements, then lints, type-checks
# and runs the whole test suite (doctests included).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh .venv requirements/dev.txt
.venv/bin/ruff check src tests examples
.venv/bin/mypy
.venv/bin/python -m pytest tests src/gradguard -q "$@"
