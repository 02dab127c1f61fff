#!/usr/bin/env bash
# The only entry point a user needs. Creates .venv from requirements.txt on first use (again only when the
# requirements change), then runs `python -m pipeline COMMAND ...`, `pytest` (test) or a benchmark (bench).
# PIPELINE_PYTHON=/path/to/python uses an environment you manage instead (a GPU image, a cluster's env): no .venv.
set -euo pipefail
cd "$(dirname "$0")"
VENV=.venv
if [ -n "${PIPELINE_PYTHON:-}" ]; then
  RUN_PY=$PIPELINE_PYTHON
else
  PY=${PYTHON:-python3}
  stamp="$VENV/.requirements.sha256"
  want=$(sha256sum requirements.txt | cut -d' ' -f1)
  if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "[setup] installing the pinned requirements into $VENV (first use only)" >&2
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q -r requirements.txt >&2
    echo "$want" > "$stamp"
  fi
  RUN_PY=$VENV/bin/python
fi
export PYTHONUNBUFFERED=1
cmd=${1:-help}
case "$cmd" in
  test)
    shift
    # the architecture first (import-linter: contracts in pyproject.toml), then the tests
    "$RUN_PY" -c 'import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())' \
      --no-logo --no-cache
    exec "$RUN_PY" -m pytest "$@"
    ;;
  bench)
    shift
    what=${1:?usage: ./run.sh bench train|tta|features|blend|patches|executors|device|budget|export|chaos [options]}
    shift
    exec "$RUN_PY" -m "bench.$what" "$@"
    ;;
  help|-h|--help)
    exec "$RUN_PY" -m pipeline --help
    ;;
  *)
    exec "$RUN_PY" -m pipeline "$@"
    ;;
esac
