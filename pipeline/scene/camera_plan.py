"""Per-camera plans of ``prepare``: undistortion, resizing and the final intrinsics, cached.

A photo bound for a much smaller size is downscaled before it is undistorted (exact, since
scaling a camera scales fx, fy, cx, cy only, and far cheaper than undistorting at full size).
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np

from pipeline.scene.resize import ResizePlan, plan_resize
from pipeline.scene.undistort import Undistorter, make_undistorter

_MAX_CACHED_PLANS = 4


@dataclasses.dataclass
class CameraPlan:
    """How one COLMAP camera's photos become stored images.

    Shape:
        K: (3, 3) final pinhole intrinsics, pixels; mask: (H, W) bool or None (every pixel valid).
    """

    undistorter: Undistorter
    resize: ResizePlan
    K: np.ndarray
    mask: np.ndarray | None

    def image(self, pixels: np.ndarray) -> np.ndarray:
        """A photo undistorted and resized, pixels outside the lens' view set to 0.

        Shape:
            (H0, W0, 3) uint8 -> (H, W, 3) uint8.
        """
        pixels = np.array(self.resize.image(self.undistorter.image(pixels)), order="C")  # writable copy
        if self.mask is not None:
            pixels[~self.mask] = 0  # resizing blends the blank border into its neighbours
        return pixels

    def points(self, pixels: np.ndarray) -> np.ndarray:
        """Keypoints (N, 2) of the photo -> (N, 2) pixels of the stored image."""
        return self.resize.points(self.undistorter.points(pixels))


def camera_plan(camera, max_image_size: int, size_multiple: int, fit: str, undistort_mode: str) -> CameraPlan:
    """The plan of a ``pipeline.colmap.Camera``.

    Raises:
        ValueError: an unsupported camera model or size, naming the camera.
    """
    longest = max(camera.width, camera.height)
    scale = min(1.0, max_image_size / longest) if max_image_size > 0 else 1.0
    try:
        undistorter = make_undistorter(
            camera.model, camera.width, camera.height, camera.params, undistort_mode, scale=scale
        )
        resize = plan_resize(undistorter.width, undistorter.height, max_image_size, size_multiple, fit)
    except ValueError as error:
        raise ValueError(f"camera {camera.id} ({camera.model} {camera.width}x{camera.height}): {error}") from None
    mask = None
    if undistorter.mask is not None:
        mask = resize.mask(undistorter.mask)
        if mask.all():
            mask = None
    return CameraPlan(undistorter, resize, resize.K(undistorter.K), mask)


class CameraPlans:
    """Plans by camera id, made on first use. Plans are large (~30 bytes per pixel): only the few
    most recent are kept, which is all of them for the usual one-or-few-camera scenes and bounded
    for one camera per image."""

    def __init__(self, cameras, config) -> None:
        self._cameras, self._config = cameras, config
        self._plans: collections.OrderedDict[int, CameraPlan] = collections.OrderedDict()

    def __getitem__(self, camera_id: int) -> CameraPlan:
        if camera_id in self._plans:
            self._plans.move_to_end(camera_id)
        else:
            c = self._config
            self._plans[camera_id] = camera_plan(
                self._cameras[camera_id], c.max_image_size, c.size_multiple, c.fit, c.undistort_mode
            )
            if len(self._plans) > _MAX_CACHED_PLANS:
                self._plans.popitem(last=False)
        return self._plans[camera_id]
