#!/usr/bin/env bash
# The submission entry: a dataset root in, OUT_DIR/result.json out (detection, embedding, matching).
#   ./run.sh DATA_ROOT OUT_DIR [--detector CFG WEIGHTS] [--embedders CFG WEIGHTS ...] [more pipeline options]
# CFG is a bundled config name or a YAML path; WEIGHTS '-' keeps a Lite embedder's ImageNet weights.
# Without --detector, pass --ground-truth-boxes to match annotated boxes (evaluation only).
# `./run.sh --help` (or -h) lists every option (the help of `python -m pipeline`).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -x "$here/.venv/bin/python" ]]; then
    python="$here/.venv/bin/python"
else
    python="$(command -v python3)"
fi
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
if [[ "${1:-}" == "--help" || "${1:-}" == "-h" ]]; then
    exec "$python" -m pipeline --help
fi
if [[ $# -lt 2 ]]; then
    echo "usage: $0 DATA_ROOT OUT_DIR [--detector CFG WEIGHTS] [--embedders CFG WEIGHTS ...] (--help: every option)" >&2
    exit 2
fi
exec "$python" -m pipeline "$@"
