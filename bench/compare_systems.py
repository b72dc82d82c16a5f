"""The self-supervised MVS systems side by side: each trained with the same budget, from the same start, on
the same training scenes, then scored the same way.

Systems (``--systems``; ``pipeline.losses.recipes`` names the terms of each):

  unsup_mvsnet  PatchmatchNet, recipe unsup_mvsnet (photometric + SSIM + smoothness)
  mvs2          PatchmatchNet, recipe mvs2 (+ symmetric multi-view consistency: every view the reference in turn)
  mvs2_spn      the same with ``train.model: {refinement: spn}`` (MVS^2's spatial propagation refinement)
  m3vsnet       PatchmatchNet, recipe m3vsnet (+ feature-wise + depth-normal consistency). The feature term
                uses ImageNet VGG16 weights (``--vgg16-weights``) when given; without them it compares a
                frozen copy of the network's initial feature pyramid (from scratch a fixed random
                projection; a WARNING in the training log).
  jdacs         PatchmatchNet, recipe jdacs (+ augmentation consistency; co-segmentation needs the same VGG16
                file and is OFF without it)
  jdacs_ms      CVP-MVSNet (the recipe's backbone), recipe jdacs_ms

Procedure, each step a ``selfmvs`` verb in its own process (logs under ``WORK/logs``):

1. Training scenes: ``render-scene --varied`` object scenes (``--train-seeds``) and optionally indoor rooms
   (``--train-indoor-seeds``), each prepared once.
2. Training: ``selfmvs train`` with one config per system that differs only in ``loss.recipe`` and
   ``model`` (steps, batch, crop size, sources, seed, learning rate and schedule shared). ``--init CKPT``
   starts every system of that checkpoint's backbone from it; the others start from scratch with the same
   seed. s/step is the median of ``losses.csv``'s per-step seconds after the first step (which loads the
   kernels; a one-step run has only that one); peak RSS is the training process's (``os.wait4``).
3. Scoring, with the same inference settings for every system (one pass and no planar in-fill unless
   ``--flip-average`` / ``--plane-fill``): held-out object scenes (``--heldout-seeds``) and indoor rooms
   (``--indoor-seeds``): depth within 0.5 / 1 / 2 % (``quality_heldout.depth_quality``) and, after
   ``selfmvs fuse`` + ``selfmvs evaluate``, precision / recall / F-score at 0.25 / 0.5 / 1 % of the
   ground truth's diagonal; DTU scan 24 (``--dtu``, skipped when absent): the share of (view, sparse COLMAP
   point) pairs whose inferred depth is within 1 % (``experiments/dtu_plane_fill.sparse_within``), on the
   first ``--dtu-views`` views (a scene prepared from those views and the sparse points they share).
   Per set the figures are the mean over its scenes. Inference s/view is the wall time of ``selfmvs
   infer`` (the whole process) over its views; peak RSS that process's.

Everything lands in ``--work`` and a rerun skips what exists there (a finished training run, a depth file,
an eval.json), so a long comparison can be stopped and continued; a training run that stopped part-way is
resumed (``train --resume``). A training folder whose stored config differs from this run's is an error.

    .venv/bin/python bench/compare_systems.py --work /tmp/compare --steps 300 \\
        [--systems unsup_mvsnet,jdacs] [--init pipeline/checkpoints/selfmvs_synthetic.pt] \\
        [--json bench/results/compare-systems-....json] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))  # the pipeline package of this checkout
sys.path.insert(0, str(BENCH))
from quality_heldout import FSCORE_FRACTIONS, THRESHOLDS, cloud_quality, depth_quality  # noqa: E402

# name -> (loss recipe, train.model overrides, backbone)
SYSTEMS = {
    "unsup_mvsnet": ("unsup_mvsnet", {}, "patchmatchnet"),
    "mvs2": ("mvs2", {}, "patchmatchnet"),
    "mvs2_spn": ("mvs2", {"refinement": "spn"}, "patchmatchnet"),
    "m3vsnet": ("m3vsnet", {}, "patchmatchnet"),
    "jdacs": ("jdacs", {}, "patchmatchnet"),
    "jdacs_ms": ("jdacs_ms", {}, "cvp"),
}
DEFAULT_DTU = REPO.parent / "shared" / "data" / "dtu_scan24"


class VerbError(RuntimeError):
    """A ``selfmvs`` verb exited non-zero; the message names the command and its log's tail."""


def run_verb(log: Path, *args: str) -> dict:
    """Run ``selfmvs ARGS`` (stdout and stderr to ``log``); returns its wall seconds and peak RSS (MB).

    Raises:
        VerbError: the verb failed.
    """
    command = [sys.executable, "-m", "pipeline", *args]
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log, "w") as handle:
        process = subprocess.Popen(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if process.returncode:
        raise VerbError(f"{' '.join(command)} failed (exit {process.returncode}), log {log}:\n"
                        f"{log.read_text()[-3000:]}")
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024}  # ru_maxrss: KiB on Linux


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integer seeds, got {text!r}") from None


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    return width, height


def _systems(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"--systems: unknown {unknown or text!r}; known: {', '.join(SYSTEMS)}")
    return names


def render_and_prepare(work: Path, family: str, seed: int, num_views: int, size: tuple[int, int]) -> tuple[Path, Path]:
    """The rendered scene folder and its scene.h5 (each made once)."""
    tag = f"{family}_s{seed}_{num_views}v_{size[0]}x{size[1]}"
    scene_dir, scene_h5 = work / "scenes" / tag, work / "scenes" / f"{tag}.h5"
    if not (scene_dir / "gt" / "depth.h5").is_file():
        run_verb(work / "logs" / f"render_{tag}.log", "render-scene", str(scene_dir), "--seed", str(seed), "--varied",
                 "--num-views", str(num_views), "--width", str(size[0]), "--height", str(size[1]), "--no-distortion",
                 "--family", family)
    if not scene_h5.is_file():
        run_verb(work / "logs" / f"prepare_{tag}.log", "prepare", str(scene_dir), str(scene_h5))
    return scene_dir, scene_h5


def dtu_subset(work: Path, dtu: Path, num_views: int | None) -> tuple[Path, Path]:
    """DTU prepared whole, or from its first ``num_views`` views (by image id) and the sparse points at
    least two of them observe (the others' keypoints become untriangulated)."""
    from pipeline.colmap import read_model, write_model

    if num_views is None:
        scene_dir, scene_h5 = dtu, work / "scenes" / "dtu_all.h5"
    else:
        scene_dir, scene_h5 = work / "scenes" / f"dtu_{num_views}v", work / "scenes" / f"dtu_{num_views}v.h5"
        if not (scene_dir / "sparse" / "points3D.txt").is_file():
            cameras, images, points = read_model(dtu / "sparse")
            if num_views < 2 or num_views > len(images):
                raise SystemExit(f"--dtu-views: expected 2 to {len(images)} views of {dtu}, got {num_views}")
            kept = {i: images[i] for i in sorted(images)[:num_views]}
            subset_points = {}
            for point_id, point in points.items():
                seen = np.isin(point.image_ids, list(kept))
                if seen.sum() >= 2:
                    point.image_ids, point.point2D_idxs = point.image_ids[seen], point.point2D_idxs[seen]
                    subset_points[point_id] = point
            for image in kept.values():
                image.point3D_ids = np.where(np.isin(image.point3D_ids, list(subset_points)), image.point3D_ids, -1)
            scene_dir.mkdir(parents=True, exist_ok=True)
            if not (scene_dir / "images").exists():
                (scene_dir / "images").symlink_to((dtu / "images").resolve(), target_is_directory=True)
            write_model({c.id: c for c in cameras.values() if c.id in {i.camera_id for i in kept.values()}},
                        kept, subset_points, scene_dir / "sparse", ext=".txt")
    if not scene_h5.is_file():
        run_verb(work / "logs" / f"prepare_{scene_h5.stem}.log", "prepare", str(scene_dir), str(scene_h5))
    return scene_dir, scene_h5


def train_system(work: Path, name: str, scenes: list[Path], args, init_backbone: str | None) -> dict:
    """Train ``name`` (or reuse a finished run); returns its row of training facts."""
    from pipeline.formats.loss_log import BOOKKEEPING, read_loss_log

    recipe, model, backbone = SYSTEMS[name]
    start = "init" if args.init is not None and backbone == init_backbone else "scratch"
    train = {
        "seed": args.seed, "steps": args.steps, "batch_size": args.batch_size, "width": args.width,
        "height": args.height, "num_sources": args.num_sources, "learning_rate": args.learning_rate,
        "checkpoint_every": max(1, min(100, args.steps)), "keep_checkpoints": 1, "progress": False,
        "loss": {"recipe": recipe}, "model": model, "vgg16_weights": args.vgg16_weights,
    }
    out = work / "train" / f"{name}_{start}_{args.steps}steps"  # a longer budget trains afresh beside it
    config_text = json.dumps({"train": train, "init": str(args.init) if start == "init" else None,
                              "scenes": [str(s) for s in scenes]}, indent=1, sort_keys=True)
    out.mkdir(parents=True, exist_ok=True)
    config = out / "compare_config.json"
    if config.is_file() and config.read_text() != config_text:
        raise SystemExit(f"{out}: trained with other settings ({config}); give another --work or remove that folder")
    config.write_text(config_text)
    measure_file = out / "compare_measure.json"
    done = (out / "last.pt").is_file() and (out / "losses.csv").is_file() \
        and read_loss_log(out / "losses.csv").rows[-1]["step"] >= args.steps
    if not done:
        yaml_file = out / "train.yaml"
        yaml_file.write_text(json.dumps({"train": train}))
        measure = run_verb(work / "logs" / f"train_{out.name}.log", "train", "--config", str(yaml_file), "--out",
                           str(out), "--scenes", *map(str, scenes), "--resume",
                           *(["--init", str(args.init)] if start == "init" else []))
        earlier = {"wall_s": 0.0, "peak_rss_mb": 0.0}
        if measure_file.is_file():  # a resumed run: the earlier part's time counts too
            earlier = json.loads(measure_file.read_text())
        measure_file.write_text(json.dumps({"wall_s": earlier["wall_s"] + measure["wall_s"],
                                            "peak_rss_mb": max(earlier["peak_rss_mb"], measure["peak_rss_mb"])}))
        print(f"{name}: trained {args.steps} steps in {measure['wall_s']:.0f} s", flush=True)
    else:
        print(f"{name}: reusing {out / 'last.pt'}", flush=True)
    log = read_loss_log(out / "losses.csv")
    seconds = [row["seconds"] for row in log.rows if row["step"] > 1 and "seconds" in row] or \
        [row["seconds"] for row in log.rows if "seconds" in row]
    measure = json.loads(measure_file.read_text()) if measure_file.is_file() else {}

    return {"checkpoint": str(out / "last.pt"), "start": start, "recipe": recipe, "model": model, "backbone": backbone,
            "train_config": train,
            "steps": int(log.rows[-1]["step"]),
            "terms": [column for column in log.columns if column not in BOOKKEEPING and column != "loss"],
            "train_s_per_step": statistics.median(seconds) if seconds else None,
            "train_steps_per_s": 1 / statistics.median(seconds) if seconds else None,
            "train_wall_s": measure.get("wall_s"), "train_peak_rss_mb": measure.get("peak_rss_mb")}


def infer_scene(work: Path, checkpoint: str, scene_h5: Path, args) -> tuple[Path, dict]:
    """``selfmvs infer`` of a trained checkpoint (``train/RUN/last.pt``) on one scene, into a folder named
    by RUN and the inference settings (reused when its depth file exists)."""
    from pipeline.formats.depth_file import list_depth_views

    run = Path(checkpoint).parent.name
    folder = work / "depth" / (f"{run}_{args.infer_sources}src_{'flip' if args.flip_average else 'onepass'}_"
                               f"{'fill' if args.plane_fill else 'nofill'}")
    depth_h5 = folder / f"{scene_h5.stem}.h5"
    measure_file = depth_h5.with_suffix(".measure.json")
    if not (depth_h5.is_file() and measure_file.is_file()):
        log = work / "logs" / f"infer_{folder.name}_{scene_h5.stem}.log"
        measure = run_verb(log, "infer", str(scene_h5), checkpoint,
                           str(depth_h5), "--num-sources", str(args.infer_sources),
                           "--flip-average" if args.flip_average else "--no-flip-average",
                           "--plane-fill" if args.plane_fill else "--no-plane-fill")
        measure["views"] = len(list_depth_views(depth_h5))
        measure_file.write_text(json.dumps(measure))
    return depth_h5, json.loads(measure_file.read_text())


def score_rendered(work: Path, checkpoint: str, scene_dir: Path, scene_h5: Path, args) -> dict:
    depth_h5, measure = infer_scene(work, checkpoint, scene_h5, args)
    row = {"scene": scene_h5.stem, **measure, **depth_quality(depth_h5, scene_dir / "gt" / "depth.h5")}
    fused, eval_json = depth_h5.with_suffix(".ply"), depth_h5.with_suffix(".eval.json")
    if not eval_json.is_file():
        logs = work / "logs" / f"{depth_h5.parent.name}_{scene_h5.stem}"
        run_verb(logs.with_name(f"fuse_{logs.name}.log"), "fuse", str(scene_h5), str(depth_h5), str(fused))
        run_verb(logs.with_name(f"evaluate_{logs.name}.log"), "evaluate", str(scene_dir), str(scene_h5), str(depth_h5),
                 str(fused), str(eval_json))
    row.update(cloud_quality(eval_json))
    return row


def score_dtu(work: Path, checkpoint: str, scene_h5: Path, args) -> dict:
    if str(REPO / "experiments") not in sys.path:
        sys.path.insert(0, str(REPO / "experiments"))
    from dtu_plane_fill import sparse_within

    depth_h5, measure = infer_scene(work, checkpoint, scene_h5, args)
    return {"scene": scene_h5.stem, **measure, "sparse_within_0.01": sparse_within(depth_h5, scene_h5, 0.01)}


def _mean(rows: list[dict], key: str) -> float | None:
    values = [row[key] for row in rows if row.get(key) is not None]
    return float(np.mean(values)) if values else None


def summarise(system: dict) -> dict:
    """Per set, the mean over its scenes; inference s/view over every view inferred; peak RSS maxima."""
    summary = {}
    for family in ("object", "indoor"):
        rows = system["scores"].get(family, [])
        if not rows:
            continue
        for tau in THRESHOLDS:
            summary[f"{family}_within_{tau:g}"] = _mean(rows, f"within_{tau:g}")
        for fraction in FSCORE_FRACTIONS:
            for metric in ("precision", "recall", "fscore"):
                key = f"{metric}_{100 * fraction:g}pct"
                summary[f"{family}_{key}"] = _mean(rows, key)
    if system["scores"].get("dtu"):
        summary["dtu_sparse_within_0.01"] = _mean(system["scores"]["dtu"], "sparse_within_0.01")
    inferred = [row for rows in system["scores"].values() for row in rows]
    views = sum(row["views"] for row in inferred)
    summary["infer_s_per_view"] = sum(row["wall_s"] for row in inferred) / views if views else None
    summary["infer_peak_rss_mb"] = max((row["peak_rss_mb"] for row in inferred), default=None)
    return summary


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def markdown_table(systems: dict[str, dict]) -> str:
    lines = ["| system | start | train s/step | within 1 % object / indoor / DTU pairs | F@0.5 % object (P / R) "
             "| F@0.5 % indoor (P / R) | infer s/view | peak MB train / infer |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, system in systems.items():
        s = system["summary"]

        def fscore(family: str) -> str:
            if f"{family}_fscore_0.5pct" not in s:
                return "–"
            return (f"{_pct(s[f'{family}_fscore_0.5pct'])} ({_pct(s[f'{family}_precision_0.5pct'])} / "
                    f"{_pct(s[f'{family}_recall_0.5pct'])})")

        def number(value: float | None, digits: int) -> str:
            return "–" if value is None else f"{value:.{digits}f}"

        lines.append(
            f"| {name} | {system['start']} | {number(system['train_s_per_step'], 2)} | "
            f"{_pct(s.get('object_within_0.01'))} / {_pct(s.get('indoor_within_0.01'))} / "
            f"{_pct(s.get('dtu_sparse_within_0.01'))} | {fscore('object')} | {fscore('indoor')} | "
            f"{number(s['infer_s_per_view'], 2)} | {number(system['train_peak_rss_mb'], 0)} / "
            f"{number(s['infer_peak_rss_mb'], 0)} |")
    return "\n".join(lines) + "\n"


def _commit() -> str | None:
    result = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=REPO, capture_output=True,
                            text=True)
    return result.stdout.strip() or None


def build_parser() -> argparse.ArgumentParser:
    from pipeline.config import InferConfig, TrainConfig
    from pipeline.synth.indoor import HELDOUT_SEEDS

    defaults = TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="Details: the docstring of bench/compare_systems.py.")
    parser.add_argument("--work", type=Path, required=True, help="folder of every scene, checkpoint and depth file "
                        "(reused by a rerun)")
    parser.add_argument("--systems", type=_systems, default=list(SYSTEMS), help=f"comma-separated subset of "
                        f"{', '.join(SYSTEMS)} (default: all)")
    parser.add_argument("--train-seeds", type=_seeds, default=[1000, 1001, 1002, 1003],
                        help="object training scenes (default 1000-1003)")
    parser.add_argument("--train-indoor-seeds", type=_seeds, default=[], help="indoor training rooms (default none; "
                        "never one of the held-out rooms)")
    parser.add_argument("--train-views", type=int, default=12, help="views per object training scene (default 12)")
    parser.add_argument("--train-size", type=_size, default=(400, 300), help="object training scenes' rendered size "
                        "(default 400x300, as config/train_base.yaml's)")
    parser.add_argument("--train-indoor-views", type=int, default=20)
    parser.add_argument("--train-indoor-size", type=_size, default=(640, 480))
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps of every system (default 300)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--width", type=int, default=defaults.width, help="training crop width (default 320)")
    parser.add_argument("--height", type=int, default=defaults.height, help="training crop height (default 240)")
    parser.add_argument("--num-sources", type=int, default=defaults.num_sources, help="training source views")
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--seed", type=int, default=defaults.seed, help="train.seed of every system")
    parser.add_argument("--init", type=Path, help="checkpoint every system of its backbone starts from (the others "
                        "from scratch); default: all from scratch")
    parser.add_argument("--vgg16-weights", type=Path, help="torchvision VGG16 ImageNet state dict for m3vsnet's "
                        "feature term and jdacs' co-segmentation (default: none; co-segmentation OFF, the feature "
                        "term on the network's frozen initial features)")
    parser.add_argument("--heldout-seeds", type=_seeds, default=[2000, 2001, 2002, 2003])
    parser.add_argument("--heldout-views", type=int, default=12)
    parser.add_argument("--heldout-size", type=_size, default=(400, 300))
    parser.add_argument("--indoor-seeds", type=_seeds, default=list(HELDOUT_SEEDS),
                        help="held-out rooms (default 3000-3003; '' for none)")
    parser.add_argument("--indoor-views", type=int, default=20)
    parser.add_argument("--indoor-size", type=_size, default=(640, 480))
    parser.add_argument("--dtu", default=str(DEFAULT_DTU), help="DTU scene folder (default ../shared/data/dtu_scan24; "
                        "skipped when absent; 'none' to skip)")
    parser.add_argument("--dtu-views", type=int, help="infer only DTU's first N views (default: all 49)")
    parser.add_argument("--infer-sources", type=int, default=InferConfig().num_sources,
                        help="source views per reference at inference (default: infer.num_sources)")
    parser.add_argument("--flip-average", action=argparse.BooleanOptionalAction, default=False,
                        help="infer.flip_average of every inference (default off: one pass)")
    parser.add_argument("--plane-fill", action=argparse.BooleanOptionalAction, default=False,
                        help="infer.plane_fill of every inference (default off: the network's depth)")
    parser.add_argument("--json", type=Path, help="write every row and the settings here")
    parser.add_argument("--markdown", type=Path, help="write the table here too")
    return parser


def main(argv: list[str] | None = None) -> int:
    from pipeline.synth.indoor import HELDOUT_SEEDS

    args = build_parser().parse_args(argv)
    if args.steps < 1:
        raise SystemExit(f"--steps: expected at least 1, got {args.steps}")
    if set(args.train_indoor_seeds) & set(HELDOUT_SEEDS):
        raise SystemExit(f"--train-indoor-seeds: {sorted(set(args.train_indoor_seeds) & set(HELDOUT_SEEDS))} are "
                         "held-out rooms")
    if not args.train_seeds and not args.train_indoor_seeds:
        raise SystemExit("--train-seeds / --train-indoor-seeds: no training scene")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    init_backbone = None
    if args.init is not None:
        args.init = args.init.resolve()
        if not args.init.is_file():
            raise SystemExit(f"--init: {args.init}: no such checkpoint")
        from pipeline.model import load_checkpoint

        init_backbone = load_checkpoint(args.init)[0].config.backbone
    if args.vgg16_weights is not None:
        args.vgg16_weights = str(args.vgg16_weights.resolve())
    dtu = None if args.dtu.lower() == "none" or not Path(args.dtu).is_dir() else Path(args.dtu).resolve()
    if dtu is None and args.dtu.lower() != "none":
        print(f"DTU: {args.dtu} absent, skipped", flush=True)

    train_scenes = [render_and_prepare(work, "object", s, args.train_views, args.train_size)[1]
                    for s in args.train_seeds]
    train_scenes += [render_and_prepare(work, "indoor", s, args.train_indoor_views, args.train_indoor_size)[1]
                     for s in args.train_indoor_seeds]
    heldout = {
        "object": [render_and_prepare(work, "object", s, args.heldout_views, args.heldout_size)
                   for s in args.heldout_seeds],
        "indoor": [render_and_prepare(work, "indoor", s, args.indoor_views, args.indoor_size)
                   for s in args.indoor_seeds],
    }
    dtu_scene = dtu_subset(work, dtu, args.dtu_views) if dtu is not None else None

    systems = {}
    for name in args.systems:
        system = train_system(work, name, train_scenes, args, init_backbone)
        system["scores"] = {
            family: [score_rendered(work, system["checkpoint"], scene_dir, scene_h5, args)
                     for scene_dir, scene_h5 in scenes]
            for family, scenes in heldout.items() if scenes
        }
        if dtu_scene is not None:
            system["scores"]["dtu"] = [score_dtu(work, system["checkpoint"], dtu_scene[1], args)]
        system["summary"] = summarise(system)
        systems[name] = system
        figures = {key: round(value, 4) for key, value in system["summary"].items() if value is not None}
        print(f"{name}: {json.dumps(figures)}", flush=True)

    table = markdown_table(systems)
    print(table)
    settings = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()}
    payload = {"settings": settings, "commit": _commit(), "threads": os.environ.get("OMP_NUM_THREADS"),
               "load_avg": list(os.getloadavg()), "dtu": str(dtu) if dtu else None, "systems": systems}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=1, allow_nan=False) + "\n")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
