"""Photos -> cloud with the workflow's defaults against one network pass over all views plus fusion, in one run.

The reference is what a plain MVS network costs: ``selfmvs infer`` with one pass and no in-fill
(``--no-flip-average --no-plane-fill``, the default number of sources) and ``selfmvs fuse``. The
chain is the workflow itself, ``snakemake results/<scene>/fused.ply`` with the defaults of
``config/config.yaml`` (and ``--set`` overrides): prepare, per-scene fine-tuning when it is on,
inference with the default settings, fusion. Each rule's seconds come from the workflow's own
``benchmarks/`` files; the chain's total is the wall time of the snakemake call. Both sides run in
the same call, one after the other, so compare the ratio, not the seconds, across runs.

    .venv/bin/python bench/chain_speed.py SCENE_DIR --work /tmp/chain [--set train.finetune.enabled=false] \\
        --json bench/results/chain-speed-cpu-2core-DATE.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO))  # run as a script from anywhere: the pipeline package of this checkout


def timed(*command: str, cwd: Path | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=cwd, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def rule_seconds(benchmarks: Path, scene: str) -> dict[str, float]:
    """Seconds per rule of one scene from Snakemake's benchmark files (``benchmarks/<scene>/<rule>.tsv``
    or ``benchmarks/<rule>_<scene>.tsv``, whichever the rules use)."""
    seconds = {}
    for tsv in sorted(benchmarks.rglob("*.tsv")):
        if scene not in str(tsv.relative_to(benchmarks)):
            continue
        with tsv.open() as handle:
            row = next(csv.DictReader(handle, delimiter="\t"))
        seconds[str(tsv.relative_to(benchmarks).with_suffix(""))] = float(row["s"])
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scene", type=Path, help="a scene folder: images/ and sparse/ (COLMAP)")
    parser.add_argument("--work", type=Path, required=True, help="folder for both runs (emptied first)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="workflow config override for the chain (YAML value), repeatable")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    from pipeline.config import parse_assignments

    try:
        overrides = parse_assignments(args.set)
    except ValueError as error:
        raise SystemExit(f"--set: {error}, e.g. train.finetune.enabled=false") from None
    scene_dir = args.scene.resolve()
    if not (scene_dir / "images").is_dir():
        raise SystemExit(f"{scene_dir}: no images/ folder")
    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    (work / "reference").mkdir(parents=True)
    name = "scene"
    load = os.getloadavg()[0]

    selfmvs = str(BIN / "selfmvs")
    ref = work / "reference"
    prepare_s = timed(selfmvs, "prepare", str(scene_dir), str(ref / "scene.h5"))
    infer_s = timed(selfmvs, "infer", str(ref / "scene.h5"), str(REPO / "pipeline/checkpoints/selfmvs_synthetic.pt"),
                    str(ref / "depth.h5"), "--no-flip-average", "--no-plane-fill")
    fuse_s = timed(selfmvs, "fuse", str(ref / "scene.h5"), str(ref / "depth.h5"), str(ref / "fused.ply"))

    chain = work / "chain"
    chain.mkdir()
    config = {"scenes": {name: str(scene_dir)}, **overrides}
    (chain / "config.yaml").write_text(json.dumps(config))
    chain_s = timed(str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(chain),
                    "--configfile", str(chain / "config.yaml"), "--cores", str(args.cores), "--quiet=all",
                    f"results/{name}/fused.ply", cwd=REPO)
    rules = rule_seconds(chain / "benchmarks", name)
    reference_s = infer_s + fuse_s
    payload = {
        "what": "photos -> cloud, workflow defaults, against one network pass over all views plus fusion",
        "scene": str(scene_dir), "overrides": config, "load_avg_1min_at_start": load,
        "reference": {"prepare_s": prepare_s, "infer_one_pass_s": infer_s, "fuse_s": fuse_s, "total_s": reference_s},
        "chain": {"wall_s": chain_s, "rules_s": rules},
        "ratio_chain_to_reference": chain_s / reference_s,
        "ratio_chain_without_prepare": (chain_s - sum(v for k, v in rules.items() if "prepare" in k)) / reference_s,
    }
    print(json.dumps(payload, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
