"""`selfmvs infer` as a user runs it: a 12-view 640x480 scene, whole process, s/view and peak RSS.

`bench_infer.py` times one forward; this runs the command itself (reading scene.h5, the feature
cache, writing depth.h5, the allocator setting) in a fresh process per run and reads

- s/view from the command's own log line (`... views computed in X s (Y s/view)`, which leaves out
  the one-off kernel warm-up), and
- peak RSS of the process from `wait4` (ru_maxrss of that child alone).

Settings are compared in the same invocation, runs alternating between them (a busy neighbour then
slows every setting alike). The scene is rendered once into --work (`selfmvs render-scene --seed 7
--num-views 12 --width 640 --height 480 --no-distortion` + `selfmvs prepare`)::

    .venv/bin/python bench/bench_infer_run.py --rounds 3 --json bench/results/infer-run-....json
    .venv/bin/python bench/bench_infer_run.py --setting default= --setting "no-fill=plane_fill={enabled: false}"

A setting is NAME=KEY=VALUE,KEY=VALUE (infer config keys; empty: the defaults). As a
pytest-benchmark case (one round of the defaults, peak RSS in extra_info)::

    .venv/bin/python -m pytest bench/bench_infer_run.py --benchmark-only -p no:cacheprovider

Kernels against references (``test_infer_kernels_vs_references``, the table of bench/gpu_check.sh):
per size of ``SIZES`` (640x480, 12 views; 1600x1200, 5 views; ``--bench-smoke``: 64x48), one pass,
4 sources, on ``--bench-device``, the network as shipped and the same network with every public op
of kernels/ replaced by its torch reference. The project has no switch for that, so the bench
makes one: the child process calls :func:`use_references` before the CLI runs, which rebinds each
public function (in ``kernels``, its subpackage and every ``pipeline`` module that imported it by
name) to its ``*_reference`` twin. The rate is read from the log record itself (full precision,
not the log line's two decimals), with the process's peak CUDA memory at that moment. Scenes are
cached in ``$BENCH_INFER_WORK`` (default: the system's temporary folder), rendered beforehand by
``bench_infer_run.py --prepare-scenes 640x480,1600x1200``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "pipeline" / "checkpoints" / "selfmvs_synthetic.pt"
WORK = Path(os.environ.get("BENCH_INFER_WORK") or Path(tempfile.gettempdir()) / "selfmvs-bench-infer-run")
#: name -> (height, width, views) of the kernels-vs-references table
SIZES = {"640x480": (480, 640, 12), "1600x1200": (1200, 1600, 5)}
SMOKE_SIZES = {"smoke-64x48": (48, 64, 5)}
#: rounds (one process of each per round) of test_infer_kernels_vs_references; 1 where not named
INFER_ROUNDS = {"640x480": 2}
#: PatchmatchNet's published inference rate (Wang et al., CVPR 2021, on a GeForce RTX 2080 Ti), views/s:
#: a fixed reference row for the table, not measured here.
PATCHMATCHNET_PUBLISHED_HZ = {"640x480": 12.0, "1600x1200": 3.0}
#: Each public op of kernels/: (its subpackage, the name of its torch reference).
KERNEL_OPS = {
    "ssim": ("ssim", "ssim_reference"),
    "warp_image": ("warp_image", "warp_image_reference"),
    "warp_correlation": ("warp_correlation", "warp_correlation_reference"),
    "adaptive_aggregation": ("adaptive_aggregation", "adaptive_aggregation_reference"),
    "depth_weighted_aggregation": ("depth_weighted_aggregation", "depth_weighted_aggregation_reference"),
    "neighbour_correlation": ("neighbour_correlation", "neighbour_correlation_reference"),
    "pointwise_mlp": ("pointwise_mlp", "pointwise_mlp_reference"),
    "spn_propagate": ("spn_propagation", "spn_propagate_reference"),
}
RATE_MARK = "BENCH-INFER-RATE"
#: One network pass per view, nothing after it: the setting of the speed and memory targets against PatchmatchNet.
ONE_PASS = "flip_average=false,plane_fill={enabled: false}"
RATE = re.compile(r"(\d+) views computed in ([0-9.]+) s \(([0-9.]+) s/view\)")


def use_references() -> list[str]:
    """Rebind every public op of kernels/ to its torch reference, wherever the package and pipeline hold it.

    Returns the rebound names (``module.attribute``). pipeline's modules are imported first, so a
    ``from kernels.x import op`` of theirs is found and rebound too.
    """
    import importlib

    import pipeline.cli  # noqa: F401
    import pipeline.inference  # noqa: F401
    import pipeline.losses  # noqa: F401
    import pipeline.model  # noqa: F401
    import pipeline.training  # noqa: F401

    replacement = {}
    for op, (package, reference_name) in KERNEL_OPS.items():
        module = importlib.import_module(f"kernels.{package}")
        reference = getattr(module, reference_name)
        if op == "pointwise_mlp":  # the reference takes no ``chunk`` (it runs every position at once)
            reference = lambda x, weights, biases, *, chunk=None, _ref=reference: _ref(x, weights, biases)  # noqa: E731
        original = getattr(module, op)
        replacement[id(original)] = (original, reference)
    rebound = []
    for name, module in list(sys.modules.items()):
        if module is None or not (name.split(".")[0] in ("kernels", "pipeline")):
            continue
        for attribute, value in list(vars(module).items()):
            if id(value) in replacement and replacement[id(value)][0] is value:
                setattr(module, attribute, replacement[id(value)][1])
                rebound.append(f"{name}.{attribute}")
    return sorted(rebound)


def report_rate() -> None:
    """Print the infer log's rate record at full precision, with the peak CUDA memory at that moment."""
    import logging

    class Rate(logging.Handler):
        def emit(self, record):
            if "views computed" in str(record.msg):
                import torch

                peak = torch.cuda.max_memory_allocated() if torch.cuda.is_initialized() else -1
                print(f"{RATE_MARK} views={record.args[1]} seconds={record.args[2]!r} peak_cuda_bytes={peak}", flush=True)

    logger = logging.getLogger("selfmvs.infer")
    logger.setLevel(logging.INFO)
    logger.addHandler(Rate())


def selfmvs(*args: str, references: bool = False) -> list[str]:
    """The command line of ``selfmvs ARGS`` in a fresh Python (the rate reported exactly; kernels/ swapped
    for the references with ``references``)."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_infer_run as b; "
            "b.report_rate(); " + ("print('references:', *b.use_references()); " if references else "")
            + "from pipeline.cli import main; sys.exit(main())")
    return [sys.executable, "-c", code, *args]


def make_scene(work: Path, size: tuple[int, int] = (480, 640), views: int = 12) -> Path:
    """The benchmark scene (rendered and prepared once per --work folder)."""
    height, width = size
    scene = work / f"scene-{views}x{width}x{height}.h5"
    if not scene.is_file():
        folder = work / f"render-{views}x{width}x{height}"
        subprocess.run(selfmvs("render-scene", str(folder), "--seed", "7", "--num-views", str(views),
                               "--width", str(width), "--height", str(height), "--no-distortion"), check=True, cwd=REPO)
        subprocess.run(selfmvs("prepare", str(folder), str(scene), "--max-image-size", "0"), check=True, cwd=REPO)
    return scene


def run_once(scene: Path, options: dict, num_sources: int, checkpoint: Path = SHIPPED, device: str | None = None,
             references: bool = False) -> dict:
    """One `selfmvs infer` process: s/view from its log, its peak RSS in MB (and peak CUDA memory on a GPU)."""
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.yaml"
        config.write_text("infer:\n" + "".join(f"  {key}: {value}\n" for key, value in options.items()) if options else "{}\n")
        command = selfmvs("infer", str(scene), str(checkpoint), str(Path(tmp) / "depth.h5"),
                          "--num-sources", str(num_sources), "--config", str(config),
                          *(("--device", device) if device else ()), references=references)
        started = time.perf_counter()
        child = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        output = child.stdout.read()
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"selfmvs infer failed:\n{output[-2000:]}")
    exact = re.search(RATE_MARK + r" views=(\d+) seconds=([0-9.e+-]+) peak_cuda_bytes=(-?\d+)", output)
    match = RATE.search(output)
    if match is None or exact is None:
        raise RuntimeError(f"no 'views computed' line in the log:\n{output[-2000:]}")
    views, seconds, peak_cuda = int(exact[1]), float(exact[2]), int(exact[3])
    rebound = re.search(r"^references: (.*)$", output, re.M)
    return {"views": views, "s_per_view": seconds / max(views, 1), "process_wall_s": round(wall, 2),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "peak_cuda_bytes": peak_cuda if peak_cuda >= 0 else None,
            **({"references": rebound[1].split()} if rebound else {})}


def parse_setting(text: str) -> tuple[str, dict]:
    name, _, rest = text.partition("=")
    options = dict(item.split("=", 1) for item in rest.split(",") if item)
    return name, options


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "selfmvs-bench-infer-run")
    parser.add_argument("--num-sources", default="4,6", help="comma-separated (default 4,6)")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=KEY=VALUE,...",
                        help="default: one-pass=flip_average=false,plane_fill={enabled: false} (one network pass, "
                        "the setting of the targets against PatchmatchNet), default= (the workflow's: mirrored pass "
                        "and planar in-fill) and glibc-heap= (one pass with mmap_threshold_kib=0)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--checkpoint", type=Path, default=SHIPPED)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--device", default=None, help="infer.device (default: the config's)")
    parser.add_argument("--prepare-scenes", default=None, metavar="SIZE,...",
                        help=f"only render and prepare the scenes of these SIZES ({', '.join(SIZES | SMOKE_SIZES)}) "
                        "into $BENCH_INFER_WORK, for test_infer_kernels_vs_references")
    args = parser.parse_args(argv)
    if args.prepare_scenes:
        for name in args.prepare_scenes.split(","):
            height, width, views = (SIZES | SMOKE_SIZES)[name]
            started = time.perf_counter()
            print(make_scene(WORK, (height, width), views), f"{time.perf_counter() - started:.1f} s", flush=True)
        return 0
    settings = [parse_setting(s) for s in (args.setting or [
        f"one-pass={ONE_PASS}", "default=", f"glibc-heap={ONE_PASS},mmap_threshold_kib=0"])]
    args.work.mkdir(parents=True, exist_ok=True)
    scene = make_scene(args.work)
    rows = []
    for round_ in range(args.rounds):
        for num_sources in (int(n) for n in args.num_sources.split(",")):
            for name, options in settings:
                row = {"setting": name, "options": options, "num_sources": num_sources, "round": round_,
                       **run_once(scene, options, num_sources, args.checkpoint, args.device)}
                rows.append(row)
                print(f"{name:>14s}  {num_sources} sources  {row['s_per_view']:.2f} s/view  "
                      f"{row['peak_rss_mb']:.0f} MB  (wall {row['process_wall_s']:.1f} s)", flush=True)
    if args.json:
        import platform

        import torch

        args.json.write_text(json.dumps({
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, torch {torch.__version__}",
            "scene": "selfmvs render-scene --seed 7 --num-views 12 --width 640 --height 480 --no-distortion; selfmvs prepare",
            "command": "selfmvs infer scene.h5 CHECKPOINT out.h5 --num-sources N --config (infer: options)",
            "rows": rows,
        }, indent=1) + "\n")
    return 0


def test_infer_run_640x480(benchmark, tmp_path_factory):
    """One pass (flip_average and plane_fill off): the setting of the targets against PatchmatchNet."""
    scene = make_scene(tmp_path_factory.mktemp("infer-run"))
    result = benchmark.pedantic(lambda: run_once(scene, parse_setting(f"one-pass={ONE_PASS}")[1], 4), rounds=1,
                                iterations=1)
    benchmark.extra_info.update(result)


def test_infer_run_640x480_defaults(benchmark, tmp_path_factory):
    """The workflow's defaults: each view also on the mirrored scene, then the planar in-fill."""
    scene = make_scene(tmp_path_factory.mktemp("infer-run"))
    result = benchmark.pedantic(lambda: run_once(scene, {}, 4), rounds=1, iterations=1)
    benchmark.extra_info.update(result)


def test_infer_kernels_vs_references(benchmark, bench_device, bench_size, bench_smoke):
    """`selfmvs infer`, one pass, 4 sources: kernels/ as shipped against every op swapped for its reference.

    One process of each per round, alternating (``INFER_ROUNDS``; 1 with --bench-smoke). ``extra_info``:
    s/view and peak CUDA memory of each, ``ratio_median`` = reference s/view / kernel s/view (target >= 2).
    """
    import statistics

    height, width, views = (SIZES | SMOKE_SIZES)[bench_size]
    scene = make_scene(WORK, (height, width), views)
    options = parse_setting(f"one-pass={ONE_PASS}")[1]
    rows = {"kernel": [], "reference": []}

    def pair():
        for impl in ("kernel", "reference") if len(rows["kernel"]) % 2 == 0 else ("reference", "kernel"):
            rows[impl].append(run_once(scene, options, 4, device=str(bench_device), references=impl == "reference"))

    benchmark.group = f"infer {bench_size} {bench_device.type}"
    benchmark.pedantic(pair, rounds=1 if bench_smoke else INFER_ROUNDS.get(bench_size, 1), iterations=1)
    kernel_s = [r["s_per_view"] for r in rows["kernel"]]
    reference_s = [r["s_per_view"] for r in rows["reference"]]
    benchmark.extra_info.update(
        size=bench_size, height=height, width=width, views=views, num_sources=4, setting=ONE_PASS,
        device=str(bench_device), kernel_s_per_view=kernel_s, reference_s_per_view=reference_s,
        kernel_median_s=statistics.median(kernel_s), reference_median_s=statistics.median(reference_s),
        ratio_median=statistics.median(r / k for k, r in zip(kernel_s, reference_s)),
        kernel_peak_cuda_bytes=max((r["peak_cuda_bytes"] or 0) for r in rows["kernel"]) or None,
        reference_peak_cuda_bytes=max((r["peak_cuda_bytes"] or 0) for r in rows["reference"]) or None,
        references=rows["reference"][0].get("references", []),
        published_patchmatchnet_hz=PATCHMATCHNET_PUBLISHED_HZ.get(bench_size),
    )


if __name__ == "__main__":
    raise SystemExit(main())
