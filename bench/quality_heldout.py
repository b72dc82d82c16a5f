"""Depth quality of a checkpoint on held-out synthetic scenes (never trained on), with and without
per-scene fine-tuning.

The training scenes are seeds 1000-1013 (``config/train_base.yaml``); the held-out ones default to
seeds 2000 and 2001, rendered like them (``--varied``, 12 views 400x300: other geometry, textures,
lighting and camera rig). For each scene: render, prepare, infer with the checkpoint, and compare
``depth.h5`` with ``gt/depth.h5`` through both cameras (``pipeline.evaluation.depth_errors``: the
prepared views are a centred crop of the rendered ones). With ``--finetune auto`` the same again
after fine-tuning on the scene for the workflow's step budget (``train.finetune.megapixel_steps``), or
``--finetune STEPS`` for that many steps, on labels of the scene made as the workflow makes them (train.finetune.objective labels, the default). Every pixel with
ground truth counts (pooled over the views); a pixel without an estimate counts as wrong.

Indoor rooms (``--family indoor``, ``pipeline.synth.indoor``) are a second held-out set: seeds
3000-3003 by default (reserved: never trained on, never used to choose a setting), 20 views of a
hand-held walk at 640x480, rendered ``--varied``. Their rows also carry ``selfmvs fuse`` +
``selfmvs evaluate`` figures (precision / recall / F-score at 0.25 / 0.5 / 1 % of the GT points'
diagonal; ``--evaluate`` does the same for object scenes). ``infer_s_per_view`` is the wall time of
``selfmvs infer`` (the whole process) over the number of views.

    .venv/bin/python bench/quality_heldout.py pipeline/checkpoints/selfmvs_synthetic.pt \\
        [--family indoor] [--seeds 2000,2001] [--num-sources 6] [--model iterations=[1,3,1]] [--finetune auto|STEPS [--recipe R] [--train-set loss.top_k=2]] \\
        [--self-label --train-set loss.weights.pseudo_label=1] \\
        [--json bench/results/quality-....json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere: the pipeline package of this checkout
from pipeline.synth.indoor import HELDOUT_SEEDS  # noqa: E402
THRESHOLDS = (0.005, 0.01, 0.02, 0.05)
# Held-out seeds and scene size per family; the indoor seeds are reserved for this set alone.
FAMILY_DEFAULTS = {
    "object": {"seeds": "2000,2001", "size": "400x300", "num_views": 12},
    "indoor": {"seeds": ",".join(str(s) for s in HELDOUT_SEEDS), "size": "640x480", "num_views": 20},
}
FSCORE_FRACTIONS = (0.0025, 0.005, 0.01)


def selfmvs(*args: str) -> None:
    command = [sys.executable, "-m", "pipeline", *args]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")


def depth_quality(depth_h5: Path, gt_h5: Path) -> dict:
    from pipeline.evaluation import depth_errors
    from pipeline.formats.depth_file import list_depth_views, read_depth_view

    errors, with_gt, covered = [], 0, 0
    for image_id in list_depth_views(depth_h5):
        estimate, gt = read_depth_view(depth_h5, image_id), read_depth_view(gt_h5, image_id)
        depth = np.where(np.isfinite(estimate.depth), estimate.depth, 0.0)
        rel, n_gt, n_cov = depth_errors(depth, gt.depth, gt_K=gt.K, estimate_K=estimate.K)
        errors.append(rel)
        with_gt += n_gt
        covered += n_cov
    rel = np.concatenate(errors)
    row = {"pixels_with_gt": with_gt, "pixels_with_estimate": covered,
           "median_rel_error": float(np.median(rel)) if rel.size else None}
    for tau in THRESHOLDS:
        row[f"within_{tau:g}"] = float((rel < tau).sum() / max(with_gt, 1))
    return row


def cloud_quality(eval_json: Path) -> dict:
    """Precision / recall / F-score of ``selfmvs evaluate`` at FSCORE_FRACTIONS of the GT diagonal."""
    metrics = json.loads(eval_json.read_text())["metrics"]
    row = {"num_fused_points": metrics["num_fused_points"]["value"]}
    for key, entry in metrics.items():
        name = key.split("@")[0]
        if name in ("precision", "recall", "fscore"):
            fraction = entry["tau_fraction_of_scale"]
            if any(abs(fraction - f) < 1e-9 for f in FSCORE_FRACTIONS):
                row[f"{name}_{100 * fraction:g}pct"] = entry["value"]
    return row


def _finetune_steps(text: str) -> str | int:
    if text == "auto":
        return text
    steps = int(text)
    if steps < 1:
        raise argparse.ArgumentTypeError(f"expected auto or a positive number of steps, got {text!r}")
    return steps


def main(argv: list[str] | None = None) -> int:
    from pipeline.config import InferConfig, TrainConfig, load_config, parse_assignments, section
    from pipeline.formats.loss_log import read_loss_log

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--family", choices=tuple(FAMILY_DEFAULTS), default="object",
                        help="object: the object scenes of the training data (seeds 2000, 2001 by default); indoor: "
                        "furnished rooms seen by a hand-held camera (seeds 3000-3003, 20 views 640x480)")
    parser.add_argument("--seeds", help="held-out scene seeds (comma-separated; default: the family's)")
    parser.add_argument("--num-views", type=int, help="views per scene (default: 12 object, 20 indoor)")
    parser.add_argument("--evaluate", action=argparse.BooleanOptionalAction, default=None,
                        help="also fuse and run selfmvs evaluate for point-cloud precision / recall / F-score "
                        "(default: on for indoor, off for object)")
    parser.add_argument("--num-sources", type=int, default=InferConfig().num_sources,
                        help="source views per reference (default: the workflow's, infer.num_sources)")
    parser.add_argument("--finetune", type=_finetune_steps, default=None, metavar="auto|STEPS",
                        help="also score after per-scene fine-tuning: auto = the workflow's step budget "
                        "(train.finetune.megapixel_steps), or a number of steps (default: no fine-tuning)")
    parser.add_argument("--recipe", help="loss recipe of the fine-tuning (default: the config's)")
    parser.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                        help="fine-tuning option under train (dotted key, YAML value), e.g. loss.top_k=2; repeatable")
    parser.add_argument("--model", action="append", default=[], metavar="KEY=VALUE",
                        help="inference setting replacing the checkpoint's (selfmvs infer --model), e.g. "
                        "iterations=[1,3,1]; repeatable")
    parser.add_argument("--flip-average", action=argparse.BooleanOptionalAction, default=InferConfig().flip_average,
                        help="infer.flip_average of every inference here, the label source's too (default: the "
                        "workflow's, on): each view also on the mirrored scene")
    parser.add_argument("--plane-fill", action=argparse.BooleanOptionalAction, default=InferConfig().plane_fill.enabled,
                        help="infer.plane_fill of every inference here, the label source's too (default: the workflow's, "
                        "on): low-texture regions take the plane of their surroundings")
    parser.add_argument("--self-label", action="store_true",
                        help="with --train-set finetune.objective=photometric: fine-tune with pseudo labels of the scene "
                        "itself as well (weigh them with --train-set loss.weights.pseudo_label=W); the default objective, "
                        "labels, always makes them as the workflow does (infer, fuse --masks, pseudo-labels [--transfer])")
    parser.add_argument("--no-base", action="store_true", help="only the fine-tuned run (with --finetune)")
    parser.add_argument("--size", help="rendered image size WxH (default 400x300 for object scenes, as the training "
                        "scenes, 640x480 for indoor; prepare keeps the longest side up to its default, 800)")
    parser.add_argument("--work", type=Path, help="folder for scenes and outputs (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    defaults = FAMILY_DEFAULTS[args.family]
    args.seeds = args.seeds or defaults["seeds"]
    args.size = args.size or defaults["size"]
    args.num_views = args.num_views or defaults["num_views"]
    args.evaluate = args.family == "indoor" if args.evaluate is None else args.evaluate
    checkpoint = args.checkpoint.resolve()
    if not checkpoint.is_file():
        raise SystemExit(f"{checkpoint}: no such checkpoint")
    with tempfile.TemporaryDirectory() as tmp:
        work = (args.work or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        results = []
        width, height = (int(v) for v in args.size.lower().split("x"))
        infer_flags = ["--flip-average" if args.flip_average else "--no-flip-average",
                "--plane-fill" if args.plane_fill else "--no-plane-fill"]
        for seed in (int(s) for s in args.seeds.split(",")):
            if args.family == "object":
                tag = f"s{seed}" if (width, height) == (400, 300) else f"s{seed}_{width}x{height}"
            else:
                tag = f"{args.family}_s{seed}_{args.num_views}v_{width}x{height}"
            scene_dir, scene_h5 = work / tag, work / f"{tag}.h5"
            if not (scene_dir / "gt" / "depth.h5").is_file():
                selfmvs("render-scene", str(scene_dir), "--seed", str(seed), "--varied", "--num-views", str(args.num_views),
                        "--width", str(width), "--height", str(height), "--no-distortion", "--family", args.family)
            selfmvs("prepare", str(scene_dir), str(scene_h5))
            runs = [] if (args.no_base and args.finetune is not None) else [("base", checkpoint)]
            if args.finetune is not None:
                config = work / f"finetune_{tag}.yaml"
                train = {"finetune": {"steps": None if args.finetune == "auto" else args.finetune}}
                if args.recipe:
                    train["loss"] = {"recipe": args.recipe}
                for key, value in parse_assignments(args.train_set).items():
                    train[key] = {**train[key], **value} if isinstance(value, dict) and key in train else value
                config.write_text(json.dumps({"train": train}))
                out = work / f"finetune_{tag}"
                started = time.perf_counter()
                label_args = []
                finetune_config = section(load_config(overrides={"train": train}), "train", TrainConfig).finetune
                labelled = args.self_label or finetune_config.objective == "labels"
                if labelled:  # labels from the checkpoint's own fused depth on this scene, as the workflow makes them
                    source = work / f"{tag}_label_source"
                    selfmvs("infer", str(scene_h5), str(checkpoint), f"{source}.h5", "--num-sources", str(args.num_sources),
                            *(arg for item in args.model for arg in ("--model", item)), *infer_flags)
                    selfmvs("fuse", str(scene_h5), f"{source}.h5", f"{source}.ply", "--masks", f"{source}_masks.h5")
                    selfmvs("pseudo-labels", f"{source}.h5", f"{source}_masks.h5", f"{source}_labels.h5",
                            *(["--transfer"] if finetune_config.label_transfer else []))
                    label_args = ["--labels", f"{source}_labels.h5"]
                selfmvs("train", "--config", str(config), "--out", str(out), "--finetune", str(scene_h5),
                        "--init", str(checkpoint), *label_args)
                label = (f"finetuned {args.finetune} steps {finetune_config.objective}" + (" self-labelled" if args.self_label else "")
                         + (f" {args.recipe}" if args.recipe else ""))
                runs.append((label + "".join(f" {item}" for item in args.train_set), out / "last.pt"))
                finetune_wall = time.perf_counter() - started
                finetune_steps = read_loss_log(out / "losses.csv").rows[-1]["step"]
            for name, weights in runs:
                depth_h5 = work / f"{tag}_{name.replace(' ', '_')}.h5"
                started = time.perf_counter()
                selfmvs("infer", str(scene_h5), str(weights), str(depth_h5), "--num-sources", str(args.num_sources),
                        *(arg for item in args.model for arg in ("--model", item)), *infer_flags)
                infer_wall = time.perf_counter() - started
                row = {"seed": seed, "run": name, "infer_wall_s": infer_wall,
                       "infer_s_per_view": infer_wall / args.num_views,
                       **depth_quality(depth_h5, scene_dir / "gt" / "depth.h5")}
                if args.evaluate:
                    fused, eval_json = depth_h5.with_suffix(".ply"), depth_h5.with_suffix(".eval.json")
                    started = time.perf_counter()
                    selfmvs("fuse", str(scene_h5), str(depth_h5), str(fused))
                    selfmvs("evaluate", str(scene_dir), str(scene_h5), str(depth_h5), str(fused), str(eval_json))
                    row["fuse_evaluate_wall_s"] = time.perf_counter() - started
                    row.update(cloud_quality(eval_json))
                if name != "base":
                    row["finetune_wall_s"] = finetune_wall
                    row["finetune_steps"] = finetune_steps
                results.append(row)
                print(f"seed {seed} {name:>16}: median {100 * row['median_rel_error']:.3f} %, within 0.5/1/2/5 %: "
                      + " / ".join(f"{100 * row[f'within_{t:g}']:.1f}" for t in THRESHOLDS)
                      + (", F-score at 0.25/0.5/1 %: " + " / ".join(
                          f"{100 * row[f'fscore_{100 * f:g}pct']:.1f}" for f in FSCORE_FRACTIONS) if args.evaluate else ""),
                      flush=True)
    payload = {"checkpoint": str(args.checkpoint), "family": args.family, "seeds": args.seeds, "size": args.size,
               "num_views": args.num_views, "num_sources": args.num_sources,
               "model": args.model, "flip_average": args.flip_average, "plane_fill": args.plane_fill,
               "finetune_steps_setting": args.finetune, "self_label": args.self_label,
               "recipe": args.recipe, "train_set": args.train_set,
               "threads": os.environ.get("OMP_NUM_THREADS"), "load_avg_1min": os.getloadavg()[0], "results": results}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
