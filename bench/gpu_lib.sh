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

# card_tag NAME : the short lower-case name of a card for file names ("NVIDIA H100 80GB HBM3" -> h100,
# "NVIDIA H200" -> h200); a name without a model number is kept, lower-cased, its other characters as '-'.
card_tag() {
    local name=${1#NVIDIA } model
    model=$(printf '%s' "$name" | grep -oE '\b[A-Z]{1,3}[0-9]{2,4}[A-Za-z]?\b' | head -n 1)
    [ -n "$model" ] && name=$model
    printf '%s\n' "$name" | tr 'A-Z' 'a-z' | tr -cs 'a-z0-9\n' '-' | sed 's/^-*//; s/-*$//'
}

# bench_tables JSON... : markdown tables of the pytest-benchmark JSON files of bench_cuda_ops.py (ops
# against their references), bench_infer_run.py (selfmvs infer, kernels against references, with
# PatchmatchNet's published rate as a fixed row) and bench_train_step.py (training step); a file that
# is missing or unreadable gets one line saying so. Targets: op time ratio >= 3, op peak memory ratio
# <= 1/4, infer ratio >= 2.
bench_tables() {
    $PY - "$@" <<'PYTHON' 2>&1
import json, sys

MIB = 2 ** 20
ops, infer, train, unfinished, cards = [], [], [], [], set()
for path in sys.argv[1:]:
    try:
        data = json.load(open(path))
    except (OSError, ValueError) as error:
        print(f"- {path}: no results ({type(error).__name__}: {error})")
        continue
    for bench in data.get("benchmarks", []):
        info = bench["extra_info"]
        cards.add(info.get("card") or info.get("device", "?"))
        if not bench.get("stats") or ("op" in info or "size" in info and "views" in info) and "kernel_median_s" not in info \
                or "recipe" in info and "peak_cuda_bytes" not in info:
            unfinished.append(bench["name"])  # stopped by its stage's time limit: the JSON keeps it half-done
            continue
        if "op" in info:
            ops.append(info)
        elif "reference_s_per_view" in info:
            infer.append(info)
        elif "recipe" in info:
            train.append(dict(info, median_s=bench["stats"]["median"], rounds=bench["stats"]["rounds"]))


def mib(value):
    return "–" if value is None else f"{value / MIB:.0f}" if value >= 10 * MIB else f"{value / MIB:.2f}"


def mark(ok):
    return "" if ok is None else " ✓" if ok else " ✗"


print(f"Device: {', '.join(sorted(cards)) or '?'}")
if unfinished:
    print(f"Unfinished (time limit): {', '.join(unfinished)}")
if ops:
    dram = next((o for o in ops if o.get("dram_source")), {})
    if dram.get("dram_bytes_per_s"):
        print(f"DRAM bandwidth {dram['dram_bytes_per_s'] / 1e12:.2f} TB/s ({dram['dram_source']})")
    print("\n### Ops: forward + backward, kernel against its torch reference (same run, interleaved)\n")
    print("| op | size | kernel ms | reference ms | time ratio (≥ 3) | peak MiB kernel | peak MiB reference "
          "| memory ratio (≤ 0.25) | GB/s | of DRAM |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for o in ops:
        ratio, peak = o["ratio_median"], o.get("peak_ratio")
        gbs = o.get("achieved_bytes_per_s")
        frac = o.get("dram_fraction")
        print(f"| {o['op']} | {o['size']} | {o['kernel_median_s'] * 1e3:.3f} | {o['reference_median_s'] * 1e3:.3f} "
              f"| {ratio:.2f}{mark(ratio >= 3)} | {mib(o.get('kernel_peak_cuda_bytes'))} "
              f"| {mib(o.get('reference_peak_cuda_bytes'))} "
              f"| {'–' if peak is None else f'{peak:.3f}'}{mark(None if peak is None else peak <= 0.25)} "
              f"| {'–' if gbs is None else f'{gbs / 1e9:.3g}'} | {'–' if frac is None else f'{100 * frac:.0f} %'} |")
if infer:
    print("\n### selfmvs infer per view: one pass, 4 sources; kernels against every op swapped for its torch reference\n")
    print("| size | network | views | s/view (Hz) | speed-up over references (≥ 2) | peak CUDA MiB |")
    print("|---|---|---:|---:|---:|---:|")
    for i in infer:
        k, r = i["kernel_median_s"], i["reference_median_s"]
        print(f"| {i['size']} | selfmvs, kernels/ | {i['views']} | {k:.4f} ({1 / k:.1f}) "
              f"| {i['ratio_median']:.2f}{mark(i['ratio_median'] >= 2)} | {mib(i.get('kernel_peak_cuda_bytes'))} |")
        print(f"| {i['size']} | selfmvs, torch references | {i['views']} | {r:.4f} ({1 / r:.1f}) | 1 "
              f"| {mib(i.get('reference_peak_cuda_bytes'))} |")
    # Fixed rows, the same in every table: PatchmatchNet's paper (Wang et al., CVPR 2021) on an RTX 2080 Ti.
    for size, hz in (("640x480", 12.0), ("1600x1200", 3.0)):
        print(f"| {size} | PatchmatchNet: PUBLISHED (Wang et al. 2021, RTX 2080 Ti), not measured here "
              f"| – | {1 / hz:.4f} ({hz:g}) | – | – |")
if train:
    print("\n### Training step (unsup_mvsnet, 4 sources)\n")
    print("| size | batch | autocast | median s/step | rounds | peak CUDA MiB |")
    print("|---|---:|---|---:|---:|---:|")
    for t in train:
        print(f"| {t['size']} | {t['batch']} | {t['amp']} | {t['median_s']:.4f} | {t['rounds']} | {mib(t.get('peak_cuda_bytes'))} |")
PYTHON
}
