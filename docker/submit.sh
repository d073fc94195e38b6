#!/usr/bin/env bash
# Contest submission entry of the bbox_sub and metric_sub images (and usable outside them).
#   docker/submit.sh encode|match [more run.sh options]
# encode: every clip and item read once, detected and embedded (stored in WORK_DIR); match: the whole
# pipeline, reusing what encode stored, then copies result.json to RESULT_PATH. Every path is an
# environment variable whose default is the contest's layout:
#   DATA_ROOT=/tcdata/test_dataset_fs WORK_DIR=/myspace/shopmatch RESULT_PATH=/myspace/result.json
#   MODELS=/models/models.yaml   (the model set: what python -m pipeline.demo writes, or your own)
#   DETECTOR="CFG WEIGHTS", EMBEDDERS="CFG WEIGHTS ..."   (optional: replace the model set's)
set -euo pipefail
stage=${1:?usage: docker/submit.sh encode|match [run.sh options]}
shift
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
data=${DATA_ROOT:-/tcdata/test_dataset_fs}
work=${WORK_DIR:-/myspace/shopmatch}
result=${RESULT_PATH:-/myspace/result.json}
args=("$data" "$work" --models "${MODELS:-/models/models.yaml}" --no-progress)
if [[ -n "${DETECTOR:-}" ]]; then read -r -a detector <<< "$DETECTOR"; args+=(--detector "${detector[@]}"); fi
if [[ -n "${EMBEDDERS:-}" ]]; then read -r -a embedders <<< "$EMBEDDERS"; args+=(--embedders "${embedders[@]}"); fi
args+=("$@")

case "$stage" in
    encode)
        exec "$here/run.sh" "${args[@]}" --stop-after encode
        ;;
    match)
        "$here/run.sh" "${args[@]}"
        mkdir -p "$(dirname "$result")"
        cp "$work/result.json" "$result.tmp" && mv "$result.tmp" "$result"
        echo "result: $result"
        ;;
    *)
        echo "docker/submit.sh: stage must be encode or match, not $stage" >&2
        exit 2
        ;;
esac
