#!/usr/bin/env bash
# The CUDA runs behind the *_cuda.json results, in two parts that each fit a 10-minute slot on one GPU.
#   bench/gpu_suite.sh speed OUT_DIR          agreement tests, detector (and backbone-alone) and embedder throughput
#   bench/gpu_suite.sh accuracy OUT_DIR WORK  synthetic data, detector + light embedders trained side by side,
#                                             then the light pipeline end to end on the held-out split
# Every step has its own time limit and a failed step does not stop the next; logs go to OUT_DIR/log.txt.
set -uo pipefail
part=${1:?usage: bench/gpu_suite.sh speed|accuracy OUT_DIR [WORK]}
out=${2:?usage: bench/gpu_suite.sh speed|accuracy OUT_DIR [WORK]}
mkdir -p "$out"
log="$out/log.txt"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONWARNINGS="ignore::UserWarning"
cores=$(nproc)

step() {  # step SECONDS NAME COMMAND...
    local limit=$1 name=$2
    shift 2
    echo "=== $name ($(date +%T))" | tee -a "$log"
    timeout "$limit" "$@" >>"$log" 2>&1
    echo "=== $name: exit $?" | tee -a "$log"
}

case "$part" in
speed)
    step 150 agreement env CUDA_VISIBLE_DEVICES=0 python3 -m pytest -q -p no:cacheprovider \
        tests/test_cuda_agreement.py tests/test_bbox_model.py
    step 180 detect python3 -m bench.detect --device cuda --backbone-only --out "$out/detect_cuda.json"
    step 120 embed-lite python3 -m bench.embed --device cuda --configs lite0,lite1,lite2 --crops-per-bucket 128 \
        --out "$out/embed_lite_cuda.json"
    step 150 embed-seed python3 -m bench.embed --device cuda --configs seed_b5a,seed_b5b,seed_b6,seed_b7 \
        --crops-per-bucket 128 --repeats 2 --out "$out/embed_seed_cuda.json"
    step 200 embed-compiled python3 -m bench.embed --device cuda --configs seed_b5a --crops-per-bucket 128 \
        --compile --cuda-graphs --out "$out/embed_compiled_cuda.json"
    ;;
accuracy)
    work=${3:?usage: bench/gpu_suite.sh accuracy OUT_DIR WORK}
    items=${ITEMS:-40}               # held-out test split
    train_items=${TRAIN_ITEMS:-120}  # train split: item diversity is what the embedders gain most from
    step 120 data python3 -c "from pathlib import Path; from bench.common import synthetic_splits; \
synthetic_splits(Path('$work/data'), $train_items, $items, 0)"
    echo "=== detector and embedders training side by side ($(date +%T))" | tee -a "$log"
    timeout 330 python3 -m bench.detect_accuracy --config lite2 --train "$work/data/train" --val "$work/data/test" \
        --work "$work/det" --set train.iteration_scale="${DET_SCALE:-0.008}" --set train.workers=6 \
        --set train.eval_every=1000000 --set train.checkpoint_every=1000000 \
        --out "$out/detect_accuracy_cuda.json" >"$out/detector.log" 2>&1 &
    detector=$!
    timeout 330 python3 -m bench.embed_accuracy --synthetic --train-configs lite0,lite1,lite2 --items "$items" \
        --train-items "$train_items" --work "$work" --set train.workers=6 --out "$out/embed_accuracy_cuda.json" \
        >"$out/embedders.log" 2>&1
    echo "=== embedders: exit $? ($(date +%T))" | tee -a "$log"
    wait $detector
    echo "=== detector: exit $? ($(date +%T))" | tee -a "$log"
    det="$work/det/run/model_final.pth"
    embs=$(ls "$work"/runs/lite{0,1,2}/best.pt 2>/dev/null | paste -sd, -)
    step 140 e2e python3 -m bench.e2e --setups light --data "$work/data/test" --device cuda \
        --weights light "$det" "$embs" --detector-set infer.decode_workers=$((cores / 2)) --out "$out/e2e_cuda.json"
    tail -n 25 "$out/detector.log" "$out/embedders.log" >>"$log"
    ;;
*)
    echo "bench/gpu_suite.sh: unknown part $part" >&2
    exit 2
    ;;
esac
tail -n 80 "$log"
