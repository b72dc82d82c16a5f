#!/usr/bin/env bash
# Rule train_self's chain on a GPU, longer than on the CPU: render and prepare the training
# scenes (training_data of the config), infer each with the `self_training.init` weights, fuse with
# --masks, pseudo-labels, then `selfmvs train --labels --init` with the run's own config, but on the
# GPU and for STEPS steps (checkpoints every EVERY steps), stopped at DEADLINE_S seconds after the
# start so that the checkpoints written so far come back.
#
#   here:  snakemake results/_self_training/config.yaml --configfile config/train_self.yaml --cores 1
#          mkdir -p .devcarry && cp results/_self_training/config.yaml .devcarry/self_config.yaml
#   there (carry .whl .devcarry):  CONFIG=.devcarry/self_config.yaml STEPS=1500 EVERY=500 bash experiments/gpu_self_train.sh
#   -> $OUT/summary.txt, train.log, losses.csv, step_*.pt (evaluate back here with bench/quality_heldout.py)
#
# DEVICE=cpu SEEDS="1000 1001" STEPS=4 EVERY=2 tries it here without a GPU.
set -u
PY=${PY:-python3}
CONFIG=${CONFIG:-.devcarry/self_config.yaml}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-1500}
EVERY=${EVERY:-500}
DEADLINE_S=${DEADLINE_S:-480}
W=${WORK:-/tmp/self_train}
OUT=${OUT:-/tmp/self_train_out}
T0=$(date +%s)
mkdir -p "$W/scenes" "$W/h5" "$W/depth" "$W/fused" "$W/labels" "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
. "$(dirname "$0")/../bench/gpu_lib.sh"
log() { echo "== $(date +%T) (+$(( $(date +%s) - T0 )) s) $*" | tee -a "$OUT/summary.txt"; }

read -r SEEDS_CFG VIEWS WIDTH HEIGHT INIT < <($PY - "$CONFIG" <<'EOF'
import sys, yaml
c = yaml.safe_load(open(sys.argv[1]))
d = c["training_data"]
print(",".join(map(str, d["seeds"])), d["num_views"], d["width"], d["height"], c["self_training"]["init"])
EOF
)
SEEDS=${SEEDS:-${SEEDS_CFG//,/ }}
$PY - "$CONFIG" "$DEVICE" "$STEPS" "$EVERY" > "$W/config.yaml" <<'EOF'
import sys, yaml
c = yaml.safe_load(open(sys.argv[1]))
c["train"].update(device=sys.argv[2], steps=int(sys.argv[3]), checkpoint_every=int(sys.argv[4]),
                  keep_checkpoints=100, progress=False)
c["infer"]["device"] = sys.argv[2]
print(yaml.safe_dump(c))
EOF
export PY W VIEWS WIDTH HEIGHT INIT

log "1. render + prepare: seeds $SEEDS ($VIEWS views ${WIDTH}x${HEIGHT})"
# shellcheck disable=SC2086
render_scenes 16 "$VIEWS" "$WIDTH" "$HEIGHT" $SEEDS | tee -a "$OUT/summary.txt"

log "2. infer with $INIT (4 processes on the $DEVICE), fuse --masks and pseudo-labels (CPU)"
label() {
    $PY -m pipeline infer "$W/h5/$1.h5" "$INIT" "$W/depth/$1.h5" --config "$W/config.yaml" > "$W/i_$1.log" 2>&1 &&
    $PY -m pipeline fuse "$W/h5/$1.h5" "$W/depth/$1.h5" "$W/fused/$1.ply" --masks "$W/fused/$1_masks.h5" \
        --config "$W/config.yaml" > "$W/f_$1.log" 2>&1 &&
    $PY -m pipeline pseudo-labels "$W/depth/$1.h5" "$W/fused/$1_masks.h5" "$W/labels/$1.h5" > "$W/l_$1.log" 2>&1
}
export -f label
printf '%s\n' $SEEDS | xargs -P 4 -I{} bash -c 'label {} || { echo "seed {} failed"; tail -n 3 $W/[ifl]_{}.log; }' \
    | tee -a "$OUT/summary.txt"
grep -h "coverage\|labelled\|pixels" "$W"/l_*.log | head -n 3 | tee -a "$OUT/summary.txt"

left=$(( DEADLINE_S - ($(date +%s) - T0) ))
log "3. train $STEPS steps on the $DEVICE (checkpoints every $EVERY), at most $left s"
scenes=$(for s in $SEEDS; do echo "$W/h5/$s.h5"; done)
labels=$(for s in $SEEDS; do echo "$W/labels/$s.h5"; done)
# shellcheck disable=SC2086
timeout "$left" $PY -m pipeline train --config "$W/config.yaml" --scenes $scenes --labels $labels --init "$INIT" \
    --out "$W/ckpt" > "$W/train_full.log" 2>&1
echo "train exit $? (124: stopped by the deadline)" | tee -a "$OUT/summary.txt"
grep -v "step, loss=" "$W/train_full.log" | tail -n 20 > "$OUT/train.log"
cp "$W/ckpt/losses.csv" "$W"/ckpt/step_*.pt "$OUT/" 2>/dev/null
summarise_losses "$W/ckpt/losses.csv" | tee -a "$OUT/summary.txt"
ls "$OUT" | tee -a "$OUT/summary.txt"
log "done"
