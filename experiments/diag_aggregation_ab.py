"""Interleaved A/B of the adaptive-aggregation CPU kernel: reference, this tree and a git revision.

Per stage of ``bench/bench_adaptive_aggregation.py`` and per round, the torch reference, this
tree's numba kernel and the numba kernel of ``REV`` (its ``kernels/adaptive_aggregation/cpu.py``
loaded as a separate module) each run forward + backward (gradients to cost, offsets and
weights, loss ``sum(out**2)``) once on the round's fresh inputs, in an order rotated round by
round, so the other jobs of a shared machine hit all three alike. By default one thread (torch
and numba) and CPU time of the process (``time.process_time``): the work each side does.
Reports per-stage medians, the median of the per-round ratios reference / kernel, and the
largest differences of both kernels' results from the reference's. Writes JSON with ``--json`` (a second run adds its measurement to the same file).

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python experiments/diag_aggregation_ab.py REV [--rounds 21] [--json OUT]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from _revision import module_at_revision  # experiments/_revision.py, beside this script


def load_revision_kernel(rev: str):
    """The revision's ``kernels/adaptive_aggregation/cpu.py`` as a module of its own."""
    return module_at_revision(rev, "kernels/adaptive_aggregation/cpu.py", "aggregation_cpu_rev")


def git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True).stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="git revision whose CPU kernel is the 'before' arm")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--threads", type=int, default=1, help="torch and numba threads")
    parser.add_argument("--wall", action="store_true", help="time wall clock (time.perf_counter) instead of CPU time")
    parser.add_argument("--machine", default="cpu-2core", help="the machine's name in the JSON")
    parser.add_argument("--json", help="write (or, if it exists, add a measurement to) this JSON file")
    args = parser.parse_args()

    import numba

    import kernels
    from bench.bench_adaptive_aggregation import STAGES, make_inputs
    from kernels.adaptive_aggregation import adaptive_aggregation_reference, cpu

    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    clock = time.perf_counter if args.wall else time.process_time
    revision = load_revision_kernel(args.rev)
    this_tree = (cpu.forward, cpu.backward)
    arms = ["reference", "kernel", "kernel_before"]

    def run(arm, leaves):
        if arm == "reference":
            out = adaptive_aggregation_reference(*leaves)
            (out * out).sum().backward()
            return out.detach(), [leaf.grad for leaf in leaves]
        # the autograd function calls cpu.backward later: the swap lasts until the backward is done
        cpu.forward, cpu.backward = this_tree if arm == "kernel" else (revision.forward, revision.backward)
        try:
            out = kernels.adaptive_aggregation(*leaves)
            (out * out).sum().backward()
        finally:
            cpu.forward, cpu.backward = this_tree
        return out.detach(), [leaf.grad for leaf in leaves]

    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    stages = {}
    for case, (D, H, W) in STAGES.items():
        for arm in arms:  # compile or load from the cache outside the measurement
            run(arm, make_inputs(case, size=(8, 8)))
            run(arm, make_inputs(case))
        times = {arm: [] for arm in arms}
        names = ("out", "grad_cost", "grad_offsets", "grad_weights")
        max_difference = {arm: dict.fromkeys(names, 0.0) for arm in arms[1:]}
        for index in range(args.rounds):
            inputs = make_inputs(case, seed=index)
            order = arms[index % 3 :] + arms[: index % 3]
            results = {}
            for arm in order:
                leaves = [t.detach().clone().requires_grad_() for t in inputs]  # made outside the timing, as the bench's setup
                start = clock()
                results[arm] = run(arm, leaves)
                times[arm].append(1e3 * (clock() - start))
            out_ref, grads_ref = results["reference"]
            for arm in arms[1:]:
                out_arm, grads_arm = results[arm]
                for name, got, want in zip(names, [out_arm, *grads_arm], [out_ref, *grads_ref]):
                    max_difference[arm][name] = max(max_difference[arm][name], (got - want).abs().max().item())
        ratio = [r / k for r, k in zip(times["reference"], times["kernel"])]
        ratio_before = [r / k for r, k in zip(times["reference"], times["kernel_before"])]
        stages[case] = {
            "B": 1, "D": D, "H": H, "W": W, "K": 9,
            "reference_ms_median": round(statistics.median(times["reference"]), 2),
            "kernel_ms_median": round(statistics.median(times["kernel"]), 2),
            "kernel_before_ms_median": round(statistics.median(times["kernel_before"]), 2),
            "ratio": round(statistics.median(ratio), 3),
            "ratio_before": round(statistics.median(ratio_before), 3),
            "ratio_of_fastest_rounds": round(min(times["reference"]) / min(times["kernel"]), 3),
            "ratio_of_fastest_rounds_before": round(min(times["reference"]) / min(times["kernel_before"]), 3),
            "max_abs_difference_to_reference": max_difference,
            "per_round_ms": {arm: [round(t, 2) for t in times[arm]] for arm in arms},
        }
        print(case, {k: v for k, v in stages[case].items() if k != "per_round_ms"}, flush=True)
    what = (
        f"wall time, {args.threads} thread(s) (torch and numba), time.perf_counter" if args.wall
        else f"CPU time of the process, {args.threads} thread(s) (torch and numba), time.process_time"
    )
    commit = git("rev-parse", "--short", "HEAD")
    if git("status", "--porcelain", "--", "kernels"):
        commit += " (with uncommitted changes under kernels/)"
    measurement = {
        "what": what,
        "kernel_commit": commit,
        "started": started,
        "load_average_at_start": load_at_start,
        "rounds": args.rounds,
        "stages": stages,
    }
    if args.json:
        if os.path.exists(args.json):  # a further run of the same comparison
            with open(args.json) as handle:
                result = json.load(handle)
            result["measurements"].append(measurement)
        else:
            result = {
                "date": datetime.date.today().isoformat(),
                "machine": args.machine,
                "op": (
                    "kernels.adaptive_aggregation (CPU, numba) vs adaptive_aggregation_reference, forward + backward "
                    "(gradients to cost, offsets and weights, loss sum(out**2)), inputs as bench/bench_adaptive_aggregation.py "
                    "(batch 1, 640x512 image, K=9)"
                ),
                "commit": commit,
                "commit_before": git("rev-parse", "--short", args.rev),
                "command": "PYTHONPATH=. OMP_NUM_THREADS=1 " + " ".join(["python", *sys.argv]),
                "method": (
                    "one process per measurement; per round the reference, the kernel and the kernel of commit_before each run "
                    "once on the round's fresh inputs (its own copies, made before its clock starts), order rotated round by round; "
                    "'ratio' = median over rounds of reference time / kernel time; times in ms, medians over rounds; "
                    "'ratio_of_fastest_rounds' = fastest reference / fastest kernel; max_abs_difference_to_reference: "
                    "each kernel against the reference over all rounds (offset gradients jump where a sample crosses a pixel "
                    "boundary, and the reference's normalised grid moves positions by ~1e-7 * width)"
                ),
                "measurements": [measurement],
            }
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=1)
            handle.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
