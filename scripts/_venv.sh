# Sourced by the scripts: create the virtual environment $1 (if missing) and install the
# pinned requirements file $2 plus gradguard itself (editable) into it.
set -euo pipefail
venv="$1"; reqs="$2"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
stamp="$venv/.installed-$(cat "$reqs" requirements/run.txt pyproject.toml | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$reqs" 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" || true
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e . 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" || true
  "$venv/bin/python" -c "import torch, gradguard; print('torch', torch.__version__, '| gradguard', gradguard.__version__)"
  touch "$stamp"
fi
