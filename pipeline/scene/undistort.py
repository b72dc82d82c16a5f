"""Undistortion to a pinhole camera, as COLMAP's ``image_undistorter`` does it.

The undistorted camera keeps the focal lengths of the original and its principal point relative to
the image size; only the image size changes (COLMAP's ``UndistortCamera``):

- ``mode="valid"`` (COLMAP's ``blank_pixels=0``, the default): the largest image whose every pixel
  saw the scene through the lens; found from the undistorted image border and then shrunk until
  the validity mask has no blank pixel.
- ``mode="full"`` (``blank_pixels=1``): the smallest image holding every original pixel; the border
  is blank (0) and ``mask`` says which pixels are real.
- ``mode="keep_size"``: same K and size as the original; ``mask`` says which pixels are real.

Images are resampled with bilinear interpolation; the sampling plan is computed once per camera
and applied to every image of that camera. Pixel convention: the centre of pixel (row i, col j) is
(x, y) = (j + 0.5, i + 0.5).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from pipeline.scene.camera_models import Intrinsics
from pipeline.scene.resize import ResizePlan

UNDISTORT_MODES = ("valid", "full", "keep_size")
# COLMAP's UndistortCameraOptions defaults: the image may shrink to 0.2x or grow to 2x.
MIN_SCALE, MAX_SCALE = 0.2, 2.0
_EDGE_TOLERANCE = 1e-6  # pixels: sources this close outside the pixel-centre range still count


@dataclasses.dataclass
class Undistorter:
    """Maps one distorted camera to its undistorted pinhole twin.

    Attributes:
        source: the distorted camera the sampling plan reads from (the original one, scaled by
            ``prescale`` when there is one).
        source_width, source_height: the size of the image the plan reads (after ``prescale``).
        K: (3, 3) pinhole intrinsics of the undistorted image, pixels.
        width, height: undistorted image size.
        mask: (height, width) bool, pixels whose source lies inside the original image, or None
            when the camera has no distortion (the image is passed through unchanged).
        prescale: optional downscaling of the original image before the undistortion (so that a
            large photo bound for a small size is never resampled at full resolution).
    """

    source: Intrinsics
    source_width: int
    source_height: int
    K: np.ndarray
    width: int
    height: int
    mask: np.ndarray | None
    _index: np.ndarray | None = dataclasses.field(default=None, repr=False)  # (4, N) flat source pixels
    _weights: np.ndarray | None = dataclasses.field(default=None, repr=False)
    prescale: ResizePlan | None = None

    @property
    def input_size(self) -> tuple[int, int]:
        """(width, height) of the original images this undistorter takes."""
        if self.prescale is not None:
            return self.prescale.width, self.prescale.height
        return self.source_width, self.source_height

    @property
    def is_identity(self) -> bool:
        return self._index is None

    def image(self, image: np.ndarray) -> np.ndarray:
        """The undistorted image; pixels outside the original are 0.

        Shape:
            image: (H, W, C) or (H, W) with (W, H) = ``input_size``
            -> (height, width, C) or (height, width), same dtype.
        """
        image = np.asarray(image)
        input_width, input_height = self.input_size
        if image.shape[:2] != (input_height, input_width):
            raise ValueError(
                f"expected an image of {input_width}x{input_height} pixels, "
                f"got {image.shape[1]}x{image.shape[0]}"
            )
        if self.prescale is not None:
            image = self.prescale.image(image)
        if self.is_identity:
            return image.copy()
        flat = image.reshape(self.source_height * self.source_width, -1).astype(np.float32)
        out = np.zeros((self._index.shape[1], flat.shape[1]), dtype=np.float32)
        for corner in range(4):
            out += flat[self._index[corner]] * self._weights[corner][:, None]
        if np.issubdtype(image.dtype, np.integer):
            info = np.iinfo(image.dtype)
            out = np.clip(np.rint(out), info.min, info.max)
        out = out.astype(image.dtype).reshape((self.height, self.width) + image.shape[2:])
        out[~self.mask] = 0
        return out

    def points(self, pixels: np.ndarray) -> np.ndarray:
        """Pixel positions in the original image -> positions in the undistorted image.

        Shape:
            pixels: (N, 2) -> (N, 2); NaN where the lens model cannot be inverted.
        """
        pixels = np.asarray(pixels, dtype=np.float64).reshape(-1, 2)
        if self.prescale is not None:
            pixels = self.prescale.points(pixels)
        normalized = self.source.cam_from_img(pixels)
        return normalized * [self.K[0, 0], self.K[1, 1]] + [self.K[0, 2], self.K[1, 2]]


def make_undistorter(
    model: str,
    width: int,
    height: int,
    params,
    mode: str = "valid",
    target: tuple[np.ndarray, int, int] | None = None,
    scale: float = 1.0,
) -> Undistorter:
    """Plan the undistortion of a COLMAP camera (model, size, params) in ``mode``.

    Args:
        model, width, height, params: the COLMAP camera.
        mode: ``"valid"``, ``"full"`` or ``"keep_size"`` (module docstring).
        target: optional (K (3, 3), width, height) of the pinhole camera to resample into instead
            of the one ``mode`` chooses (e.g. to match another camera); ``mode`` is then ignored.
        scale: in (0, 1]: downscale the distorted image by this factor first (antialiased) and
            undistort at that size; exact, since scaling a COLMAP camera scales fx, fy, cx, cy
            and leaves the distortion of normalised coordinates alone. Ignored without distortion.

    Raises:
        ValueError: on an unknown mode, an unsupported model or parameters of the wrong length.
    """
    if mode not in UNDISTORT_MODES:
        raise ValueError(f"undistortion mode must be one of {UNDISTORT_MODES}, got {mode!r}")
    if width < 2 or height < 2:
        raise ValueError(f"camera size must be at least 2x2 pixels, got {width}x{height}")
    if not 0.0 < scale <= 1.0:
        raise ValueError(f"scale must be in (0, 1], got {scale}")
    source = Intrinsics.from_params(model, params)
    prescale = None
    if scale < 1.0 and not source.is_pinhole:
        scaled_width, scaled_height = max(2, round(width * scale)), max(2, round(height * scale))
        prescale = ResizePlan(width, height, scaled_width, scaled_height, 0, 0, scaled_width, scaled_height)
        sx, sy = prescale.scale_x, prescale.scale_y
        source = dataclasses.replace(source, fx=source.fx * sx, fy=source.fy * sy, cx=source.cx * sx, cy=source.cy * sy)
        width, height = scaled_width, scaled_height
    plan = _undistorter(source, width, height, mode, target)
    plan.prescale = prescale
    return plan


def _undistorter(source: Intrinsics, width: int, height: int, mode: str, target) -> Undistorter:
    if target is not None:
        target_K, target_width, target_height = target
        target_K = np.asarray(target_K, dtype=np.float64)
        if target_K.shape != (3, 3) or target_width < 1 or target_height < 1:
            raise ValueError(f"target must be (K (3, 3), width, height), got K {target_K.shape}, "
                             f"{target_width}x{target_height}")
        return _plan(source, width, height, target_K, int(target_width), int(target_height))
    if source.is_pinhole:
        return Undistorter(source, width, height, source.K, width, height, mask=None)
    if mode == "keep_size":
        return _plan(source, width, height, source.K, width, height)
    scale_x, scale_y = _border_scales(source, width, height, mode)
    for _ in range(200):
        new_width, new_height = max(1, round(scale_x * width)), max(1, round(scale_y * height))
        K = source.K.copy()
        # The principal point keeps its place relative to the image size (COLMAP).
        K[0, 2] *= new_width / width
        K[1, 2] *= new_height / height
        plan = _plan(source, width, height, K, new_width, new_height)
        if mode != "valid" or plan.mask.all():
            return plan
        # Border sampling missed a bulge of the blank area: shrink the blank axis a little.
        blank_columns = ~plan.mask.all(axis=0)
        blank_rows = ~plan.mask.all(axis=1)
        if blank_columns.any():
            scale_x *= 0.995
        if blank_rows.any():
            scale_y *= 0.995
    raise ValueError(f"{source.model} camera {source.extra}: no undistorted image without blank pixels found")


def _border_scales(source: Intrinsics, width: int, height: int, mode: str) -> tuple[float, float]:
    """COLMAP's size rule: scale factors of the width and height from the undistorted border."""
    xs = np.arange(width) + 0.5
    ys = np.arange(height) + 0.5

    def undistorted(pixels):
        normalized = source.cam_from_img(pixels)
        if np.isnan(normalized).any():
            raise ValueError(
                f"{source.model} camera {source.extra}: the lens model cannot be inverted at the image "
                "border (distortion too strong for this image size)"
            )
        return normalized * [source.fx, source.fy] + [source.cx, source.cy]

    left = undistorted(np.stack([np.full(height, 0.5), ys], axis=1))[:, 0]
    right = undistorted(np.stack([np.full(height, width - 0.5), ys], axis=1))[:, 0]
    top = undistorted(np.stack([xs, np.full(width, 0.5)], axis=1))[:, 1]
    bottom = undistorted(np.stack([xs, np.full(width, height - 0.5)], axis=1))[:, 1]
    cx, cy = source.cx, source.cy
    # With scale s the new pixel x' maps to x = x' + c (1 - s); the new border pixel centres
    # 0.5 and s W - 0.5 must land inside (valid) or outside (full) the undistorted border.
    if mode == "valid":
        scale_x = min((cx + 0.5 - left.max()) / cx, (right.min() + 0.5 - cx) / (width - cx))
        scale_y = min((cy + 0.5 - top.max()) / cy, (bottom.min() + 0.5 - cy) / (height - cy))
    else:
        scale_x = max((cx + 0.5 - left.min()) / cx, (right.max() + 0.5 - cx) / (width - cx))
        scale_y = max((cy + 0.5 - top.min()) / cy, (bottom.max() + 0.5 - cy) / (height - cy))
    return float(np.clip(scale_x, MIN_SCALE, MAX_SCALE)), float(np.clip(scale_y, MIN_SCALE, MAX_SCALE))


def _plan(source: Intrinsics, width: int, height: int, K: np.ndarray, new_width: int, new_height: int) -> Undistorter:
    """Bilinear sampling plan: for each new pixel, its source position through the lens."""
    cols, rows = np.meshgrid(np.arange(new_width) + 0.5, np.arange(new_height) + 0.5)
    normalized = np.stack([(cols - K[0, 2]) / K[0, 0], (rows - K[1, 2]) / K[1, 1]], axis=-1).reshape(-1, 2)
    source_pixels = source.img_from_cam(normalized)
    # Continuous array indices of the source sample (pixel centre j + 0.5 is index j).
    col = source_pixels[:, 0] - 0.5
    row = source_pixels[:, 1] - 0.5
    tol = _EDGE_TOLERANCE
    valid = (col >= -tol) & (col <= width - 1 + tol) & (row >= -tol) & (row <= height - 1 + tol)
    col = np.clip(np.nan_to_num(col), 0.0, width - 1.0)
    row = np.clip(np.nan_to_num(row), 0.0, height - 1.0)
    col0 = np.minimum(np.floor(col).astype(np.int64), width - 2)
    row0 = np.minimum(np.floor(row).astype(np.int64), height - 2)
    fc = (col - col0).astype(np.float32)
    fr = (row - row0).astype(np.float32)
    top_left = row0 * width + col0
    index = np.stack([top_left, top_left + 1, top_left + width, top_left + width + 1])
    index = index.astype(np.int32 if width * height < 2**31 else np.int64)
    weights = np.stack([(1 - fr) * (1 - fc), (1 - fr) * fc, fr * (1 - fc), fr * fc])
    return Undistorter(
        source,
        width,
        height,
        np.asarray(K, dtype=np.float64),
        new_width,
        new_height,
        mask=valid.reshape(new_height, new_width),
        _index=index,
        _weights=weights,
    )
