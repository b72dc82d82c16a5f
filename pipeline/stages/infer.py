"""``selfmvs infer SCENE_H5 CHECKPOINT OUT_DEPTH_H5``: a depth and a confidence map per view.

Views are processed one at a time and only the reference and its sources are read from the scene
file, so memory stays bounded whatever the scene's size. With ``infer.flip_average`` each view is
estimated twice, the second time on the left-right mirrored scene (every image flipped, the cameras
reflected with them), and the two maps are combined (:func:`pipeline.inference.combine_mirrored`). With
``infer.plane_fill`` each low-texture region whose surroundings are one plane then takes that plane's
depth (:mod:`pipeline.scene.planar_fill`; the view's ``filled`` mask says where). The output is
written view by view through :class:`pipeline.formats.depth_file.DepthWriter`: an interrupted run
resumes where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from pathlib import Path

import torch

from pipeline.config import InferConfig, load_config, parse_assignments, section
from pipeline.formats.paths import check_outputs_distinct
from pipeline.model.device import resolve_device
from pipeline.inference import run_inference, validate_config

log = logging.getLogger("selfmvs.infer")


def run_infer(
    scene_path: str | os.PathLike,
    checkpoint: str | os.PathLike,
    out_path: str | os.PathLike,
    config: InferConfig | None = None,
) -> Path:
    """Write ``out_path`` (depth.h5) with every view of ``scene_path`` that has a source view.

    Views already complete in an interrupted run's partial file are skipped. Views without any
    source view in the scene are left out (with a warning). The work is
    :func:`pipeline.inference.run_inference`'s.
    """
    config = config if config is not None else InferConfig()
    scene_path, out_path = Path(scene_path), Path(out_path)
    # before anything is written: the partial file and the rename would replace an input
    check_outputs_distinct({"scene": scene_path, "checkpoint": checkpoint}, {"depth": out_path})
    validate_config(config)
    if not scene_path.is_file():
        raise FileNotFoundError(f"{scene_path}: scene file not found")
    device = resolve_device(config.device, setting="infer.device")
    return run_inference(scene_path, checkpoint, out_path, config, device)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scene", type=Path, help="scene.h5 written by prepare")
    parser.add_argument("checkpoint", type=Path, help="network checkpoint written by train")
    parser.add_argument("out", type=Path, help="depth.h5 to write")
    parser.add_argument("--config", type=Path, default=None, help="YAML config; its 'infer' section is used")
    parser.add_argument("--num-sources", type=int, default=None, help="source views per reference (default 6; 4, PatchmatchNet's setting, is ~25 %% faster and ~2 points worse within 1 %%; see README)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None, help="default: auto")
    parser.add_argument("--max-size", type=int, default=None, help="longest image side the network sees")
    parser.add_argument(
        "--flip-average", action=argparse.BooleanOptionalAction, default=None,
        help="also estimate each view on the left-right mirrored scene and combine the two (default: on; measured "
        "+0.8 points within 1 %% on held-out scenes, -13 %% sparse error on DTU, for twice the time; "
        "--no-flip-average: one pass; config: infer.flip_average)",
    )
    parser.add_argument(
        "--plane-fill", action=argparse.BooleanOptionalAction, default=None,
        help="give each low-texture region whose textured surroundings are one plane that plane's depth (default: "
        "on; measured on held-out synthetic scenes 81.5 -> 88.3 and 77.5 -> 85.5 %% within 1 %% where a quarter of "
        "the pixels has no texture, unchanged elsewhere; depth.h5 marks the pixels; config: infer.plane_fill)",
    )
    parser.add_argument(
        "--model", action="append", default=[], metavar="KEY=VALUE",
        help="replace a model option of the checkpoint for this run (YAML value), e.g. iterations=[1,4,1]; "
        "the weights must still fit; repeatable (config: infer.model)",
    )


def main(args: argparse.Namespace) -> int:
    config = section(load_config(args.config), "infer", InferConfig)
    overrides = {
        name: value
        for name, value in (
            ("num_sources", args.num_sources),
            ("device", args.device),
            ("max_size", args.max_size),
            ("flip_average", args.flip_average),
        )
        if value is not None
    }
    if args.model:
        try:
            overrides["model"] = {**config.model, **parse_assignments(args.model)}
        except ValueError as error:
            raise SystemExit(f"infer --model: {error}") from None
    if args.plane_fill is not None:
        overrides["plane_fill"] = dataclasses.replace(config.plane_fill, enabled=args.plane_fill)
    config = dataclasses.replace(config, **overrides)
    run_infer(args.scene, args.checkpoint, args.out, config)
    return 0
