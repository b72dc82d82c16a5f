"""The ``selfmvs`` command: one argparse tree over the stage and tool functions.

Every verb's arguments are declared here; each verb calls one ``run_x`` function of
:mod:`pipeline.stages` or :mod:`pipeline.tools` with a typed config section. A flag that sets a
config option (``infer --num-sources``) is declared by its path in the config
(:func:`_config_option`): its help is the option's description and default from
:mod:`pipeline.config`, and its value is written over the ``--config`` file before the one validation
of :func:`pipeline.config.load_config`, so a flag is checked exactly like the file.

Stage and tool modules import torch and the other heavy libraries inside their functions, so that
``selfmvs --help`` stays fast. ``ValueError`` and ``FileNotFoundError`` from a verb reach the user as
one line, ``selfmvs VERB: error: ...``, with exit status 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal

from pipeline.config import SECTIONS, ConfigError, describe, load_config, parse_assignments, section
from pipeline.stages import evaluate, fuse, infer, labels, prepare, render, report, sfm, train
from pipeline.tools import config as config_tool
from pipeline.tools import export_checkpoint, mvsnet
from pipeline.tools import inspect as inspect_tool  # not the standard library's

# verb -> one-line help. Order is the order of the workflow.
VERBS: dict[str, str] = {
    "render-scene": "render a synthetic scene folder (images/, sparse/, gt/)",
    "sfm": "register photos without a COLMAP model (pycolmap, CPU) -> sparse/",
    "prepare": "COLMAP model + photos -> scene.h5 (undistort, views, depth ranges)",
    "train": "self-supervised training or per-scene fine-tuning -> checkpoint",
    "export-checkpoint": "strip a training checkpoint to weights + config for shipping",
    "infer": "scene.h5 + checkpoint -> depth.h5 (depth and confidence per view)",
    "fuse": "depth.h5 -> fused.ply (geometric + photometric consistency)",
    "pseudo-labels": "depth.h5 + fused_masks.h5 -> self-training labels (the depth fusion kept)",
    "evaluate": "fused.ply / depth.h5 vs ground truth or sparse points -> eval.json",
    "report": "pictures and an HTML page of a scene's results",
    "config": "validate a config, fill defaults, write or print it",
    "inspect": "print a readable summary of a selfmvs HDF5 file",
    "export-mvsnet": "scene.h5 -> MVSNet layout (images/, cams/, pair.txt)",
    "import-mvsnet": "MVSNet layout -> scene.h5",
}

# Namespace attributes of config-option flags: this prefix, then the option's dotted path.
_CONFIG_DEST = "config_option:"


# ------------------------------------------------------------------------------ config options


def _option_field(path: tuple[str, ...]) -> tuple[type, dataclasses.Field, Any]:
    """The section dataclass holding config option ``path`` (``("infer", "plane_fill", "enabled")``),
    the option's field and its type, found through the nested section dataclasses."""
    owner: Any = SECTIONS[path[0]]
    for depth, name in enumerate(path[1:], start=1):
        fields = {f.name: f for f in dataclasses.fields(owner)}
        if name not in fields:
            raise KeyError(f"config option {'.'.join(path[:depth + 1])} does not exist")
        hint = typing.get_type_hints(owner)[name]
        if depth == len(path) - 1:
            return owner, fields[name], hint
        owner = hint
    raise KeyError(f"{'.'.join(path)} is a section, not an option")


def _show(value: Any) -> str:
    """A default as the YAML config spells it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _config_option(parser: argparse.ArgumentParser, flag: str, path: str) -> None:
    """Add ``flag`` setting config option ``path`` (dotted, e.g. ``infer.num_sources``).

    Type, choices, description and default all come from the option's declaration in
    :mod:`pipeline.config`; the flag's value (None when not given) overrides the config file.
    """
    keys = tuple(path.split("."))
    owner, field, hint = _option_field(keys)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # `int | None`: the flag gives an int
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    kind: dict[str, Any]
    if hint is bool:
        kind = {"action": argparse.BooleanOptionalAction}
    elif typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        kind = {"choices": choices, "type": type(choices[0])}
    elif hint in (int, float, str):
        kind = {"type": hint, "metavar": keys[-1].upper()}
    else:
        raise TypeError(f"config option {path} of type {hint} cannot be a flag")
    default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    description = describe(owner, keys[-1])
    if keys[-1] == "enabled" and len(keys) > 2:  # the switch of a nested section: what the section does
        description = describe(_option_field(keys[:-1])[0], keys[-2])
    help_text = f"{description} (config: {path}; default: {_show(default)})"
    parser.add_argument(flag, dest=_CONFIG_DEST + path, default=None, help=help_text.replace("%", "%%"), **kind)
    parser.set_defaults(config_flags={**(parser.get_default("config_flags") or {}), path: flag})


def _config_file(parser: argparse.ArgumentParser, section_name: str) -> None:
    parser.add_argument("--config", type=Path, default=None, metavar="FILE",
                        help=f"YAML config; its '{section_name}' section is used (defaults otherwise)")


def _load_section(args: argparse.Namespace, name: str, extra: dict | None = None) -> Any:
    """Section ``name`` of ``--config`` with the config-option flags given (and ``extra``, options of
    that section) written over it, validated once, as the section's dataclass."""
    overrides: dict = {}
    given = []
    for dest, value in vars(args).items():
        if dest.startswith(_CONFIG_DEST) and value is not None:
            path = dest[len(_CONFIG_DEST):]
            *parents, leaf = path.split(".")
            node = overrides
            for parent in parents:
                node = node.setdefault(parent, {})
            node[leaf] = value
            flag = args.config_flags[path]
            flag = "--no-" + flag[2:] if value is False else flag  # as typed: a BooleanOptionalAction
            given.append(f"{flag} sets {path} = {_show(value)}")
    for key, value in (extra or {}).items():
        overrides.setdefault(name, {})[key] = value
    try:
        config = load_config(args.config, overrides=overrides or None)
    except ConfigError as error:
        if not given:
            raise
        # the message names the option by its config path; say which flag set it
        raise ConfigError(f"{error}\n  ({'; '.join(given)})") from None
    return section(config, name, SECTIONS[name])


def _assignments(args: argparse.Namespace, flag: str) -> dict:
    """The ``KEY=VALUE`` items of a repeatable flag as a nested mapping; a malformed item is a usage
    error (one line, exit status 1) naming the verb and the flag."""
    try:
        return parse_assignments(getattr(args, flag.lstrip("-").replace("-", "_")))
    except ValueError as error:
        raise SystemExit(f"selfmvs {args.verb}: error: {flag}: {error}") from None


# ------------------------------------------------------------------------------------ the verbs


def _render_scene(parser: argparse.ArgumentParser) -> Callable:
    parser.add_argument("out_dir", type=Path, help="scene folder to write (replaced if it is an earlier render)")
    _config_file(parser, "demo")
    _config_option(parser, "--seed", "demo.seed")
    _config_option(parser, "--num-views", "demo.num_views")
    _config_option(parser, "--width", "demo.width")
    _config_option(parser, "--height", "demo.height")
    _config_option(parser, "--distortion", "demo.distortion")
    parser.add_argument("--varied", action="store_true",
                        help="draw object counts, textures and camera rig from the seed too (training scenes)")
    parser.add_argument("--family", choices=("object", "indoor"), default="object",
                        help="object: objects on a ground plane seen from arcs of views (default); indoor: a "
                        "furnished room with windows and lamps seen by a hand-held camera (use --width 640 "
                        "--height 480)")
    return lambda args: render.run_render(args.out_dir, _load_section(args, "demo"),
                                          varied=args.varied, family=args.family)


def _sfm(parser: argparse.ArgumentParser) -> Callable:
    parser.add_argument("scene_dir", help="folder with images/ (photos only, no sparse/)")
    parser.add_argument("out_dir", help="output scene folder: images (link) + sparse/")
    parser.add_argument("--multi-camera", action="store_true", help="one camera per photo")
    parser.add_argument("--max-image-size", type=int, default=sfm.DEFAULT_MAX_IMAGE_SIZE,
                        help="SIFT runs on images downscaled to this longest side (default %(default)s)")
    parser.add_argument("--threads", type=int, default=-1, help="threads (-1: all)")
    return lambda args: sfm.run_sfm(args.scene_dir, args.out_dir, single_camera=not args.multi_camera,
                                    max_image_size=args.max_image_size, num_threads=args.threads)


def _prepare(parser: argparse.ArgumentParser) -> Callable:
    parser.add_argument("scene_dir", type=Path, help="scene folder with images/ and a COLMAP model (sparse/)")
    parser.add_argument("out", type=Path, help="scene.h5 to write")
    _config_file(parser, "prepare")
    _config_option(parser, "--max-image-size", "prepare.max_image_size")
    return lambda args: prepare.run_prepare(args.scene_dir, args.out, _load_section(args, "prepare"))


def _train(parser: argparse.ArgumentParser) -> Callable:
    _config_file(parser, "train")
    parser.add_argument("--out", type=Path, required=True,
                        help="checkpoint folder (last.pt, losses.csv, losses.png, summary.json)")
    parser.add_argument("--scenes", type=Path, nargs="+", default=[], help="scene.h5 files to train on")
    parser.add_argument("--finetune", type=Path, default=None, metavar="SCENE_H5", help="fine-tune on one scene")
    parser.add_argument("--init", type=Path, default=None, metavar="CHECKPOINT", help="start from these weights")
    parser.add_argument("--steps", type=int, default=None,
                        help="total optimizer steps (overrides train.steps and the fine-tuning budget)")
    parser.add_argument("--resume", action="store_true", help="continue from CHECKPOINT_DIR/last.pt")
    parser.add_argument("--labels", type=Path, nargs="+", default=None, metavar="LABELS_H5",
                        help="pseudo-label files (selfmvs pseudo-labels), one per scene in the order of --scenes "
                        "(one with --finetune); used when train.loss.weights.pseudo_label > 0, and by fine-tuning's "
                        "default objective (train.finetune.objective: labels), which needs it")

    def run(args: argparse.Namespace) -> None:
        if args.finetune is not None and args.scenes:
            raise ValueError("train: give either --scenes or --finetune, not both")
        config = _load_section(args, "train")
        path = train.run_train(config, args.out, args.scenes, finetune=args.finetune, init=args.init,
                               steps=args.steps, resume=args.resume, labels=args.labels)
        from pipeline.training.distributed import Distributed  # torch: after the work, not at import

        if Distributed.from_env().is_main:
            print(path)

    return run


def _export_checkpoint(parser: argparse.ArgumentParser) -> Callable:
    parser.add_argument("src", help="training checkpoint (e.g. results/_training/checkpoint/last.pt)")
    parser.add_argument("dst", help="where to write the weights-only checkpoint")
    parser.add_argument("--note", default="", help="free text stored with it (e.g. the training command)")
    parser.add_argument("--model", action="append", default=[], metavar="KEY=VALUE",
                        help="change a model option of the shipped file (YAML value), e.g. refinement=false or "
                        "stage_upsampling=nearest; the weights must still fit; repeatable")
    return lambda args: export_checkpoint.run_export_checkpoint(args.src, args.dst, args.note,
                                                                _assignments(args, "--model"))


def _infer(parser: argparse.ArgumentParser) -> Callable:
    parser.add_argument("scene", type=Path, help="scene.h5 written by prepare")
    parser.add_argument("checkpoint", type=Path, help="network checkpoint written by train")
    parser.add_argument("out", type=Path, help="depth.h5 to write")
    _config_file(parser, "infer")
    _config_option(parser, "--num-sources", "infer.num_sources")
    _config_option(parser, "--device", "infer.device")
    _config_option(parser, "--max-size", "infer.max_size")
    _config_option(parser, "--flip-average", "infer.flip_average")
    _config_option(parser, "--cuda-graph", "infer.cuda_graph")
    _config_option(parser, "--plane-fill", "infer.plane_fill.enabled")
    parser.add_argument("--model", action="append", default=[], metavar="KEY=VALUE",
                        help="replace a model option of the checkpoint for this run (YAML value), e.g. "
                        "iterations=[1,4,1]; the weights must still fit; repeatable (config: infer.model)")

    def run(args: argparse.Namespace) -> None:
        extra = {"model": _assignments(args, "--model")} if args.model else None
        infer.run_infer(args.scene, args.checkpoint, args.out, _load_section(args, "infer", extra))

    return run


def _fuse(parser: argparse.ArgumentParser) -> Callable:
    parser.add_argument("scene_h5", help="scene.h5 written by prepare")
    parser.add_argument("depth_h5", help="depth.h5 written by infer (or a gt/depth.h5)")
    parser.add_argument("out_ply", help="the fused point cloud to write")
    parser.add_argument("--masks", help="per-view masks of kept pixels (default: <out>_masks.h5 beside the PLY)")
    _config_file(parser, "fuse")
    return lambda args: fuse.run_fuse(args.scene_h5, args.depth_h5, args.out_ply,
                                      _load_section(args, "fuse"), masks_path=args.masks)


def _pseudo_labels(parser: argparse.ArgumentParser) -> Callable:
    parser.add_argument("depth_h5", help="depth.h5 written by selfmvs infer")
    parser.add_argument("masks_h5", help="fused_masks.h5 written by selfmvs fuse from that depth.h5")
    parser.add_argument("out_h5", help="the label file to write (depth.h5 layout, kind selfmvs.depth_labels)")
    parser.add_argument("--transfer", action="store_true",
                        help="also label the pixels a view's own fusion did not keep with depth other views kept, "
                        "carried into it (as per-scene fine-tuning does)")
    parser.add_argument("--neighbours", type=int, default=labels.DEFAULT_NEIGHBOURS,
                        help="with --transfer: views that give depth to a view, those that see most of it "
                        "(default %(default)s)")
    parser.add_argument("--support", type=int, default=labels.DEFAULT_SUPPORT,
                        help="with --transfer: views that must at least agree (within 1 %%) on a carried depth; of "
                        "the candidates, the one most views agree on is taken (default %(default)s)")
    return lambda args: labels.run_pseudo_labels(args.depth_h5, args.masks_h5, args.out_h5, args.transfer,
                                                 args.neighbours, args.support)


def _evaluate(parser: argparse.ArgumentParser) -> Callable:
    parser.add_argument("scene_dir", help="scene folder (its gt/ is used when present)")
    parser.add_argument("scene_h5", help="scene.h5 (cameras, sparse points)")
    parser.add_argument("depth_h5", help="depth.h5 to evaluate")
    parser.add_argument("fused_ply", help="fused.ply to evaluate")
    parser.add_argument("out_json", help="eval.json to write")
    parser.add_argument("--masks", help="fused_masks.h5 (default: beside the PLY)")
    parser.add_argument("--training-summary",
                        help="summary.json of the fine-tuning that made the weights (its steps go to eval.json; a "
                        "run its time limit cut short is a warning there)")
    _config_file(parser, "evaluate")
    return lambda args: evaluate.run_evaluate(args.scene_dir, args.scene_h5, args.depth_h5, args.fused_ply,
                                              args.out_json, _load_section(args, "evaluate"),
                                              args.masks, args.training_summary)


def _report(parser: argparse.ArgumentParser) -> Callable:
    parser.add_argument("scene_h5", help="scene.h5 (images)")
    parser.add_argument("depth_h5", help="depth.h5 (depth and confidence maps)")
    parser.add_argument("fused_ply", help="fused.ply (the interactive cloud; masks from <stem>_masks.h5 beside it)")
    parser.add_argument("eval_json", help="eval.json (metrics table)")
    parser.add_argument("out_dir", help="folder for the PNGs, cloud.html and index.html")
    parser.add_argument("--scene-dir", help="scene folder; its gt/depth.h5 gives error maps")
    parser.add_argument("--training-csv", help="training log CSV, e.g. losses.csv of train (curves)")
    parser.add_argument("--benchmarks", nargs="*", default=[], help="Snakemake benchmark TSV files (stage timings)")
    parser.add_argument("--title", help="page title")
    _config_file(parser, "report")
    return lambda args: report.run_report(
        args.scene_h5, args.depth_h5, args.out_dir, fused_ply=args.fused_ply, eval_json=args.eval_json,
        scene_dir=args.scene_dir, training_csv=args.training_csv, benchmarks=args.benchmarks,
        config=_load_section(args, "report"), title=args.title,
    )


def _config(parser: argparse.ArgumentParser) -> Callable:
    parser.add_argument("out", nargs="?", help="write the validated config here (default: print it)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--config", help="YAML config file to validate")
    source.add_argument("--json", help="config as a JSON string (what the Snakefile passes)")
    return lambda args: config_tool.run_config(args.out, config_path=args.config, json_text=args.json)


def _inspect(parser: argparse.ArgumentParser) -> Callable:
    parser.add_argument("file", help="an HDF5 file written by selfmvs (scene.h5, depth.h5, ...) or any HDF5 file; "
                        "a network checkpoint (.pt: settings, training facts, weights); "
                        "or a folder with a COLMAP model (scene folder, sparse/, sparse/0/)")
    parser.add_argument("--max-views", type=int, default=20,
                        help="list at most this many views one per line (default %(default)s; 0 lists none)")
    parser.add_argument("--all", action="store_true", help="list every view")
    return lambda args: inspect_tool.run_inspect(args.file, None if args.all else args.max_views)


_CENTRE_HELP = ("principal-point convention of the MVSNet files: 'colmap' (centre of the top-left pixel at "
                "(0.5, 0.5), as ours) or 'integer' (at (0, 0))")


def _export_mvsnet(parser: argparse.ArgumentParser) -> Callable:
    parser.add_argument("scene", help="scene.h5 written by `selfmvs prepare` (or import-mvsnet)")
    parser.add_argument("out_dir", help="folder to write images/, cams/, pair.txt into")
    parser.add_argument("--image-format", choices=("jpg", "png"), default="jpg",
                        help="jpg (what MVSNet code expects, lossy) or png (lossless); default %(default)s")
    parser.add_argument("--jpeg-quality", type=int, default=95, help="JPEG quality 1..100 (default %(default)s)")
    parser.add_argument("--pixel-centre", choices=mvsnet.PIXEL_CENTRE_NAMES, default="colmap",
                        help=_CENTRE_HELP + "; default %(default)s")
    return lambda args: mvsnet.run_export_mvsnet(args.scene, args.out_dir, image_format=args.image_format,
                                                 jpeg_quality=args.jpeg_quality, pixel_centre=args.pixel_centre)


def _import_mvsnet(parser: argparse.ArgumentParser) -> Callable:
    parser.add_argument("in_dir", help="MVSNet folder with images/, cams/ and pair.txt")
    parser.add_argument("scene", help="scene.h5 to write")
    parser.add_argument("--num-depth", type=int, default=None,
                        help="depth hypotheses where a cam file gives only depth_min and depth_interval "
                        "(default: MVSNet's DTU setting, pipeline.formats.mvsnet.DEFAULT_NUM_DEPTH)")
    parser.add_argument("--intrinsics-scale", type=float, default=1.0,
                        help="multiply fx, fy, cx, cy by this (4 for MVSNet's DTU training cams); default %(default)s")
    parser.add_argument("--pixel-centre", choices=mvsnet.PIXEL_CENTRE_NAMES, default=None,
                        help=_CENTRE_HELP + "; default: what selfmvs_views.json records, else colmap")
    return lambda args: mvsnet.run_import_mvsnet(args.in_dir, args.scene, num_depth=args.num_depth,
                                                 intrinsics_scale=args.intrinsics_scale,
                                                 pixel_centre=args.pixel_centre)


_DECLARE: dict[str, Callable[[argparse.ArgumentParser], Callable]] = {
    "render-scene": _render_scene,
    "sfm": _sfm,
    "prepare": _prepare,
    "train": _train,
    "export-checkpoint": _export_checkpoint,
    "infer": _infer,
    "fuse": _fuse,
    "pseudo-labels": _pseudo_labels,
    "evaluate": _evaluate,
    "report": _report,
    "config": _config,
    "inspect": _inspect,
    "export-mvsnet": _export_mvsnet,
    "import-mvsnet": _import_mvsnet,
}


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: global options, then one sub-parser per verb (``args.run`` calls it)."""
    parser = argparse.ArgumentParser(
        prog="selfmvs",
        description="Self-supervised multi-view stereo: photos registered by COLMAP in, "
        "depth maps, a fused point cloud and a report out. Each verb is one workflow stage.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, help_text in VERBS.items():
        verb_parser = sub.add_parser(verb, help=help_text, description=help_text)
        verb_parser.set_defaults(run=_DECLARE[verb](verb_parser))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)  # a bad verb or option: argparse's message and exit status 2
    except SystemExit as done:
        if done.code == 0:  # --help was printed: the caller gets the status, as from a verb
            return 0
        raise
    if args.verb is None:
        parser.print_help()
        return 0
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        args.run(args)
    except (ValueError, FileNotFoundError) as error:
        # Bad input is reported as one clear line, not a traceback from deep inside.
        logging.getLogger("selfmvs").debug("details", exc_info=True)
        print(f"selfmvs {args.verb}: error: {error}", file=sys.stderr)
        return 1
    return 0
