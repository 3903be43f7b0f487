#!/usr/bin/env bash
# Creates .venv (Python 3.11) and installs fedlstm with its pinned dependencies. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "fedlstm needs Python 3.11 (found $("$PY" --version)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.fedlstm-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "installing fedlstm and its pinned dependencies into .venv (log: .venv/pip.log)" >&2
  if ! .venv/bin/python -m pip install -e '.[test]' >.venv/pip.log 2>&1; then
    tail -n 40 .venv/pip.log >&2
    exit 1
  fi
  .venv/bin/python -c 'import fedlstm, torch' && touch "$stamp"
fi
