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
#: One network pass per view, nothing after it: the setting of the speed and memory targets against PatchmatchNet.
ONE_PASS = "flip_average=false,plane_fill={enabled: false}"
RATE = re.compile(r"(\d+) views computed in ([0-9.]+) s \(([0-9.]+) s/view\)")


def selfmvs(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from pipeline.cli import main; sys.exit(main())", *args]


def make_scene(work: Path, size: tuple[int, int] = (480, 640), views: int = 12) -> Path:
    """The benchmark scene (rendered and prepared once per --work folder)."""
    height, width = size
    scene = work / f"scene-{views}x{width}x{height}.h5"
    if not scene.is_file():
        folder = work / f"render-{views}x{width}x{height}"
        subprocess.run(selfmvs("render-scene", str(folder), "--seed", "7", "--num-views", str(views),
                               "--width", str(width), "--height", str(height), "--no-distortion"), check=True, cwd=REPO)
        subprocess.run(selfmvs("prepare", str(folder), str(scene)), check=True, cwd=REPO)
    return scene


def run_once(scene: Path, options: dict, num_sources: int, checkpoint: Path = SHIPPED) -> dict:
    """One `selfmvs infer` process: s/view from its log, its peak RSS in MB."""
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.yaml"
        config.write_text("infer:\n" + "".join(f"  {key}: {value}\n" for key, value in options.items()) if options else "{}\n")
        command = selfmvs("infer", str(scene), str(checkpoint), str(Path(tmp) / "depth.h5"),
                          "--num-sources", str(num_sources), "--config", str(config))
        started = time.perf_counter()
        child = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        output = child.stdout.read()
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"selfmvs infer failed:\n{output[-2000:]}")
    match = RATE.search(output)
    if match is None:
        raise RuntimeError(f"no 'views computed' line in the log:\n{output[-2000:]}")
    return {"views": int(match[1]), "s_per_view": float(match[3]), "process_wall_s": round(wall, 2),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


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
    args = parser.parse_args(argv)
    settings = [parse_setting(s) for s in (args.setting or [
        f"one-pass={ONE_PASS}", "default=", f"glibc-heap={ONE_PASS},mmap_threshold_kib=0"])]
    args.work.mkdir(parents=True, exist_ok=True)
    scene = make_scene(args.work)
    rows = []
    for round_ in range(args.rounds):
        for num_sources in (int(n) for n in args.num_sources.split(",")):
            for name, options in settings:
                row = {"setting": name, "options": options, "num_sources": num_sources, "round": round_,
                       **run_once(scene, options, num_sources, args.checkpoint)}
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


if __name__ == "__main__":
    raise SystemExit(main())
