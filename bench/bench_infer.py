"""Inference speed and memory of PatchmatchNet per view: 320x240 and 640x480, 4 sources, 2 threads.

Two ways of running one reference view are compared in the same run:

- ``full``: ``model(images, ...)`` computes the features of all 5 images (a lone call);
- ``cached``: the features of the 4 sources are already there (what ``selfmvs infer`` does with its
  view cache, where each view's features are computed once for the whole scene): the reference's
  features, then PatchMatch and refinement.

The network is the shipped checkpoint (``pipeline/checkpoints/selfmvs_synthetic.pt``: its weights
and its inference settings, e.g. PatchMatch iterations (1, 2, 1)), what ``selfmvs infer`` runs by
default; ``--model paper`` (standalone) or ``SELFMVS_BENCH_MODEL=paper`` takes PatchmatchNet's
default ``ModelConfig`` with random weights instead. Trained weights spread the hypotheses
differently from random ones, which changes the kernels' work a little. As pytest-benchmark cases::

    .venv/bin/python -m pytest bench/bench_infer.py --benchmark-only -p no:cacheprovider [--bench-threads 2]

or, for a table that includes the peak resident memory of a fresh process per case::

    .venv/bin/python bench/bench_infer.py [--threads 2] [--sizes 240x320,480x640]

Peak RSS is that of the whole process (torch and the kernels' runtime included); the baseline is
the RSS after a tiny warm-up forward, before the measured one.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import pytest
import torch

NUM_SOURCES = 4
SIZES = [(240, 320), (480, 640)]


def make_inputs(height: int, width: int, num_sources: int = NUM_SOURCES, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    images, intrinsics, poses = [], [], []
    for index in range(num_sources + 1):
        images.append(torch.rand(1, 3, height, width, generator=generator))
        K = torch.tensor([[0.9 * width, 0.0, width / 2], [0.0, 0.9 * width, height / 2], [0.0, 0.0, 1.0]])
        intrinsics.append(K.unsqueeze(0))
        pose = torch.eye(4)
        pose[0, 3] = 0.1 * (index - num_sources / 2)
        poses.append(pose.unsqueeze(0))
    return images, intrinsics, poses, torch.tensor([1.0]), torch.tensor([5.0])


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(REPO, "pipeline", "checkpoints", "selfmvs_synthetic.pt")


def _kind_from_env() -> str:
    return os.environ.get("SELFMVS_BENCH_MODEL", "shipped")


def make_model(kind: str | None = None):
    """``shipped`` (default): the shipped checkpoint; ``paper``: default ModelConfig, random weights."""
    from pipeline.model import ModelConfig, PatchmatchNet, load_checkpoint

    kind = kind or _kind_from_env()
    if kind == "shipped":
        return load_checkpoint(SHIPPED)[0].eval()
    if kind != "paper":
        raise ValueError(f"model kind must be 'shipped' or 'paper', got {kind!r}")
    torch.manual_seed(0)
    return PatchmatchNet(ModelConfig()).eval()


def run_once(model, inputs, mode: str, source_features=None):
    images, intrinsics, poses, depth_min, depth_max = inputs
    with torch.inference_mode():
        if mode == "full":
            return model(images, intrinsics, poses, depth_min, depth_max)
        features = [model.extract_features(images[0]), *source_features]
        return model(images, intrinsics, poses, depth_min, depth_max, features=features)


def source_features_of(model, inputs):
    with torch.inference_mode():
        return [model.extract_features(image) for image in inputs[0][1:]]


@pytest.fixture(scope="module")
def model():
    return make_model()


@pytest.mark.parametrize("mode", ["full", "cached"])
@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for h, w in SIZES])
def test_infer_view(benchmark, model, bench_device, sync, size, mode):
    """One reference view with 4 sources; threads from ``--bench-threads`` (bench/conftest.py)."""
    net = model.to(bench_device)
    inputs = make_inputs(*size)
    inputs = ([t.to(bench_device) for t in inputs[0]], [t.to(bench_device) for t in inputs[1]],
              [t.to(bench_device) for t in inputs[2]], inputs[3].to(bench_device), inputs[4].to(bench_device))
    sources = source_features_of(net, inputs) if mode == "cached" else None
    benchmark.group = f"infer {size[1]}x{size[0]} {bench_device.type}"
    benchmark.extra_info.update(
        {"impl": mode, "threads": torch.get_num_threads(), "num_sources": NUM_SOURCES, "device": str(bench_device),
         "model": _kind_from_env()}
    )

    def run():
        run_once(net, inputs, mode, sources)
        sync()

    benchmark.pedantic(run, rounds=3, warmup_rounds=1)


# ----------------------------------------------------------------------- standalone, with memory


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure(height: int, width: int, mode: str, threads: int, repeats: int, fixed_mmap: bool = False,
            kind: str = "shipped") -> dict:
    """One case in this process: wall and CPU seconds per view (median), peak and baseline RSS."""
    if fixed_mmap:
        import ctypes

        # glibc: give large freed blocks back at once (M_MMAP_THRESHOLD = -3); lower peak RSS, but
        # page faults on every large allocation.
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)
    torch.set_num_threads(threads)
    model = make_model(kind)
    run_once(model, make_inputs(24, 32), "full")  # load the kernels' compiled code
    baseline = _rss_mb()
    inputs = make_inputs(height, width)
    sources = source_features_of(model, inputs) if mode == "cached" else None
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        run_once(model, inputs, mode, sources)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    walls.sort()
    cpus.sort()
    return {
        "size": f"{width}x{height}",
        "mode": mode,
        "threads": threads,
        "wall_s": walls[len(walls) // 2],
        "cpu_s": cpus[len(cpus) // 2],
        "peak_rss_mb": _rss_mb(),
        "baseline_rss_mb": baseline,
        "load_avg_1min": os.getloadavg()[0],
        "fixed_mmap": fixed_mmap,
        "model": kind,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", default="240x320,480x640", help="HxW list")
    parser.add_argument("--modes", default="full,cached")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fixed-mmap", action="store_true", help="fix glibc's mmap threshold at 1 MiB")
    parser.add_argument("--model", choices=("shipped", "paper"), default="shipped",
                        help="shipped checkpoint (default) or PatchmatchNet's default config with random weights")
    parser.add_argument("--json", help="also write the rows (with the command and date) to this JSON file")
    parser.add_argument("--one", help="internal: run one case H,W,MODE in this process, print JSON")
    args = parser.parse_args(argv)
    if args.one:
        height, width, mode = args.one.split(",")
        print(json.dumps(measure(int(height), int(width), mode, args.threads, args.repeats, args.fixed_mmap, args.model)))
        return 0
    print(f"model: {args.model}; glibc mmap threshold fixed: {args.fixed_mmap}")
    rows = []
    print(f"{'size':>9} {'mode':>7} {'threads':>7} {'wall s':>7} {'cpu s':>7} {'peak MB':>8} {'base MB':>8} {'load':>5}")
    for size in args.sizes.split(","):
        height, width = (int(v) for v in size.split("x"))
        for mode in args.modes.split(","):
            # A fresh process per case: ru_maxrss is the peak over a process's whole life.
            command = [sys.executable, __file__, "--one", f"{height},{width},{mode}",
                       "--threads", str(args.threads), "--repeats", str(args.repeats), "--model", args.model]
            command += ["--fixed-mmap"] if args.fixed_mmap else []
            result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            rows.append(result)
            print(
                f"{result['size']:>9} {mode:>7} {result['threads']:>7} {result['wall_s']:7.2f} {result['cpu_s']:7.2f} "
                f"{result['peak_rss_mb']:8.0f} {result['baseline_rss_mb']:8.0f} {result['load_avg_1min']:5.1f}",
                flush=True,
            )
    if args.json:
        payload = {"date": time.strftime("%Y-%m-%d"), "command": " ".join([sys.executable, *sys.argv]), "forward": rows}
        with open(args.json, "w") as handle:
            json.dump(payload, handle, indent=1)
            handle.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
