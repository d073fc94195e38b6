#!/usr/bin/env bash
# Start the REST matching service (the service image's entry point; usable outside it).
#   docker/serve.sh [more `python -m service` options]
# DATA_DIR (gallery), SERVICE_CONFIG (settings YAML), HOST and PORT come from the environment.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -x "$here/.venv/bin/python" ]]; then python="$here/.venv/bin/python"; else python="$(command -v python3)"; fi
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" -m service --data-dir "${DATA_DIR:-/data/gallery}" \
    --config "${SERVICE_CONFIG:-$here/docker/service.yaml}" \
    --host "${HOST:-0.0.0.0}" --port "${PORT:-8000}" "$@"
