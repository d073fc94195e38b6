#!/usr/bin/env bash
# A Ray node of the batch run's cluster (`run.sh --engine ray`), in the foreground so the container lives as
# long as the node:
#   ray_node.sh head                 the head: the cluster's address is this container's port RAY_PORT (6379)
#   ray_node.sh worker HEAD:PORT     a worker joining it, with the GPUs and CPUs the container was given
# Every node and every driver of a cluster must run with the same RAY_AUTH_MODE (default here: disabled; a
# node in token mode refuses whoever lacks its token). The dataset roots, the model weights and the run's
# output folder must be mounted at the same paths on every node.
set -euo pipefail
role=${1:?usage: ray_node.sh head | worker HEAD:PORT}
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
common=(--block --disable-usage-stats)
case "$role" in
    head)
        # The head schedules and runs read tasks; RAY_HEAD_GPUS=0 keeps GPU actors on the workers.
        exec ray start --head --port="${RAY_PORT:-6379}" --include-dashboard=false \
            --num-gpus="${RAY_HEAD_GPUS:-0}" "${common[@]}" ;;
    worker)
        exec ray start --address="${2:?usage: ray_node.sh worker HEAD:PORT}" "${common[@]}" ;;
    *)
        echo "ray_node.sh: unknown role $role (head or worker)" >&2
        exit 2 ;;
esac
