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

import logging
import os
from pathlib import Path

from pipeline.config import InferConfig
from pipeline.formats.paths import check_outputs_distinct

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
    # torch is imported here, not at module level: ``selfmvs --help`` stays fast.
    from pipeline.inference import run_inference, validate_config
    from pipeline.model.device import resolve_device

    config = config if config is not None else InferConfig()
    scene_path, out_path = Path(scene_path), Path(out_path)
    # before anything is written: the partial file and the rename would replace an input
    check_outputs_distinct({"scene": scene_path, "checkpoint": checkpoint}, {"depth": out_path})
    validate_config(config)
    if not scene_path.is_file():
        raise FileNotFoundError(f"{scene_path}: scene file not found")
    device = resolve_device(config.device, setting="infer.device")
    return run_inference(scene_path, checkpoint, out_path, config, device)
