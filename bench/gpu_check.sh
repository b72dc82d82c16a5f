#!/usr/bin/env bash
# The checks to run on a GPU machine, in one call (see bench/README.md, "GPU check"):
#   1. the CUDA tests (every test marked `cuda` and every device-parametrised case on cuda),
#   1b. the host-path checks (tests/kernel_ops/test_host_path.py, in one process of their own:
#      sync debug mode and deterministic mode are process-wide): every op's forward and backward
#      under torch.cuda.set_sync_debug_mode("error"), a training step and an inference view with
#      no synchronisation from kernels/ (the pipeline's own are listed in the log), the ops on
#      cuda:1 (skips with one GPU), and torch.use_deterministic_algorithms(True),
#   2. the kernel and inference benchmarks on the GPU (pytest-benchmark JSON),
#   3. `selfmvs infer` end to end on a prepared scene (DATA/s640.h5), twice (the first compiles),
#   4. `selfmvs train` steps on the GPU, fp32, bf16 and fp16 autocast, on DATA/demo_scene.h5,
#   5. the self-training chain of rule train_self on DATA/demo_scene.h5: infer with the committed base
#      weights, fuse --masks, pseudo-labels, `train --labels --init` with config/train_self.yaml.
# Each stage has its own time limit, so one that hangs leaves time for the rest. Results go to
# $OUT (few files: the summary, the JSON and the logs) or bench/results/gpu-<date>/.
# Needs pytest-xdist for stage 1 (the GPU image has it; `-n 4` spreads the tests over 4 workers).
#   DATA=.devcarry bash bench/gpu_check.sh
set -u
OUT=${OUT:-bench/results/gpu-$(date +%F)}
DATA=${DATA:-.devcarry}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}   # stage 5 only (DEVICE=cpu SELF_STEPS=12 tries it without a GPU)
SELF_STEPS=${SELF_STEPS:-60}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS=0
. "$(dirname "$0")/gpu_lib.sh"
log() { echo "== $(date +%T) $*" | tee -a "$OUT/summary.txt"; }

log "environment"
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  $PY - <<'EOF'
import importlib, platform
print("python", platform.python_version())
for name in ("torch", "numpy", "numba", "numba_cuda", "cupy", "h5py"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as error:  # noqa: BLE001
        print(name, "missing:", error)
import torch
print("cuda", torch.version.cuda, torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))
EOF
} 2>&1 | tee -a "$OUT/summary.txt"

log "1. CUDA tests"
timeout 170 $PY -m pytest tests -n 4 --device cuda -k "cuda and not cudasim and not test_host_path" -p no:cacheprovider -q -rfEs \
    > "$OUT/tests-cuda.log" 2>&1
echo "rc=$?" | tee -a "$OUT/summary.txt"; tail -n 25 "$OUT/tests-cuda.log" | tee -a "$OUT/summary.txt"

log "1b. host path: sync debug mode, cuda:1, deterministic mode"
timeout 100 $PY -m pytest tests/kernel_ops/test_host_path.py -m cuda -p no:cacheprovider -q -rfEs -s \
    > "$OUT/tests-host-path.log" 2>&1
echo "rc=$?" | tee -a "$OUT/summary.txt"; grep -E "passed|failed|error|synchronisations|^  " "$OUT/tests-host-path.log" | tail -n 30 | tee -a "$OUT/summary.txt"

log "2. benchmarks"
timeout 160 $PY -m pytest bench/bench_cuda_ops.py bench/bench_ssim.py bench/bench_warp_image.py bench/bench_infer.py \
    --bench-device cuda --bench-threads 16 --benchmark-only -p no:cacheprovider -q \
    --benchmark-max-time 0.5 --benchmark-columns min,median,mean,rounds --benchmark-sort name \
    --benchmark-json "$OUT/bench-cuda.json" > "$OUT/bench-cuda.log" 2>&1
echo "rc=$?" | tee -a "$OUT/summary.txt"; grep -E "passed|failed|error" "$OUT/bench-cuda.log" | tail -n 5 | tee -a "$OUT/summary.txt"

log "3. selfmvs infer on $DATA/s640.h5 (cuda)"
for run in 1 2; do
    start=$(date +%s.%N)
    timeout 45 $PY -m pipeline infer "$DATA/s640.h5" pipeline/checkpoints/selfmvs_synthetic.pt /tmp/depth_$run.h5 \
        --device cuda >> "$OUT/infer.log" 2>&1
    rc=$?
    echo "run $run rc=$rc wall $(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s" | tee -a "$OUT/summary.txt"
done
$PY - <<'EOF' 2>&1 | tee -a "$OUT/summary.txt"
import h5py, numpy as np
with h5py.File("/tmp/depth_2.h5") as f:
    views = list(f["views"])
    d = f["views"][views[0]]["depth"][()]
    print(len(views), "views", d.shape, "depth range", float(d[d > 0].min()), float(d.max()))
EOF

log "4. selfmvs train on $DATA/demo_scene.h5 (cuda)"
for amp in off bf16 fp16; do
    printf 'train: {device: cuda, amp: "%s", steps: 60, checkpoint_every: 1000, progress: false}\n' "$amp" > /tmp/train_$amp.yaml
    timeout 55 $PY -m pipeline train --config /tmp/train_$amp.yaml --scenes "$DATA/demo_scene.h5" --out /tmp/train_$amp \
        >> "$OUT/train.log" 2>&1
    echo "amp=$amp rc=$?" | tee -a "$OUT/summary.txt"
    { echo "# losses.csv, amp=$amp"; cat /tmp/train_$amp/losses.csv; } >> "$OUT/train.log" 2>&1
    summarise_losses /tmp/train_$amp/losses.csv | tee -a "$OUT/summary.txt"
done

log "5. self-training chain on $DATA/demo_scene.h5 ($DEVICE): infer, fuse --masks, pseudo-labels, train --labels"
W=/tmp/selftrain; rm -rf "$W"; mkdir -p "$W"
$PY - "$DEVICE" "$SELF_STEPS" > "$W/config.yaml" <<'EOF'
import sys, yaml
config = yaml.safe_load(open("config/train_self.yaml"))
config["train"].update(device=sys.argv[1], steps=int(sys.argv[2]), checkpoint_every=1000, progress=False)
print(yaml.safe_dump(config))
EOF
step() {  # name command... : run with a time limit, log its exit status and wall time
    local name=$1 start rc; shift; start=$(date +%s.%N)
    timeout 90 "$@" >> "$OUT/train.log" 2>&1; rc=$?
    echo "$name rc=$rc wall $(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s" | tee -a "$OUT/summary.txt"
}
step infer $PY -m pipeline infer "$DATA/demo_scene.h5" pipeline/checkpoints/base_step8700.pt "$W/depth.h5" --device "$DEVICE"
step fuse $PY -m pipeline fuse "$DATA/demo_scene.h5" "$W/depth.h5" "$W/fused.ply" --masks "$W/masks.h5"
step pseudo-labels $PY -m pipeline pseudo-labels "$W/depth.h5" "$W/masks.h5" "$W/labels.h5"
step train $PY -m pipeline train --config "$W/config.yaml" --scenes "$DATA/demo_scene.h5" --labels "$W/labels.h5" \
    --init pipeline/checkpoints/base_step8700.pt --out "$W/ckpt"
cat "$W/ckpt/losses.csv" >> "$OUT/train.log" 2>/dev/null
summarise_losses "$W/ckpt/losses.csv" | tee -a "$OUT/summary.txt"
log "done"
