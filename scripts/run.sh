#!/usr/bin/env bash
# The main job: creates .venv-run with the pinned runtime requirements and trains a small model
# on scikit-learn's digits with and without clipping, printing both results.
# (Becomes `gradguard compare` on a built-in task once that command exists.)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh .venv-run requirements/run.txt
.venv-run/bin/python examples/digits_clipping.py "$@"
