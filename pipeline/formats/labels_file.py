"""``labels.h5``: self-training labels, the depth that fusion kept (``selfmvs pseudo-labels``).

The file has the ``depth.h5`` layout (:mod:`pipeline.formats.depth_file`, format_version 1) with
kind ``selfmvs.depth_labels`` and no confidence; ``depth`` is the label in scene units, 0 = no
label. File attributes: depth_file, masks_file, checkpoint, labelled_fraction, own_fraction,
transfer.
"""

from __future__ import annotations

import os
from typing import Iterable, Mapping

import numpy as np

from pipeline.formats.depth_file import DepthFormatError, DepthView, read_depth_file, write_depth_file

KIND = "selfmvs.depth_labels"


def write_labels_file(path: str | os.PathLike, views: Iterable[DepthView], attrs: Mapping[str, object]) -> None:
    """Write the label maps ``views`` to ``path`` atomically, with kind ``selfmvs.depth_labels``."""
    write_depth_file(path, views, {"kind": KIND, **attrs})


def read_labels_file(path: str | os.PathLike, scene, scene_path: str | os.PathLike) -> dict[int, np.ndarray]:
    """image_id -> label depth of every view of ``scene`` (a ``scene_file.Scene``), checked against it.

    Any selfmvs depth file is accepted (a ``gt/depth.h5`` serves as labels too); pixels <= 0 or
    not finite carry no label.

    Shape:
        each map (H, W) float32, at the scene view's size.

    Raises:
        ValueError: an unreadable file, a view of the scene without labels, or labels of another size.
    """
    try:
        views = read_depth_file(path)
    except (OSError, DepthFormatError) as error:
        raise ValueError(f"{path}: not a readable label file ({error})") from None
    labels = {}
    for image_id, view in scene.views.items():
        if image_id not in views:
            raise ValueError(f"{path}: no labels for view {image_id} ({view.name}) of {scene_path}")
        depth = views[image_id].depth
        if depth.shape != (view.height, view.width):
            raise ValueError(
                f"{path}: view {image_id} is {depth.shape[1]}x{depth.shape[0]}, but {scene_path} stores it at "
                f"{view.width}x{view.height} (labels must come from inference on this scene.h5)"
            )
        labels[image_id] = depth
    return labels
