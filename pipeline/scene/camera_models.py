"""COLMAP's camera models: the lens distortion of normalised coordinates and its inverse.

Normalised coordinates are ``(u, v) = (X / Z, Y / Z)`` of a point in the camera frame; a model maps
them to distorted normalised coordinates ``(ud, vd)`` and then to pixels with
``x = fx * ud + cx, y = fy * vd + cy`` (COLMAP's convention: pixel centres at ``j + 0.5``). The
formulas are those of COLMAP's ``src/colmap/sensor/models.h``; the fisheye models first map the
normalised radius r to the angle ``theta = atan(r)`` (equidistant projection) and distort that.

Everything is vectorised over points (numpy, float64). :func:`undistort_normalized` inverts the
distortion with Newton's method on all points at once (like COLMAP's ``IterativeUndistortion``,
a central-difference Jacobian, started at the distorted point).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np


class UnsupportedCameraModelError(ValueError):
    """A COLMAP camera model this module does not implement."""


@dataclasses.dataclass(frozen=True)
class LensModel:
    """Parameter layout of a COLMAP camera model.

    Attributes:
        name: COLMAP's model name.
        single_focal: True where the model has one focal length f (fx = fy = f).
        num_extra: number of distortion parameters after the focal length(s) and principal point.
    """

    name: str
    single_focal: bool
    num_extra: int

    @property
    def num_params(self) -> int:
        return (3 if self.single_focal else 4) + self.num_extra


def _no_distortion(extra, u, v):
    return u, v


def _simple_radial(extra, u, v):
    (k,) = extra
    factor = 1.0 + k * (u * u + v * v)
    return u * factor, v * factor


def _radial(extra, u, v):
    k1, k2 = extra
    r2 = u * u + v * v
    factor = 1.0 + r2 * (k1 + k2 * r2)
    return u * factor, v * factor


def _radial_tangential(u, v, radial_factor, p1, p2):
    # Brown-Conrady tangential terms, as OpenCV / COLMAP write them.
    uv, r2 = u * v, u * u + v * v
    ud = u * radial_factor + 2.0 * p1 * uv + p2 * (r2 + 2.0 * u * u)
    vd = v * radial_factor + 2.0 * p2 * uv + p1 * (r2 + 2.0 * v * v)
    return ud, vd


def _opencv(extra, u, v):
    k1, k2, p1, p2 = extra
    r2 = u * u + v * v
    return _radial_tangential(u, v, 1.0 + r2 * (k1 + k2 * r2), p1, p2)


def _full_opencv(extra, u, v):
    k1, k2, p1, p2, k3, k4, k5, k6 = extra
    r2 = u * u + v * v
    r4, r6 = r2 * r2, r2 * r2 * r2
    radial = (1.0 + k1 * r2 + k2 * r4 + k3 * r6) / (1.0 + k4 * r2 + k5 * r4 + k6 * r6)
    return _radial_tangential(u, v, radial, p1, p2)


def _to_fisheye_angle(u, v):
    """(u, v) scaled so that their radius is theta = atan(r) (the equidistant fisheye projection)."""
    r = np.hypot(u, v)
    safe = r > np.finfo(np.float64).eps
    scale = np.where(safe, np.arctan(r) / np.where(safe, r, 1.0), 1.0)
    return u * scale, v * scale


def _opencv_fisheye(extra, u, v):
    k1, k2, k3, k4 = extra
    uu, vv = _to_fisheye_angle(u, v)
    t2 = uu * uu + vv * vv
    factor = 1.0 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4)))
    return uu * factor, vv * factor


def _simple_radial_fisheye(extra, u, v):
    (k,) = extra
    uu, vv = _to_fisheye_angle(u, v)
    factor = 1.0 + k * (uu * uu + vv * vv)
    return uu * factor, vv * factor


def _radial_fisheye(extra, u, v):
    k1, k2 = extra
    uu, vv = _to_fisheye_angle(u, v)
    t2 = uu * uu + vv * vv
    factor = 1.0 + t2 * (k1 + k2 * t2)
    return uu * factor, vv * factor


def _thin_prism_fisheye(extra, u, v):
    k1, k2, p1, p2, k3, k4, sx1, sy1 = extra
    uu, vv = _to_fisheye_angle(u, v)
    t2 = uu * uu + vv * vv
    radial = 1.0 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4)))
    ud, vd = _radial_tangential(uu, vv, radial, p1, p2)
    return ud + sx1 * t2, vd + sy1 * t2


def _fov(extra, u, v):
    # Devernay & Faugeras (2001), "Straight lines have to be straight", eq. 13:
    # r_d = atan(2 r tan(omega / 2)) / omega, with series expansions where it is 0/0.
    (omega,) = extra
    r2 = u * u + v * v
    omega2 = omega * omega
    eps = 1e-4
    if omega2 < eps:
        factor = (omega2 * r2) / 3.0 - omega2 / 12.0 + 1.0
    else:
        tan_half = np.tan(omega / 2.0)
        r = np.sqrt(r2)
        small = r2 < eps
        safe_r = np.where(small, 1.0, r)
        exact = np.arctan(safe_r * 2.0 * tan_half) / (safe_r * omega)
        series = (-2.0 * tan_half * (4.0 * r2 * tan_half * tan_half - 3.0)) / (3.0 * omega)
        factor = np.where(small, series, exact)
    return u * factor, v * factor


_DistortFn = Callable[[tuple, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

LENS_MODELS: dict[str, tuple[LensModel, _DistortFn]] = {
    "SIMPLE_PINHOLE": (LensModel("SIMPLE_PINHOLE", True, 0), _no_distortion),
    "PINHOLE": (LensModel("PINHOLE", False, 0), _no_distortion),
    "SIMPLE_RADIAL": (LensModel("SIMPLE_RADIAL", True, 1), _simple_radial),
    "RADIAL": (LensModel("RADIAL", True, 2), _radial),
    "OPENCV": (LensModel("OPENCV", False, 4), _opencv),
    "FULL_OPENCV": (LensModel("FULL_OPENCV", False, 8), _full_opencv),
    "OPENCV_FISHEYE": (LensModel("OPENCV_FISHEYE", False, 4), _opencv_fisheye),
    "SIMPLE_RADIAL_FISHEYE": (LensModel("SIMPLE_RADIAL_FISHEYE", True, 1), _simple_radial_fisheye),
    "RADIAL_FISHEYE": (LensModel("RADIAL_FISHEYE", True, 2), _radial_fisheye),
    "THIN_PRISM_FISHEYE": (LensModel("THIN_PRISM_FISHEYE", False, 8), _thin_prism_fisheye),
    "FOV": (LensModel("FOV", False, 1), _fov),
}

PINHOLE_MODELS = ("SIMPLE_PINHOLE", "PINHOLE")


def lens_model(model: str) -> LensModel:
    """The parameter layout of ``model``; raises UnsupportedCameraModelError naming it."""
    try:
        return LENS_MODELS[model][0]
    except KeyError:
        raise UnsupportedCameraModelError(
            f"camera model {model!r} is not supported; supported: {', '.join(LENS_MODELS)}"
        ) from None


@dataclasses.dataclass(frozen=True)
class Intrinsics:
    """A camera split into its pinhole part and its distortion parameters.

    Attributes:
        model: COLMAP model name.
        fx, fy, cx, cy: pinhole part, in pixels.
        extra: distortion parameters in COLMAP's order.
    """

    model: str
    fx: float
    fy: float
    cx: float
    cy: float
    extra: tuple[float, ...]

    @classmethod
    def from_params(cls, model: str, params) -> "Intrinsics":
        layout = lens_model(model)
        params = np.asarray(params, dtype=np.float64).reshape(-1)
        if params.size != layout.num_params:
            raise ValueError(
                f"camera model {model} takes {layout.num_params} parameters, got {params.size}: {params}"
            )
        if layout.single_focal:
            fx = fy = params[0]
            cx, cy = params[1], params[2]
            extra = params[3:]
        else:
            fx, fy, cx, cy = params[:4]
            extra = params[4:]
        if fx <= 0 or fy <= 0:
            raise ValueError(f"camera model {model}: focal lengths must be positive, got {fx}, {fy}")
        return cls(model, float(fx), float(fy), float(cx), float(cy), tuple(float(e) for e in extra))

    @property
    def K(self) -> np.ndarray:
        """The pinhole part as a 3x3 matrix in pixels."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def is_pinhole(self) -> bool:
        return self.model in PINHOLE_MODELS or not any(self.extra)

    def img_from_cam(self, normalized: np.ndarray) -> np.ndarray:
        """Pixels of normalised camera coordinates, through the lens.

        Shape:
            normalized: (..., 2) -> (..., 2)
        """
        distorted = distort_normalized(self.model, self.extra, normalized)
        return distorted * [self.fx, self.fy] + [self.cx, self.cy]

    def cam_from_img(self, pixels: np.ndarray) -> np.ndarray:
        """Normalised camera coordinates of pixels, the lens distortion removed.

        Shape:
            pixels: (..., 2) -> (..., 2)
        """
        pixels = np.asarray(pixels, dtype=np.float64)
        distorted = (pixels - [self.cx, self.cy]) / [self.fx, self.fy]
        return undistort_normalized(self.model, self.extra, distorted)


def distort_normalized(model: str, extra, normalized: np.ndarray) -> np.ndarray:
    """Apply the lens distortion of ``model`` to normalised coordinates.

    Args:
        model: COLMAP model name.
        extra: the distortion parameters (COLMAP's order, after focal lengths and principal point).
        normalized: points (u, v) = (X / Z, Y / Z).

    Shape:
        normalized: (..., 2) -> (..., 2)
    """
    layout = lens_model(model)
    extra = tuple(float(e) for e in np.asarray(extra, dtype=np.float64).reshape(-1))
    if len(extra) != layout.num_extra:
        raise ValueError(f"camera model {model} takes {layout.num_extra} distortion parameters, got {extra}")
    normalized = np.asarray(normalized, dtype=np.float64)
    if normalized.shape[-1:] != (2,):
        raise ValueError(f"expected (..., 2) normalised coordinates, got {normalized.shape}")
    ud, vd = LENS_MODELS[model][1](extra, normalized[..., 0], normalized[..., 1])
    return np.stack([ud, vd], axis=-1)


def undistort_normalized(
    model: str,
    extra,
    distorted: np.ndarray,
    max_iterations: int = 100,
    tolerance: float = 1e-12,
) -> np.ndarray:
    """Invert :func:`distort_normalized` with vectorised Newton iterations.

    Each point starts at its distorted position; the 2x2 Jacobian is taken by central differences
    and solved in closed form. Points that have converged (step below ``tolerance`` relative to
    max(1, |x|)) stop moving; points that never converge (outside the lens' invertible domain)
    come back as NaN.

    Shape:
        distorted: (..., 2) -> (..., 2)
    """
    layout = lens_model(model)
    distorted = np.asarray(distorted, dtype=np.float64)
    if layout.num_extra == 0 or not np.any(extra):
        return distorted.copy()
    shape = distorted.shape
    # Diverging points (no preimage) may overflow; they are caught by the final residual check.
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        target = distorted.reshape(-1, 2)
        x = target.copy()
        active = np.arange(x.shape[0])
        for _ in range(max_iterations):
            if active.size == 0:
                break
            xa, ta = x[active], target[active]
            residual = distort_normalized(model, extra, xa) - ta
            step_size = 1e-7 * np.maximum(1.0, np.abs(xa))
            # Jacobian columns by central differences, all points at once.
            columns = []
            for axis in range(2):
                delta = np.zeros_like(xa)
                delta[:, axis] = step_size[:, axis]
                forward = distort_normalized(model, extra, xa + delta)
                backward = distort_normalized(model, extra, xa - delta)
                columns.append((forward - backward) / (2.0 * step_size[:, axis : axis + 1]))
            j00, j10 = columns[0][:, 0], columns[0][:, 1]
            j01, j11 = columns[1][:, 0], columns[1][:, 1]
            det = j00 * j11 - j01 * j10
            step_x = (j11 * residual[:, 0] - j01 * residual[:, 1]) / det
            step_y = (-j10 * residual[:, 0] + j00 * residual[:, 1]) / det
            step = np.stack([step_x, step_y], axis=1)
            x[active] = xa - step
            bad = ~np.all(np.isfinite(x[active]), axis=1)
            done = np.all(np.abs(step) <= tolerance * np.maximum(1.0, np.abs(xa)), axis=1) | bad
            active = active[~done]
        # Points whose distortion does not land back on the target (diverged) have no inverse.
        residual = distort_normalized(model, extra, x) - target
        x[~(np.abs(residual) <= 1e-6 * np.maximum(1.0, np.abs(target))).all(axis=1)] = np.nan
    return x.reshape(shape)
