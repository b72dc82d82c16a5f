"""Interleaved A/B of the warp_correlation CPU forward kernel: this tree against a git revision.

Loads the revision's ``kernels/warp_correlation/cpu.py`` as a separate module and alternates the
two kernels forward by forward (same model, same views, same cached features) in one process, so
machine noise hits both alike; reports wall/CPU medians and the per-pair ratio, and checks that
the depths agree. Writes JSON with ``--json``.

    PYTHONPATH=. .venv/bin/python experiments/diag_kernel_ab.py REV CHECKPOINT SCENE_H5 [--views 4] [--rounds 4] [--json OUT]
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
    """The revision's ``kernels/warp_correlation/cpu.py`` as a module of its own."""
    return module_at_revision(rev, "kernels/warp_correlation/cpu.py", "wc_cpu_rev")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev")
    parser.add_argument("checkpoint")
    parser.add_argument("scene_h5")
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()

    from kernels.warp_correlation import cpu
    from pipeline.formats.scene_file import read_scene, read_view
    from pipeline.model import load_checkpoint
    from pipeline.inference import ViewCache

    torch.set_num_threads(args.threads)
    old = load_revision_kernel(args.rev)
    model, _ = load_checkpoint(args.checkpoint)
    model.eval()
    scene = read_scene(args.scene_h5, load_images=False)
    cache = ViewCache(model, args.scene_h5, torch.device("cpu"), None, 64)
    items = list(scene.views.items())[: args.views]
    this_forward = cpu.forward
    variants = {"revision": old.forward, "this tree": this_forward}

    def run(image_id, view):
        ref = read_view(args.scene_h5, image_id)
        views = [cache.get(image_id, ref)] + [cache.get(s) for s in list(view.source_ids)[:4]]
        return model(
            [v.image for v in views], [v.intrinsics for v in views], [v.cam_from_world for v in views],
            torch.tensor([float(ref.depth_range[0])]), torch.tensor([float(ref.depth_range[1])]),
            features=[v.features for v in views],
        ).depth

    walls = {name: [] for name in variants}
    cpus = {name: [] for name in variants}
    max_diff = 0.0
    try:
        with torch.inference_mode():
            for forward in variants.values():  # warm-up: compile or load both
                cpu.forward = forward
                run(*items[0])
            for _ in range(args.rounds):
                for item in items:
                    depths = []
                    for name, forward in variants.items():
                        cpu.forward = forward
                        wall, clock = time.perf_counter(), time.process_time()
                        depths.append(run(*item))
                        walls[name].append(time.perf_counter() - wall)
                        cpus[name].append(time.process_time() - clock)
                    max_diff = max(max_diff, (depths[0] - depths[1]).abs().max().item())
    finally:
        cpu.forward = this_forward
    ratios = [a / b for a, b in zip(walls["this tree"], walls["revision"])]
    result = {
        "date": datetime.date.today().isoformat(),
        "command": " ".join([sys.executable, *sys.argv]),
        "revision": subprocess.run(["git", "rev-parse", args.rev], capture_output=True, text=True).stdout.strip(),
        "this_tree": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "forwards_per_variant": len(ratios),
        "wall_median_s": {k: statistics.median(v) for k, v in walls.items()},
        "cpu_median_s": {k: statistics.median(v) for k, v in cpus.items()},
        "ratio_this_over_revision": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)},
        "max_abs_depth_difference": max_diff,
        "load_avg_1min": os.getloadavg()[0],
    }
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
