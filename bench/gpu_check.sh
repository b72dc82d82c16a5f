#!/usr/bin/env bash
# The checks to run on a GPU machine, in one call of at most 8 minutes (see bench/README.md, "GPU check"):
#   1. the CUDA tests (every test marked `cuda` and every device-parametrised case on cuda),
#   1b. the host-path checks (tests/kernel_ops/test_host_path.py, in one process of their own:
#      sync debug mode and deterministic mode are process-wide): every op's forward and backward
#      under torch.cuda.set_sync_debug_mode("error"), a training step and an inference view with
#      no synchronisation from kernels/ (any elsewhere are listed in the log) and, in "error" mode,
#      none at all (unsup_mvsnet and jdacs steps, the inference forward), the ops on
#      cuda:1 (skips with one GPU), and torch.use_deterministic_algorithms(True),
#   2. every op of kernels/ against its torch reference, forward + backward, at the training batch
#      (2 x 320x240) and at the 640x512 and 1600x1200 inference sizes: time ratio, peak CUDA memory
#      ratio, GB/s of ssim and warp_image against the card's DRAM bandwidth (bench/bench_cuda_ops.py;
#      ops with CUDA C kernels are timed with both CUDA backends, numba.cuda and CUDA C),
#   3. `selfmvs infer` per view at 640x480 and 1600x1200, one pass, 4 sources, kernels against every op
#      swapped for its reference (bench/bench_infer_run.py; the scenes render on the CPU during 1 and 1b),
#   4. a training step at batch 8 in bf16 autocast: time and peak memory (bench/bench_train_step.py).
# Each stage runs under `timeout` with its budget (printed first; SIGINT, so pytest still writes the
# JSON of the cases it finished), so one slow stage leaves time for the rest. Results, named by card
# and date (TAG, e.g. h100-2026-12-07), go to $OUT, else bench/results/gpu-TAG/: pytest-benchmark
# JSON (ops-TAG.json, infer-TAG.json, train-step-TAG.json), summary-TAG.md (the tables), the running
# log summary-TAG.txt and each stage's log.
#   bash bench/gpu_check.sh                 # on the GPU machine
#   bash bench/gpu_check.sh --smoke         # stages 2-4 on the CPU at tiny sizes (seconds; tests/test_bench_gpu_lib.py)
#   DATA=.devcarry bash bench/gpu_check.sh --end-to-end   # then also, outside the 8-minute budget:
#      E1. `selfmvs infer` on DATA/s640.h5 twice (the first compiles) and a third time with
#      --no-cuda-graph (the forward eager: the s/view of runs 2 and 3 compare infer.cuda_graph on and off), E2. `selfmvs train` steps in fp32,
#      bf16 and fp16 autocast on DATA/demo_scene.h5, E3. the self-training chain of rule train_self
#      (infer with the committed base weights, fuse --masks, pseudo-labels, `train --labels --init`).
# Needs pytest-xdist for stage 1 (the GPU image has it; `-n 4` spreads the tests over 4 workers).
set -u
SMOKE=0 END_TO_END=0
for arg in "$@"; do
    case $arg in
        --smoke) SMOKE=1 ;;
        --end-to-end) END_TO_END=1 ;;
        *) echo "bench/gpu_check.sh: unknown argument '$arg' (known: --smoke, --end-to-end)" >&2; exit 2 ;;
    esac
done
DATA=${DATA:-.devcarry}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}   # E3 only (DEVICE=cpu SELF_STEPS=12 tries it without a GPU)
SELF_STEPS=${SELF_STEPS:-60}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS=0
. "$(dirname "$0")/gpu_lib.sh"

# Seconds per stage: 1 + 1b + 2 + 3 + 4 = 445 s, and ~15 s of environment and summary: 8 minutes (a
# stage that overruns gets 15 s of grace after SIGINT). Stage 1 took 46-60 s on an H200 (2026-11-27),
# a `selfmvs infer` process 8-10 s; stage 3 runs 6 of them. The scenes of 3 render meanwhile (CPU only).
B_TESTS=120 B_HOST=70 B_OPS=90 B_INFER=120 B_TRAIN=45 B_SCENES=230
if [ "$SMOKE" = 1 ]; then  # the budgets are a GPU's: a busy 2-core CPU gets 5 minutes a stage
    BENCH=(--bench-device cpu --bench-smoke --bench-threads 2) INFER_SIZES=smoke-64x48 CARD=cpu-smoke
    B_OPS=300 B_INFER=300 B_TRAIN=300
else
    BENCH=(--bench-device cuda --bench-threads 16) INFER_SIZES=640x480,1600x1200
    CARD=$(card_tag "$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)")
    CARD=${CARD:-unknown-gpu}
fi
TAG=$CARD-$(date +%F)
OUT=${OUT:-bench/results/gpu-$TAG}
SUMMARY=$OUT/summary-$TAG.txt
mkdir -p "$OUT"
export BENCH_INFER_WORK=${BENCH_INFER_WORK:-$( [ -d "$DATA/bench-infer" ] && echo "$DATA/bench-infer" || echo /tmp/selfmvs-bench-infer-run)}
log() { echo "== $(date +%T) $*" | tee -a "$SUMMARY"; }
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }
FAILED=()
# run_stage NAME BUDGET LOG command... : the command under `timeout -s INT` (then KILL 15 s later), its
# output in LOG; prints its exit status and wall time against the budget, and remembers a failure.
run_stage() {
    local name=$1 budget=$2 logfile=$3 start rc; shift 3; start=$(date +%s.%N)
    timeout -s INT -k 15 "$budget" "$@" > "$logfile" 2>&1; rc=$?
    echo "rc=$rc$([ $rc = 124 ] && echo " (stopped at its time limit)") wall $(elapsed "$start") s of $budget s" \
        | tee -a "$SUMMARY"
    [ $rc = 0 ] || FAILED+=("$name")
}
BENCH_PYTEST=(-m pytest --benchmark-only -p no:cacheprovider -q --benchmark-columns min,median,mean,rounds --benchmark-sort name)
STARTED=$(date +%s.%N)

log "budget (s): 1 CUDA tests $B_TESTS, 1b host path $B_HOST, 2 ops $B_OPS, 3 infer $B_INFER, 4 train step $B_TRAIN" \
    "(total $((B_TESTS + B_HOST + B_OPS + B_INFER + B_TRAIN)); a GPU run stays under 480; scenes for 3 render meanwhile, $B_SCENES);" \
    "results: $OUT, tag $TAG$([ "$SMOKE" = 1 ] && echo ", --smoke: CPU, tiny sizes")"
# The scenes of stage 3 (skipped where $BENCH_INFER_WORK already has them), on the CPU while the tests run.
( timeout "$B_SCENES" $PY bench/bench_infer_run.py --prepare-scenes "$INFER_SIZES" > "$OUT/scenes-$TAG.log" 2>&1
  echo "rc=$?" >> "$OUT/scenes-$TAG.log" ) &
SCENES_PID=$!

log "environment"
{ command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  $PY - <<'PYTHON'
import importlib, platform
print("python", platform.python_version())
for name in ("torch", "numpy", "numba", "numba_cuda", "cupy", "h5py", "pytest_benchmark"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as error:  # noqa: BLE001
        print(name, "missing:", error)
import torch
if torch.cuda.is_available():
    print("cuda", torch.version.cuda, torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))
else:
    print("cuda: not available")
PYTHON
} 2>&1 | tee -a "$SUMMARY"

if [ "$SMOKE" = 1 ]; then
    log "1. CUDA tests, 1b. host path: skipped (--smoke)"
else
    log "1. CUDA tests"
    run_stage tests "$B_TESTS" "$OUT/tests-cuda-$TAG.log" $PY -m pytest tests -n 4 --device cuda \
        -k "cuda and not cudasim and not test_host_path" -p no:cacheprovider -q -rfEs
    tail -n 25 "$OUT/tests-cuda-$TAG.log" | tee -a "$SUMMARY"

    log "1b. host path: sync debug mode, cuda:1, deterministic mode"
    run_stage host-path "$B_HOST" "$OUT/tests-host-path-$TAG.log" $PY -m pytest tests/kernel_ops/test_host_path.py -m cuda \
        -p no:cacheprovider -q -rfEs -s
    grep -E "passed|failed|error|synchronisations|^  " "$OUT/tests-host-path-$TAG.log" | tail -n 30 | tee -a "$SUMMARY"
fi

log "2. ops against their references (bench/bench_cuda_ops.py)"
run_stage ops "$B_OPS" "$OUT/ops-$TAG.log" $PY "${BENCH_PYTEST[@]}" bench/bench_cuda_ops.py "${BENCH[@]}" \
    --benchmark-json "$OUT/ops-$TAG.json"
grep -E "passed|failed|error" "$OUT/ops-$TAG.log" | tail -n 5 | tee -a "$SUMMARY"

log "3. selfmvs infer per view, kernels against references (bench/bench_infer_run.py; scenes in $BENCH_INFER_WORK)"
start=$(date +%s.%N)
wait "$SCENES_PID"
echo "scenes: $(tail -n 1 "$OUT/scenes-$TAG.log"), waited $(elapsed "$start") s" | tee -a "$SUMMARY"
run_stage infer "$B_INFER" "$OUT/infer-$TAG.log" $PY "${BENCH_PYTEST[@]}" bench/bench_infer_run.py \
    -k test_infer_kernels_vs_references "${BENCH[@]}" --benchmark-json "$OUT/infer-$TAG.json"
grep -E "passed|failed|error" "$OUT/infer-$TAG.log" | tail -n 5 | tee -a "$SUMMARY"

log "4. training step, batch 8, bf16 autocast (bench/bench_train_step.py)"
run_stage train-step "$B_TRAIN" "$OUT/train-step-$TAG.log" $PY "${BENCH_PYTEST[@]}" bench/bench_train_step.py \
    -k test_train_step_device "${BENCH[@]}" --benchmark-json "$OUT/train-step-$TAG.json"
grep -E "passed|failed|error" "$OUT/train-step-$TAG.log" | tail -n 5 | tee -a "$SUMMARY"

log "tables -> $OUT/summary-$TAG.md"
{ echo "# GPU check $TAG"; echo
  bench_tables "$OUT/ops-$TAG.json" "$OUT/infer-$TAG.json" "$OUT/train-step-$TAG.json"
} > "$OUT/summary-$TAG.md"
tee -a "$SUMMARY" < "$OUT/summary-$TAG.md"
log "stages 1-4 done in $(elapsed "$STARTED") s; failed: ${FAILED[*]:-none}"

if [ "$END_TO_END" = 1 ]; then  # (not indented: its heredocs end in column 0)
log "E1. selfmvs infer on $DATA/s640.h5 (cuda)"
for run in 1 2 3; do
    graph=$([ $run = 3 ] && echo --no-cuda-graph || echo --cuda-graph)  # 3: eager forward, against 2
    start=$(date +%s.%N)
    timeout 45 $PY -m pipeline infer "$DATA/s640.h5" pipeline/checkpoints/selfmvs_synthetic.pt /tmp/depth_$run.h5 \
        --device cuda $graph > "$OUT/infer-e2e-$run-$TAG.log" 2>&1
    rc=$?
    cat "$OUT/infer-e2e-$run-$TAG.log" >> "$OUT/infer-e2e-$TAG.log"
    echo "run $run ($graph) rc=$rc wall $(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s;" \
        "$(grep -o '([0-9.]* s/view)' "$OUT/infer-e2e-$run-$TAG.log" | tail -n 1)" | tee -a "$SUMMARY"
done
$PY - <<'EOF' 2>&1 | tee -a "$SUMMARY"
import h5py, numpy as np
with h5py.File("/tmp/depth_2.h5") as f:
    views = list(f["views"])
    d = f["views"][views[0]]["depth"][()]
    print(len(views), "views", d.shape, "depth range", float(d[d > 0].min()), float(d.max()))
EOF

log "E2. selfmvs train on $DATA/demo_scene.h5 (cuda)"
for amp in off bf16 fp16; do
    printf 'train: {device: cuda, amp: "%s", steps: 60, checkpoint_every: 1000, progress: false}\n' "$amp" > /tmp/train_$amp.yaml
    timeout 55 $PY -m pipeline train --config /tmp/train_$amp.yaml --scenes "$DATA/demo_scene.h5" --out /tmp/train_$amp \
        >> "$OUT/train-e2e-$TAG.log" 2>&1
    echo "amp=$amp rc=$?" | tee -a "$SUMMARY"
    { echo "# losses.csv, amp=$amp"; cat /tmp/train_$amp/losses.csv; } >> "$OUT/train-e2e-$TAG.log" 2>&1
    summarise_losses /tmp/train_$amp/losses.csv | tee -a "$SUMMARY"
done

log "E3. self-training chain on $DATA/demo_scene.h5 ($DEVICE): infer, fuse --masks, pseudo-labels, train --labels"
W=/tmp/selftrain; rm -rf "$W"; mkdir -p "$W"
$PY - "$DEVICE" "$SELF_STEPS" > "$W/config.yaml" <<'EOF'
import sys, yaml
config = yaml.safe_load(open("config/train_self.yaml"))
config["train"].update(device=sys.argv[1], steps=int(sys.argv[2]), checkpoint_every=1000, progress=False)
print(yaml.safe_dump(config))
EOF
step() {  # name command... : run with a time limit, log its exit status and wall time
    local name=$1 start rc; shift; start=$(date +%s.%N)
    timeout 90 "$@" >> "$OUT/train-e2e-$TAG.log" 2>&1; rc=$?
    echo "$name rc=$rc wall $(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s" | tee -a "$SUMMARY"
}
step infer $PY -m pipeline infer "$DATA/demo_scene.h5" pipeline/checkpoints/base_step8700.pt "$W/depth.h5" --device "$DEVICE"
step fuse $PY -m pipeline fuse "$DATA/demo_scene.h5" "$W/depth.h5" "$W/fused.ply" --masks "$W/masks.h5"
step pseudo-labels $PY -m pipeline pseudo-labels "$W/depth.h5" "$W/masks.h5" "$W/labels.h5"
step train $PY -m pipeline train --config "$W/config.yaml" --scenes "$DATA/demo_scene.h5" --labels "$W/labels.h5" \
    --init pipeline/checkpoints/base_step8700.pt --out "$W/ckpt"
cat "$W/ckpt/losses.csv" >> "$OUT/train-e2e-$TAG.log" 2>/dev/null
summarise_losses "$W/ckpt/losses.csv" | tee -a "$SUMMARY"
log "end to end done in $(elapsed "$STARTED") s"
fi
[ ${#FAILED[@]} = 0 ]
