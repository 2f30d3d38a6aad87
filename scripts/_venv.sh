# Sourced by scripts/serve and scripts/test: make .venv with the project installed in it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"

need_python() {
  if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "ingest needs Python 3.11 or newer as '$PY' (set PYTHON=/path/to/python3.11)" >&2
    exit 1
  fi
  if ! "$PY" -c 'import venv, ensurepip' 2>/dev/null; then
    as_root apt-get update -qq
    as_root apt-get install -y -qq python3-venv
  fi
}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

ensure_venv() {
  local extras="$1"
  need_python
  # scripts/serve and scripts/test may start together: one installs into .venv at a time.
  exec 9>"$ROOT/.venv.lock"
  flock 9
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  local stamp="$VENV/.installed-$extras"
  if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip
    if [ "$extras" = base ]; then
      "$VENV/bin/python" -m pip install -q -e "$ROOT"
    else
      "$VENV/bin/python" -m pip install -q -e "$ROOT[$extras]"
    fi
    touch "$stamp"
  fi
  flock -u 9
}
