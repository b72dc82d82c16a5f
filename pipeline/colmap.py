"""COLMAP sparse model I/O (text and binary), with COLMAP's own field names.

(Being written: records below are the agreed interface.)
"""

from __future__ import annotations

import dataclasses

import numpy as np


class ColmapFormatError(ValueError):
    """A COLMAP file that cannot be read; the message names the file and the byte offset or line."""


@dataclasses.dataclass
class Camera:
    id: int
    model: str  # e.g. "PINHOLE", "OPENCV"
    width: int
    height: int
    params: np.ndarray  # float64, length fixed by the model


@dataclasses.dataclass
class Image:
    id: int
    qvec: np.ndarray  # (4,) float64, w x y z, rotation cam_from_world
    tvec: np.ndarray  # (3,) float64, translation cam_from_world
    camera_id: int
    name: str
    xys: np.ndarray  # (N, 2) float64 keypoints in pixels
    point3D_ids: np.ndarray  # (N,) int64, -1 where not triangulated


@dataclasses.dataclass
class Point3D:
    id: int
    xyz: np.ndarray  # (3,) float64, world frame
    rgb: np.ndarray  # (3,) uint8
    error: float
    image_ids: np.ndarray  # (L,) int64
    point2D_idxs: np.ndarray  # (L,) int64
