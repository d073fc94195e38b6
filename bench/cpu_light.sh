#!/usr/bin/env bash
# The light setup trained and scored on a CPU: the runs behind the *_cpu.json light results (about 2 h on 2 cores).
#   bench/cpu_light.sh OUT_DIR WORK
# Synthetic data (120 train items, 40 held-out test items, 24 validation items), the Lite2 detector (400
# iterations of 4 pictures at short sides 352-416) and the Lite0/1/2 embedders (10 epochs at half the SM bucket
# sizes) trained on the train items; the light pipeline end to end on the test clips; the voting numbers
# calibrated on the validation root; every voting rule set, the calibrated one included, on both roots.
# A step whose result file is in OUT_DIR is skipped, and training resumes from WORK, so a killed run goes on
# where it stopped. Logs go to OUT_DIR/log.txt.
set -euo pipefail
out=${1:?usage: bench/cpu_light.sh OUT_DIR WORK}
work=${2:?usage: bench/cpu_light.sh OUT_DIR WORK}
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="$here/.venv/bin/python"
[[ -x "$python" ]] || python="$(command -v python3)"
mkdir -p "$out" "$work"
log="$out/log.txt"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"

step() {  # step NAME RESULT_FILE COMMAND...
    local name=$1 result=$2
    shift 2
    if [[ -e "$result" ]]; then
        echo "=== $name: $result exists, skipped" | tee -a "$log"
        return
    fi
    echo "=== $name ($(date +%T))" | tee -a "$log"
    "$@" >>"$log" 2>&1
}

# Inference sizes scaled down with the training sizes, for the detector's scoring and the pipeline alike, in
# float32 even on a CPU with bf16 instructions, so that every machine reproduces the committed figures.
infer=(infer.image_short_side=384 infer.image_max_size=704 infer.video_short_side=352 infer.video_max_size=704
       infer.precision=fp32)

light_pipeline() {  # light_pipeline ROOT KEEP_DIR RESULT_JSON: the trained light setup end to end, outputs kept
    "$python" -m bench.e2e --setups light --data "$1" --keep "$2" \
        --weights light "$work/det/run/model_final.pth" \
        "$work/runs/lite0/best.pt,$work/runs/lite1/best.pt,$work/runs/lite2/best.pt" \
        "${infer[@]/#/--detector-set=}" --embedder-set data.bucket_scale=0.5 --embedder-set embed.dtype=fp32 \
        --out "$3"
}

step data "$work/data/val/synth_manifest.json" "$python" -c "from pathlib import Path
from bench.common import synthetic_splits
from dataset.synth import SynthConfig, ensure
synthetic_splits(Path('$work/data'), 120, 40, 0)
ensure(Path('$work/data/val'), SynthConfig(items=24, seed=2, first_id=60_001))"
step detector "$out/detect_accuracy_lite2_400_cpu.json" "$python" -m bench.detect_accuracy --config lite2 \
    --train "$work/data/train" --val "$work/data/test" --work "$work/det" --out "$out/detect_accuracy_lite2_400_cpu.json" \
    --set 'train.stages=[{name: stage1, iterations: 400, base_lr: 0.01, batch_size: 4, schedule: cosine, warmup_iters: 40, warmup_factor: 0.001, min_sizes: [352, 384, 416], max_size: 768}]' \
    --set train.workers=1 --set train.eval_every=1000000 --set train.checkpoint_every=25 \
    "${infer[@]/#/--set=}"
step embedders "$out/embed_accuracy_light_cpu.json" "$python" -m bench.embed_accuracy --synthetic \
    --train-configs lite0,lite1,lite2 --items 40 --train-items 120 --set data.bucket_scale=0.5 \
    --set embed.dtype=fp32 --seed 0 \
    --work "$work" --out "$out/embed_accuracy_light_cpu.json"
step e2e "$out/e2e_light_cpu.json" light_pipeline "$work/data/test" "$work/e2e" "$out/e2e_light_cpu.json"
step validation "$work/e2e_val/run_light/result.json" \
    light_pipeline "$work/data/val" "$work/e2e_val" "$out/e2e_light_val_cpu.json"
step calibrate "$out/match_calibrated_lite_cpu.yaml" "$python" -m metric_sub.calibrate \
    --workdir "$work/e2e_val/run_light" --data "$work/data/val" --out "$out/match_calibrated_lite_cpu.yaml"
step rules "$out/match_rules_light_cpu.json" "$python" -m bench.match_rules \
    --run synth-test-lite "$work/e2e/run_light" "$work/data/test" \
    --run synth-val-lite "$work/e2e_val/run_light" "$work/data/val" \
    --config calibrated "$out/match_calibrated_lite_cpu.yaml" --out "$out/match_rules_light_cpu.json" \
    --note "bench/cpu_light.sh: the light pipeline on the 40 held-out test items and the 24 validation items"
tail -n 20 "$log"
