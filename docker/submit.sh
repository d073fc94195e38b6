#!/usr/bin/env bash
# Contest submission entry of the bbox_sub and metric_sub images (and usable outside them).
#   docker/submit.sh detect|match [more run.sh options]
# detect: stage 1 only (boxes cached in WORK_DIR); match: the whole pipeline, reusing those boxes,
# then copies result.json to RESULT_PATH. Every path and model is an environment variable whose
# default is the contest's layout:
#   DATA_ROOT=/tcdata/test_dataset_fs WORK_DIR=/myspace/shopmatch RESULT_PATH=/myspace/result.json
#   DETECTOR="lite2 /models/detector.pth"
#   EMBEDDERS="lite0 /models/lite0.pt lite1 /models/lite1.pt lite2 /models/lite2.pt"
set -euo pipefail
stage=${1:?usage: docker/submit.sh detect|match [run.sh options]}
shift
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
data=${DATA_ROOT:-/tcdata/test_dataset_fs}
work=${WORK_DIR:-/myspace/shopmatch}
result=${RESULT_PATH:-/myspace/result.json}
read -r -a detector <<< "${DETECTOR:-lite2 /models/detector.pth}"
read -r -a embedders <<< "${EMBEDDERS:-lite0 /models/lite0.pt lite1 /models/lite1.pt lite2 /models/lite2.pt}"
args=("$data" "$work" --detector "${detector[@]}" --embedders "${embedders[@]}" --no-progress "$@")

case "$stage" in
    detect)
        exec "$here/run.sh" "${args[@]}" --stop-after detect
        ;;
    match)
        "$here/run.sh" "${args[@]}"
        mkdir -p "$(dirname "$result")"
        cp "$work/result.json" "$result.tmp" && mv "$result.tmp" "$result"
        echo "result: $result"
        ;;
    *)
        echo "docker/submit.sh: stage must be detect or match, not $stage" >&2
        exit 2
        ;;
esac
