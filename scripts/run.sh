#!/usr/bin/env bash
# The main job: creates .venv-run with the pinned runtime requirements and runs
# `gradguard compare` with no arguments (digits; Adam with five clip settings and four other
# optimizers with and without clipping; 3 seeds), writing gradguard-runs/main/report.html.
# Extra arguments go to `gradguard compare` (e.g. --task adding). Re-running resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh .venv-run requirements/run.txt
.venv-run/bin/gradguard compare "$@"
