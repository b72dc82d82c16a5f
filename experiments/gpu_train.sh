#!/usr/bin/env bash
# Continue the base training run (config/train_base.yaml) on a GPU for SECS seconds.
#
# The training scenes are ~70 MB of HDF5, more than is worth copying to the GPU machine, so they are rendered
# and prepared there (16 cores, in parallel, ~1 min), exactly as the workflow's training_scene and
# training_prepare rules do. The run resumes from the committed state and keeps its config and
# schedule (fp32, the same batch and learning-rate schedule as on the CPU; `device: auto` picks the
# GPU); it is stopped after SECS seconds and the last checkpoint (written every 100 steps) comes back:
#
#   carry: .whl  results/_training/checkpoint/last.pt  results/_training/checkpoint/losses.csv
#          results/_training/config.yaml
#   SECS=420 bash experiments/gpu_train.sh          # -> $OUT/last.pt, $OUT/losses.csv, $OUT/train.log
#   (SEEDS="1000 1001" renders and trains on those scenes only, e.g. to try it here on the CPU)
#
# Back here: stop the CPU run, copy last.pt and losses.csv into results/_training/checkpoint/ and
# resume as usual. Random draws after the switch differ from an all-CPU run (CUDA's generator).
set -u
OUT=${OUT:-/tmp/gpu_train_out}
PY=${PY:-python3}
SECS=${SECS:-420}
W=${WORK:-/tmp/gpu_train}
mkdir -p "$W/scenes" "$W/h5" "$W/ckpt" "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
. "$(dirname "$0")/../bench/gpu_lib.sh"

read -r SEEDS_CFG VIEWS WIDTH HEIGHT < <($PY - <<'EOF'
import yaml
c = yaml.safe_load(open("results/_training/config.yaml"))["training_data"]
print(",".join(map(str, c["seeds"])), c["num_views"], c["width"], c["height"])
EOF
)
SEEDS=${SEEDS:-$SEEDS_CFG}
echo "== $(date +%T) scenes ${SEEDS} (${VIEWS} views ${WIDTH}x${HEIGHT})" | tee "$OUT/train.log"
# shellcheck disable=SC2086
render_scenes 16 "$VIEWS" "$WIDTH" "$HEIGHT" ${SEEDS//,/ } | tee -a "$OUT/train.log"
scenes=$(for s in ${SEEDS//,/ }; do echo "$W/h5/$s.h5"; done)

cp results/_training/checkpoint/last.pt results/_training/checkpoint/losses.csv "$W/ckpt/"
echo "== $(date +%T) training for ${SECS} s" | tee -a "$OUT/train.log"
# shellcheck disable=SC2086
timeout "$SECS" $PY -m pipeline train --config results/_training/config.yaml --scenes $scenes --out "$W/ckpt" \
    --resume > "$W/train_full.log" 2>&1
echo "train exit $? (124: stopped by the time limit, as intended)" | tee -a "$OUT/train.log"
grep -v "step, loss=" "$W/train_full.log" | tail -n 20 >> "$OUT/train.log"
cp "$W/ckpt/last.pt" "$W/ckpt/losses.csv" "$OUT/"
summarise_losses "$OUT/losses.csv" "" 200 | tee -a "$OUT/train.log"
