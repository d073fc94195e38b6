#!/usr/bin/env bash
# The submission entry: a dataset root in, OUT_DIR/result.json out (detection, embedding, matching).
#   ./run.sh DATA_ROOT OUT_DIR [--detector CFG WEIGHTS] [--embedders CFG WEIGHTS ...] [more pipeline options]
# CFG is a bundled config name or a YAML path; WEIGHTS '-' keeps a Lite embedder's ImageNet weights.
# Without --detector, pass --ground-truth-boxes to match annotated boxes (evaluation only).
# See `python -m metric_sub.pipeline --help` for every option.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -x "$here/.venv/bin/python" ]]; then
    python="$here/.venv/bin/python"
else
    python="$(command -v python3)"
fi
if [[ $# -lt 2 ]]; then
    echo "usage: $0 DATA_ROOT OUT_DIR [--detector CFG WEIGHTS] [--embedders CFG WEIGHTS ...]" >&2
    exit 2
fi
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" -m metric_sub.pipeline "$@"
