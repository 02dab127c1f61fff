#!/usr/bin/env bash
# The only entry point a user needs. Creates .venv from requirements.txt on first use (again only when the
# requirements change), then runs `python -m pipeline COMMAND ...`, `pytest` (test) or a benchmark (bench).
set -euo pipefail
cd "$(dirname "$0")"
VENV=.venv
PY=${PYTHON:-python3}
stamp="$VENV/.requirements.sha256"
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing the pinned requirements into $VENV (first use only)" >&2
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q -r requirements.txt >&2
  echo "$want" > "$stamp"
fi
export PYTHONUNBUFFERED=1
cmd=${1:-help}
case "$cmd" in
  test)
    shift
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  bench)
    shift
    what=${1:?usage: ./run.sh bench train|features|tta [options]}
    shift
    exec "$VENV/bin/python" -m "bench.$what" "$@"
    ;;
  help|-h|--help)
    exec "$VENV/bin/python" -m pipeline --help
    ;;
  *)
    exec "$VENV/bin/python" -m pipeline "$@"
    ;;
esac
