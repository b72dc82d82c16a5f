"""A scene's left-right mirror image: every image flipped, the cameras reflected with them.

Flipping an image maps pixel x to ``width - x`` (COLMAP's convention, pixel centre j at j + 0.5). It is
what a camera sees when its coordinates are reflected in x; reflecting the world the same way keeps
every camera of the scene consistent with the others (``cam_from_world`` becomes S T S with
S = diag(-1, 1, 1, 1)), and each view's depth map is then its original one, flipped. Both maps are
their own inverse. Used by inference (``infer.flip_average``) and training (``train.mirror_probability``).
"""

from __future__ import annotations

import numpy as np

#: The reflection x -> -x, of camera and of world coordinates.
REFLECT_X = np.diag([-1.0, 1.0, 1.0, 1.0])


def mirror_intrinsics(K: np.ndarray, width: int | float) -> np.ndarray:
    """K (3, 3) of the left-right flipped image of width ``width``.

    With camera coordinates reflected (X -> -X), x' = width - x = fx X'/Z - s Y/Z + (width - cx).
    """
    mirrored = np.array(K, dtype=np.float64, copy=True)
    mirrored[0, 2] = width - mirrored[0, 2]
    mirrored[0, 1] = -mirrored[0, 1]
    return mirrored


def mirror_pose(cam_from_world: np.ndarray) -> np.ndarray:
    """The 4x4 pose of the mirrored camera (camera and world both reflected in x)."""
    return REFLECT_X @ np.asarray(cam_from_world, dtype=np.float64) @ REFLECT_X
