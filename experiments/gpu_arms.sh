#!/usr/bin/env bash
# Train several arms side by side on one GPU (the network is dispatch-bound there, so two
# processes share a card at ~0.7 s/step each at batch 8), on the 14 training scenes rendered there.
# Each arm: NAME:INIT_CHECKPOINT:CONFIG_YAML (its `train` section; `selfmvs train --init`).
# Back in $OUT: last_NAME.pt, losses_NAME.csv, train_NAME.log and summary.txt (8 files at most: 2 arms).
#
#   carry: .whl (see bench/README.md, "GPU check") and the folder holding the inits and configs
#   ARMS="vvn:.devcarry/init.pt:.devcarry/ft.yaml ctl:.devcarry/init_ctl.pt:.devcarry/ft.yaml" TRAIN_S=360 bash experiments/gpu_arms.sh
#
# Ran on 2026-11-27 (NVIDIA H200) for the valid-view-normalisation arms: rendering 26 s, 300 steps
# per arm in 360 s (docs/benchmarks.md).
set -u
PY=${PY:-python3}
W=${WORK:-/tmp/arms}
TRAIN_S=${TRAIN_S:-360}
SEEDS=${SEEDS:-$(seq 1000 1013)}  # the base run's training scenes
OUT=${OUT:-/tmp/arms_out}
mkdir -p "$W/scenes" "$W/h5" "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
. "$(dirname "$0")/../bench/gpu_lib.sh"
echo "== $(date +%T) render" | tee "$OUT/summary.txt"
# shellcheck disable=SC2086
render_scenes 14 12 400 300 $SEEDS | tee -a "$OUT/summary.txt"
scenes=$(ls "$W"/h5/*.h5 2>/dev/null | wc -l)
echo "$scenes scenes" | tee -a "$OUT/summary.txt"
[ "$scenes" -gt 0 ] || { echo "no training scene rendered (PY=$PY)" | tee -a "$OUT/summary.txt"; exit 1; }
echo "== $(date +%T) train ${ARMS} for ${TRAIN_S} s" | tee -a "$OUT/summary.txt"
for arm in $ARMS; do
    IFS=: read -r name init cfg <<< "$arm"
    timeout "$TRAIN_S" $PY -m pipeline train --config "$cfg" --scenes "$W"/h5/*.h5 --out "$W/$name" --init "$init" \
        > "$W/train_$name.log" 2>&1 &
done
wait
for arm in $ARMS; do
    name=${arm%%:*}
    grep -v "step, loss=" "$W/train_$name.log" | tail -n 6 > "$OUT/train_$name.log"
    cp "$W/$name/last.pt" "$OUT/last_$name.pt"; cp "$W/$name/losses.csv" "$OUT/losses_$name.csv"
    summarise_losses "$OUT/losses_$name.csv" "$name" | tee -a "$OUT/summary.txt"
done
echo "== $(date +%T) done" | tee -a "$OUT/summary.txt"
