#!/usr/bin/env bash
# Install shopmatch's pinned dependencies into a fresh virtual environment.
#   docker/install.sh VENV_DIR [--editable]
# --editable also installs this checkout into the venv (for development); the
# container images instead run the code from /app on PYTHONPATH.
# The readme's install command and the image builds both run this script.
set -euo pipefail
venv=${1:?usage: docker/install.sh VENV_DIR [--editable]}
mode=${2:-}
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python=${PYTHON:-python3}

"$python" -m venv "$venv"
"$venv/bin/python" -m pip install -r "$repo/requirements.txt"
case "$mode" in
    --editable) "$venv/bin/python" -m pip install --no-deps -e "$repo" ;;
    "") ;;
    *) echo "docker/install.sh: unknown option $mode" >&2; exit 2 ;;
esac
