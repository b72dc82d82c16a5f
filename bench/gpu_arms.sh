#!/usr/bin/env bash
# Train several arms side by side on one lent GPU (the network is dispatch-bound there, so two
# processes share a card at ~0.7 s/step each at batch 8), on the 14 training scenes rendered there.
# Each arm: NAME:INIT_CHECKPOINT:CONFIG_YAML (its `train` section; `selfmvs train --init`).
# Back in $OUT: last_NAME.pt, losses_NAME.csv, train_NAME.log and summary.txt (8 files at most: 2 arms).
#
#   carry: .whl (see bench/README.md "GPU runs") and the folder holding the inits and configs
#   ARMS="vvn:.devcarry/init.pt:.devcarry/ft.yaml ctl:.devcarry/init_ctl.pt:.devcarry/ft.yaml" TRAIN_S=360 bash bench/gpu_arms.sh
#
# Ran on 2026-11-27 (H200, session 9) for the valid-view-normalisation arms: rendering 26 s, 300 steps
# per arm in 360 s (bench/README.md).
set -u
PY=${PY:-python3}
W=${WORK:-/tmp/arms}
TRAIN_S=${TRAIN_S:-360}
SEEDS=${SEEDS:-$(seq 1000 1013)}  # the base run's training scenes
OUT=${OUT:-/tmp/arms_out}
mkdir -p "$W/scenes" "$W/h5" "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
echo "== $(date +%T) render" | tee "$OUT/summary.txt"
render() {
    $PY -m pipeline render-scene "$W/scenes/$1" --seed "$1" --varied --num-views 12 --width 400 --height 300 \
        > "$W/r_$1.log" 2>&1 && $PY -m pipeline prepare "$W/scenes/$1" "$W/h5/$1.h5" > "$W/p_$1.log" 2>&1
}
export -f render; export PY W
printf '%s\n' $SEEDS | xargs -P 14 -I{} bash -c 'render {} || { echo "seed {} failed"; tail -n 3 $W/r_{}.log $W/p_{}.log; }' \
    | tee -a "$OUT/summary.txt"
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
    $PY - "$OUT/losses_$name.csv" "$name" <<'PY' | tee -a "$OUT/summary.txt"
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
seconds = [float(r["seconds"]) for r in rows[10:]] or [float(r["seconds"]) for r in rows]  # after the first 10
print(sys.argv[2], f"{len(rows)} steps, median {statistics.median(seconds):.3f} s/step, "
      f"loss first/last 20: {statistics.mean(float(r['loss']) for r in rows[:20]):.3f} / "
      f"{statistics.mean(float(r['loss']) for r in rows[-20:]):.3f}")
PY
done
echo "== $(date +%T) done" | tee -a "$OUT/summary.txt"
