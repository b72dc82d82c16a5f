"""Planar in-fill of a depth map's low-texture regions (a planar prior, as in ACMP, Xu & Tao 2020).

Where an image has no texture, matching says nothing about depth and the network's estimate there is
what its limited context makes of it (on the held-out synthetic scenes such pixels are a quarter of
two scenes and only 63-75 % of them are within 1 % of the truth). Such regions are mostly pieces of
planes — a patch of floor or wall in one colour — and their textured surroundings are measured well.
So, per view:

1. *low texture*: the grey image's standard deviation in a ``window`` x ``window`` neighbourhood is
   below ``texture_std`` (image values in [0, 1]); opened once (3 x 3 cross) against single pixels;
2. each connected low-texture region of at least ``min_area`` pixels gets a *ring*: the textured
   pixels within ``ring`` pixels of it that have a depth;
3. a plane is fitted to the ring by RANSAC: for a pinhole camera the inverse depth of a plane is
   affine in the pixel coordinates, 1 / z = a u + b v + c; a ring pixel is an inlier when the
   plane's inverse depth is within ``inlier_tolerance`` (relative) of its own, and the plane is
   refitted to the inliers by least squares;
4. a region whose ring is at least ``min_inlier_fraction`` inliers (its surroundings are mostly one
   plane) takes the plane's depth wherever that depth is within the view's depth range, widened
   by a factor 1.25; other regions (a curved surface, a ring across several surfaces) keep
   the network's depth. Regions clipped to white or nearly black (median grey at least ``max_brightness``
   or below ``min_brightness``) are left alone: nothing was measured there.

With ``max_planes`` > 1 the ring gets up to that many planes (sequential RANSAC: each next plane on
the ring pixels the earlier ones leave), the inlier fraction counts the ring pixels any of them fits,
and each region pixel takes the plane nearest the network's inverse depth there (a uniform region
across the crease of two walls); ``max_disagreement`` leaves a pixel alone whose chosen plane is
further than that fraction from the network's inverse depth. Both are off by default: on the indoor
validation rooms of 2026-12-07 neither beat a single plane with ``min_inlier_fraction`` 0.3.

The RANSAC samples come from a generator seeded by the caller, so a view's result is reproducible.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import PlaneFillConfig


#: Hypotheses scored at once: blocks of 16 x 2000 float64 residuals (256 KiB) stay below the 512 KiB
#: from which `selfmvs infer` has the C library map fresh pages (infer.mmap_threshold_kib); one
#: 200 x 2000 matrix per region was mapped, page-faulted and unmapped each time, twice the fill's time.
_SCORE_BLOCK = 16


#: RANSAC hypotheses per region, ring pixels sampled for them, and the factor by which the view's
#: depth range is widened for the planes' depths (fixed: no run has needed other values).
_RANSAC_ITERATIONS = 200
_MAX_RING_SAMPLES = 2000
_RANGE_MARGIN = 1.25
#: Fewest ring pixels a region needs (and a further plane of it), and the share of the ring a plane
#: after the first must explain.
_MIN_RING = 50
_MIN_PLANE_SHARE = 0.1


def ring_planes(
    u: np.ndarray, v: np.ndarray, inverse: np.ndarray, params: PlaneFillConfig, rng: np.random.Generator,
) -> list[np.ndarray]:
    """Up to ``params.max_planes`` planes of a region's ring (sequential RANSAC: each next plane is
    fitted to the ring pixels no earlier plane explains); [] when together they explain less than
    ``params.min_inlier_fraction`` of the ring.

    A plane after the first needs at least ``_MIN_PLANE_SHARE`` of the ring and ``_MIN_RING`` pixels:
    the piece of ring along the crease of two walls, not a few stray pixels of furniture.
    Shape: u, v, inverse (N,) pixel coordinates and inverse depths of the ring; planes (3,) each.
    """
    planes: list[np.ndarray] = []
    explained = np.zeros(inverse.shape[0], dtype=bool)
    for _ in range(max(params.max_planes, 1)):
        rest = ~explained
        if rest.sum() < _MIN_RING:
            break
        plane, _ = fit_inverse_depth_plane(u[rest], v[rest], inverse[rest], params.inlier_tolerance,
                                           _RANSAC_ITERATIONS, rng, _MAX_RING_SAMPLES)
        if plane is None:
            break
        fits = rest & (np.abs(plane[0] * u + plane[1] * v + plane[2] - inverse) < params.inlier_tolerance * inverse)
        if planes and fits.sum() < max(_MIN_RING, _MIN_PLANE_SHARE * inverse.shape[0]):
            break
        planes.append(plane)
        explained |= fits
    if not planes or explained.mean() < params.min_inlier_fraction:
        return []
    return planes


@dataclasses.dataclass
class PlanarFillResult:
    """``depth`` (H, W) float32 with the filled regions replaced; ``filled`` (H, W) bool: the pixels
    that took a plane's depth; ``regions`` / ``planes``: low-texture regions considered / filled."""

    depth: np.ndarray
    filled: np.ndarray
    regions: int
    planes: int


def low_texture_mask(image: np.ndarray, texture_std: float, window: int) -> np.ndarray:
    """Pixels whose grey value's local standard deviation is below ``texture_std``.

    Shape: image (H, W, 3) uint8 (or float in [0, 1]); returns (H, W) bool.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"low_texture_mask: expected an (H, W, 3) image, got shape {image.shape}")
    if window < 1 or window % 2 == 0:
        raise ValueError(f"low_texture_mask: window must be odd and positive, got {window}")
    grey = torch.as_tensor(np.asarray(image, dtype=np.float32)).mean(dim=2)
    if image.dtype == np.uint8:
        grey = grey / 255.0
    grey = grey[None, None]
    pad = window // 2
    mean = F.avg_pool2d(grey, window, 1, pad, count_include_pad=False)
    square = F.avg_pool2d(grey * grey, window, 1, pad, count_include_pad=False)
    std = (square - mean * mean).clamp_min(0.0).sqrt()[0, 0].numpy()
    return std < texture_std


def fit_inverse_depth_plane(
    u: np.ndarray,
    v: np.ndarray,
    inverse: np.ndarray,
    tolerance: float,
    iterations: int,
    rng: np.random.Generator,
    max_samples: int = 2000,
) -> tuple[np.ndarray | None, float]:
    """RANSAC fit of ``inverse ~ a u + b v + c``; returns ((a, b, c) or None, inlier fraction).

    An inlier is within ``tolerance`` (relative) of the plane's inverse depth. Hypotheses are drawn
    and scored on at most ``max_samples`` of the points (a random subset: scoring is iterations x
    points), the best one's inliers among all points are refitted by least squares and
    counted again."""
    count = inverse.shape[0]
    if count < 3:
        return None, 0.0
    design = np.stack([u, v, np.ones_like(u)], axis=1)
    subset = rng.choice(count, max_samples, replace=False) if count > max_samples else np.arange(count)
    # Triples drawn with replacement: one with a repeated point is singular and skipped like any other.
    samples = subset[rng.integers(0, subset.shape[0], size=(iterations, 3))]
    systems = design[samples]  # (I, 3, 3)
    solvable = np.abs(np.linalg.det(systems)) > 1e-9
    if not solvable.any():
        return None, 0.0
    coefficients = np.linalg.solve(systems[solvable], inverse[samples[solvable]][..., None])[..., 0]  # (I', 3)
    scored, scored_design = inverse[subset], design[subset].T
    hits = np.empty(coefficients.shape[0], dtype=np.int64)
    for start in range(0, coefficients.shape[0], _SCORE_BLOCK):
        residual = np.abs(coefficients[start:start + _SCORE_BLOCK] @ scored_design - scored)  # (block, S)
        hits[start:start + _SCORE_BLOCK] = (residual < tolerance * scored).sum(axis=1)
    candidate = coefficients[int(hits.argmax())]
    best = np.abs(design @ candidate - inverse) < tolerance * inverse
    if best.sum() < 3:
        return None, 0.0
    plane = np.linalg.lstsq(design[best], inverse[best], rcond=None)[0]
    fraction = float((np.abs(design @ plane - inverse) < tolerance * inverse).mean())
    return plane, fraction


def planar_fill(
    depth: np.ndarray,
    image: np.ndarray,
    depth_range: tuple[float, float],
    params: PlaneFillConfig = PlaneFillConfig(),
    rng: np.random.Generator | None = None,
) -> PlanarFillResult:
    """``depth`` with its low-texture regions replaced by the plane of their surroundings (module
    docstring), with the thresholds of ``params`` (the ``infer.plane_fill`` section; ``enabled`` is the
    caller's switch, not read here). Pixels with depth 0 (none) are never ring pixels and stay 0.

    Shape: depth (H, W); image (H, W, 3) of the same size; depth_range (near, far) of the view.
    """
    from scipy import ndimage  # here, not at import: scipy.ndimage costs ~18 MB, paid only when filling

    depth = np.asarray(depth, dtype=np.float32)
    if depth.ndim != 2 or image.shape[:2] != depth.shape:
        raise ValueError(f"planar_fill: depth {depth.shape} and image {image.shape} must have the same size")
    rng = rng if rng is not None else np.random.default_rng(0)
    near, far = (float(v) for v in depth_range)
    low = ndimage.binary_opening(low_texture_mask(image, params.texture_std, params.window))
    grey = np.asarray(image, dtype=np.float32).mean(axis=2) / (255.0 if image.dtype == np.uint8 else 1.0)
    labels, count = ndimage.label(low)
    out = depth.copy()
    filled = np.zeros(depth.shape, dtype=bool)
    if count == 0:
        return PlanarFillResult(out, filled, 0, 0)
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    regions = planes = 0
    height, width = depth.shape
    margin = params.ring + 1
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None or areas[index] < params.min_area:
            continue
        regions += 1
        rows = slice(max(box[0].start - margin, 0), min(box[0].stop + margin, height))
        cols = slice(max(box[1].start - margin, 0), min(box[1].stop + margin, width))
        region = labels[rows, cols] == index
        brightness = np.median(grey[rows, cols][region])
        if (params.max_brightness < 1 and brightness >= params.max_brightness) or brightness < params.min_brightness:
            continue  # clipped: the sensor saturated (a white backdrop) or got no light (an unlit background)
        local = depth[rows, cols]
        ring = ndimage.binary_dilation(region, iterations=params.ring) & ~low[rows, cols] & (local > 0)
        if ring.sum() < _MIN_RING:
            continue
        ring_rows, ring_cols = np.nonzero(ring)
        ring_u, ring_v = ring_cols + cols.start + 0.5, ring_rows + rows.start + 0.5
        ring_inverse = 1.0 / local[ring].astype(np.float64)
        fitted = ring_planes(ring_u, ring_v, ring_inverse, params, rng)
        if not fitted:
            continue
        region_rows, region_cols = np.nonzero(region & (local > 0))
        u, v = region_cols + cols.start + 0.5, region_rows + rows.start + 0.5
        inverse = np.stack([plane[0] * u + plane[1] * v + plane[2] for plane in fitted])  # (P, N)
        with np.errstate(divide="ignore"):
            plane_depth = np.where(inverse > 0, 1.0 / inverse, np.inf)
        inside = (plane_depth >= near / _RANGE_MARGIN) & (plane_depth <= far * _RANGE_MARGIN)
        if len(fitted) > 1 or params.max_disagreement is not None:
            # Each pixel takes the plane nearest the network's own inverse depth there (several planes:
            # a region across a crease), and none where even that one is further than max_disagreement.
            network_inverse = 1.0 / local[region_rows, region_cols].astype(np.float64)
            disagreement = np.where(inside, np.abs(inverse - network_inverse) / network_inverse, np.inf)
            choice = disagreement.argmin(axis=0)
            best = disagreement[choice, np.arange(choice.shape[0])]
            keep = np.isfinite(best) if params.max_disagreement is None else best <= params.max_disagreement
            chosen_depth = plane_depth[choice, np.arange(choice.shape[0])]
        else:
            keep, chosen_depth = inside[0], plane_depth[0]
        if not keep.any():
            continue
        planes += int(np.unique(choice[keep]).shape[0]) if len(fitted) > 1 else 1
        target_rows, target_cols = region_rows[keep] + rows.start, region_cols[keep] + cols.start
        out[target_rows, target_cols] = chosen_depth[keep]
        filled[target_rows, target_cols] = True
    return PlanarFillResult(out, filled, regions, planes)
