# Helpers shared by the GPU scripts (sourced, not run): experiments/gpu_train.sh, gpu_arms.sh,
# gpu_self_train.sh and bench/gpu_check.sh. They expect PY (the Python to run) and W (the work folder).

# render_scenes JOBS VIEWS WIDTH HEIGHT SEED... : render and prepare each seed's scene as the workflow's
# training_scene and training_prepare rules do, JOBS at a time, into $W/scenes/SEED and $W/h5/SEED.h5
# (a seed whose $W/h5/SEED.h5 exists is skipped: prepare writes it atomically); prints a line per failed seed with its log's tail.
render_scenes() {
    local jobs=$1 views=$2 width=$3 height=$4; shift 4
    mkdir -p "$W/scenes" "$W/h5"
    printf '%s\n' "$@" | PY=$PY W=$W VIEWS=$views WIDTH=$width HEIGHT=$height xargs -P "$jobs" -I{} bash -c '
        [ -f "$W/h5/$1.h5" ] && exit 0
        $PY -m pipeline render-scene "$W/scenes/$1" --seed "$1" --varied --num-views "$VIEWS" --width "$WIDTH" \
            --height "$HEIGHT" > "$W/r_$1.log" 2>&1 &&
        $PY -m pipeline prepare "$W/scenes/$1" "$W/h5/$1.h5" > "$W/p_$1.log" 2>&1 ||
        { echo "seed $1 failed"; tail -n 3 "$W/r_$1.log" "$W/p_$1.log" 2>/dev/null; }' _ {}
}

# summarise_losses LOSSES_CSV [NAME [LAST]] : steps, median s/step after the first 10 (or over the last LAST
# rows: a resumed run's file starts with the steps of earlier runs), first and last loss.
summarise_losses() {
    $PY - "$@" <<'PYTHON' 2>&1
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
name = sys.argv[2] + ": " if len(sys.argv) > 2 and sys.argv[2] else ""
if len(sys.argv) > 3:
    timed, which = rows[-int(sys.argv[3]):], f"over the last {sys.argv[3]}"
else:
    timed, which = (rows[10:], "after 10") if len(rows) > 10 else (rows, "over all")
secs = [float(r["seconds"]) for r in timed]
print(f"{name}{len(rows)} steps (to step {rows[-1]['step']}), median {statistics.median(secs):.4f} s/step {which}, "
      f"loss {rows[0]['loss']} -> {rows[-1]['loss']}")
PYTHON
}
