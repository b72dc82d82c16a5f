"""Depth-map fusion: photometric and geometric consistency, then averaging of consistent points.

For every reference view and every pixel with a depth estimate (after Yao et al., MVSNet, ECCV 2018,
Sec. 4.2, and the fusion script of Wang et al., PatchmatchNet, CVPR 2021):

1. **Photometric check**: ``confidence >= min_confidence``.
2. **Geometric check** against each source view s: the reference pixel p (depth d) is back-projected
   to the 3-D point X, projected into s at p_s, the source depth d_s is read at p_s (bilinear or
   nearest), the source point X_s = d_s K_s^-1 p_s is carried back into the reference camera as
   X'_s (z-depth d'_s) and projected to p'. The source *agrees* when
   ``|p' - p| <= max_reprojection_error`` (pixels) and ``|d'_s - d| / d <= max_relative_depth_error``.
3. **Vote**: the pixel is kept when at least ``min(min_consistent_views, S)`` sources agree, S being
   the number of sources available for this reference; a pixel of a low-texture region's plane
   (the view's ``filled`` mask) needs ``filled_min_consistent_views`` instead, when that is set, and
   another pixel without texture (the reference image's local grey standard deviation below
   ``low_texture_std``, as the in-fill measures it) ``low_texture_min_consistent_views``, when that is set.
   **Visibility** (when ``max_free_space_violations`` is set; the free-space violations of Merrell
   et al., "Real-time visibility-based fusion of depth maps", ICCV 2007): source s *sees past* X when
   its depth at p_s exceeds X's depth in s by more than ``free_space_margin`` (relative), i.e. X lies
   in space that view sees through. A pixel with more than ``max_free_space_violations`` such sources
   is dropped, whatever its vote. A source that sees something in front of X (X occluded there) or
   has no depth at p_s says nothing.
4. **Averaging**: the fused point is the mean of X and the X'_s of the agreeing sources (in the
   reference camera frame, then carried to the world frame); its colour is the reference pixel's.

Dynamic variant (the "dynamic consistency checking" idea of Yan et al., D2HC-RMVSNet, ECCV 2020):
source s agrees *at level n* when ``|p' - p| <= n * dynamic_reprojection_step`` and
``|d'_s - d| / d <= n * dynamic_relative_depth_step``. With L_s the smallest such n (ceil of the two
ratios), the pixel is kept when for some n in [min(min_consistent_views, S), S] at least n sources
have L_s <= n. So a point seen by few views must be very consistent in each, while a point seen by
many views may be consistent more loosely: the per-view thresholds tighten as the number of
agreeing views falls. The averaged point uses the sources with L_s <= n*, n* the largest such n.
Sorting L ascending as L_(1) <= ... <= L_(S), "n sources have L_s <= n" is "L_(n) <= n".

The thresholds are the ``fuse`` section of the configuration, :class:`pipeline.config.FuseConfig`.

Views are streamed: only the reference and its sources are held (a small LRU cache of loaded views).
Everything per pixel is vectorised in torch; the only Python loop runs over the sources of a view.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from pipeline.config import FuseConfig, PlaneFillConfig
from pipeline.scene.planar_fill import low_texture_mask

LOW_TEXTURE_WINDOW = PlaneFillConfig().window  # the texture measure's window: the in-fill's default

log = logging.getLogger(__name__)

class FusionInputError(ValueError):
    """Bad input to fusion (NaN depths, empty maps, wrong shapes); the message names the view."""


@dataclasses.dataclass
class FusionView:
    """One view as fusion sees it (the depth map's own resolution).

    Shape:
        depth: (H, W); confidence: (H, W) or None; K: (3, 3) pixels; cam_from_world: (3, 4) or (4, 4);
        image: (H, W, 3) uint8 or None (only needed for the reference); filled: (H, W) bool or None,
        the pixels whose depth is a low-texture region's plane (depth.h5's ``filled``).
    """

    image_id: int
    depth: np.ndarray | torch.Tensor
    K: np.ndarray
    cam_from_world: np.ndarray
    confidence: np.ndarray | torch.Tensor | None = None
    image: np.ndarray | None = None
    filled: np.ndarray | None = None


@dataclasses.dataclass
class FusedView:
    """The points one reference view contributes.

    Shape:
        mask: (H, W) bool (kept pixels); xyz: (N, 3) float32 world; rgb: (N, 3) uint8 or None;
        normals: (N, 3) float32 or None; num_consistent: (H, W) uint8, agreeing sources per pixel.
    """

    image_id: int
    mask: np.ndarray
    xyz: np.ndarray
    rgb: np.ndarray | None
    normals: np.ndarray | None
    num_consistent: np.ndarray
    num_photometric: int
    source_ids: list[int]


def _as_tensor(array, device, dtype=torch.float32) -> torch.Tensor:
    if isinstance(array, torch.Tensor):
        return array.to(device=device, dtype=dtype)
    return torch.as_tensor(np.ascontiguousarray(array), device=device, dtype=dtype)


def _rigid(cam_from_world: np.ndarray) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :4] = np.asarray(cam_from_world, dtype=np.float64)[:3, :4]
    return matrix


def _check_view(view: FusionView, what: str) -> None:
    where = f"{what} view {view.image_id}".lstrip()
    depth = view.depth
    shape = tuple(depth.shape)
    if len(shape) != 2:
        raise FusionInputError(f"{where}: expected (H, W) depth, got {shape}")
    if shape[0] == 0 or shape[1] == 0:
        raise FusionInputError(f"{where}: empty depth map {shape}")
    finite = torch.isfinite(depth).all() if isinstance(depth, torch.Tensor) else np.isfinite(depth).all()
    if not bool(finite):
        raise FusionInputError(f"{where}: depth map contains NaN or inf")
    if view.confidence is not None:
        conf = view.confidence
        if tuple(conf.shape) != shape:
            raise FusionInputError(
                f"{where}: confidence {tuple(conf.shape)} != depth {shape}"
            )
        finite = torch.isfinite(conf).all() if isinstance(conf, torch.Tensor) else np.isfinite(conf).all()
        if not bool(finite):
            raise FusionInputError(f"{where}: confidence contains NaN or inf")
    if np.asarray(view.K).shape != (3, 3):
        raise FusionInputError(f"{where}: expected 3x3 K, got {np.asarray(view.K).shape}")
    if not np.allclose(np.asarray(view.K)[2], [0.0, 0.0, 1.0]):
        raise FusionInputError(f"{where}: K's last row must be (0, 0, 1), got {np.asarray(view.K)[2]}")
    if view.filled is not None and tuple(np.shape(view.filled)) != shape:
        raise FusionInputError(f"{where}: filled {tuple(np.shape(view.filled))} != depth {shape}")
    if view.image is not None and tuple(view.image.shape) != (*shape, 3):
        raise FusionInputError(
            f"{where}: image {tuple(view.image.shape)} does not match depth {shape}"
        )


def sampler_input(depth: torch.Tensor) -> torch.Tensor:
    """The (1, 2, H, W) stack of a depth map and its mask of pixels with a depth (for sampling)."""
    return torch.stack([depth, (depth > 0).to(depth.dtype)])[None]


def sample_depth(
    depth: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    mode: str = "bilinear",
    prepared: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read a depth map at pixel coordinates (pixel centres at j + 0.5, i + 0.5).

    Bilinear sampling uses only neighbours with depth > 0 and renormalises their weights (the
    bilinear sample of depth divided by that of the has-depth mask); a sample is valid when its
    centre lies inside the map (x - 0.5 in [0, W - 1], y - 0.5 in [0, H - 1]) and at least one
    neighbour has a depth. Nearest sampling reads pixel (floor(y), floor(x)).

    Args:
        prepared: ``sampler_input(depth)`` when the caller keeps it between calls.

    Shape:
        depth: (H, W); x, y: (N,) -> (values (N,), valid (N,) bool).
    """
    height, width = depth.shape
    if mode == "nearest":
        flat = depth.reshape(-1)
        col = torch.floor(x)
        row = torch.floor(y)
        inside = (col >= 0) & (col <= width - 1) & (row >= 0) & (row <= height - 1)
        index = (row.clamp(0, height - 1) * width + col.clamp(0, width - 1)).to(torch.int32)
        values = flat.index_select(0, index)
        valid = inside & (values > 0)
        return torch.where(valid, values, torch.zeros_like(values)), valid
    if prepared is None:
        prepared = sampler_input(depth)
    # grid_sample with align_corners=False puts pixel centres at (j + 0.5) / W * 2 - 1: our convention.
    grid = torch.stack([x * (2.0 / width) - 1.0, y * (2.0 / height) - 1.0], dim=-1)[None, None]
    sampled = torch.nn.functional.grid_sample(
        prepared, grid.to(prepared.dtype), mode="bilinear", padding_mode="border", align_corners=False
    )[0, :, 0]
    total, weight = sampled[0], sampled[1]
    inside = (x >= 0.5) & (x <= width - 0.5) & (y >= 0.5) & (y <= height - 0.5)
    valid = inside & (weight > 1e-6)
    values = total.div_(weight.clamp(min=1e-6)).mul_(valid)
    return values, valid


def _at_least_one(needed: int | torch.Tensor) -> int | torch.Tensor:
    return needed.clamp_min(1) if isinstance(needed, torch.Tensor) else max(needed, 1)


def dynamic_agreement_level(levels: torch.Tensor, min_views: int | torch.Tensor) -> torch.Tensor:
    """The dynamic rule's n*: the largest n >= ``min_views`` with at least n sources at level <= n.

    Args:
        levels: per source and pixel the smallest level at which the source agrees (inf: never).
        min_views: the smallest n considered: one for all pixels, or (N,) per pixel.

    Returns:
        n* per pixel, 0 where no n qualifies (the pixel is dropped).

    Shape:
        levels: (S, N) -> (N,).
    """
    num_sources = levels.shape[0]
    # With levels sorted ascending, "at least n sources have level <= n" is "sorted[n - 1] <= n".
    sorted_levels, _ = torch.sort(levels, dim=0)
    n = torch.arange(1, num_sources + 1, device=levels.device, dtype=levels.dtype)[:, None]
    satisfied = (sorted_levels <= n) & (n >= min_views)
    return torch.where(satisfied, n, torch.zeros_like(n)).amax(dim=0)


def _normals_at(depth: torch.Tensor, K: np.ndarray, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Unit normals (camera frame, facing the camera) at some pixels, from the depth gradient.

    With P(u, v) = D(u, v) K^-1 (u, v, 1) and a skew-free K, the cross product of the tangents
    dP/du x dP/dv is proportional to (-fx D_u, -fy D_v, fx r_x D_u + fy r_y D_v + D), r = K^-1 (u, v, 1);
    its negative faces the camera (its dot product with r is -D < 0). D_u, D_v are central
    differences where both neighbours have a depth, one-sided where one has, 0 where none has.

    Shape:
        depth: (H, W); rows, cols: (N,) long -> (3, N).
    """
    height, width = depth.shape
    flat = depth.reshape(-1)
    fx, fy, cx, cy = float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])
    centre = flat.index_select(0, rows * width + cols)

    def neighbour(r, c):
        inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
        z = flat.index_select(0, r.clamp(0, height - 1) * width + c.clamp(0, width - 1))
        ok = inside & (z > 0)
        return torch.where(ok, z, centre), ok

    def derivative(forward, backward):
        (z_f, ok_f), (z_b, ok_b) = forward, backward
        steps = ok_f.to(flat.dtype) + ok_b.to(flat.dtype)
        return (z_f - z_b) / steps.clamp(min=1)

    d_u = derivative(neighbour(rows, cols + 1), neighbour(rows, cols - 1))
    d_v = derivative(neighbour(rows + 1, cols), neighbour(rows - 1, cols))
    ray_x = (cols.to(flat.dtype) + 0.5 - cx) / fx
    ray_y = (rows.to(flat.dtype) + 0.5 - cy) / fy
    normal = torch.stack([fx * d_u, fy * d_v, -(fx * ray_x * d_u + fy * ray_y * d_v + centre)])
    return normal / (normal * normal).sum(dim=0).sqrt().clamp(min=1e-12)


def fuse_view(
    reference: FusionView,
    sources: Sequence[FusionView],
    params: FuseConfig = FuseConfig(),
    device: torch.device | str = "cpu",
) -> FusedView:
    """Fuse one reference view against its sources.

    Args:
        reference: the reference view; its ``image`` (if given) colours the points.
        sources: the source views (best first); ``params.num_sources`` is not applied here.
        params: thresholds.
        device: where to compute.

    Returns:
        The kept-pixel mask, the fused points (world frame), colours and normals.
    """
    device = torch.device(device)
    prepared_reference = _prepare(reference, "reference", device, params.sampling)
    prepared_sources = [
        _prepare(source, f"source (of reference {reference.image_id})", device, params.sampling)
        for source in sources
    ]
    return _fuse_prepared(prepared_reference, prepared_sources, params, device)


@dataclasses.dataclass
class _Prepared:
    """A checked view with its tensors on the device (kept in the cache while streaming)."""

    view: FusionView
    depth: torch.Tensor
    sampler: torch.Tensor | None


def _prepare(view: FusionView, what: str, device: torch.device, sampling: str) -> _Prepared:
    _check_view(view, what)
    depth = _as_tensor(view.depth, device)
    return _Prepared(view, depth, sampler_input(depth) if sampling == "bilinear" else None)


def _fuse_prepared(
    prepared_reference: _Prepared, prepared_sources: Sequence[_Prepared], params: FuseConfig, device: torch.device
) -> FusedView:
    reference = prepared_reference.view
    sources = [p.view for p in prepared_sources]
    depth = prepared_reference.depth
    height, width = depth.shape
    photometric = depth > 0
    if reference.confidence is not None:
        photometric &= _as_tensor(reference.confidence, device) >= params.min_confidence
    index = torch.nonzero(photometric.reshape(-1)).squeeze(1)
    num_photometric = int(index.numel())
    rows = torch.div(index, width, rounding_mode="floor")
    cols = index - rows * width
    x = cols.to(torch.float32) + 0.5
    y = rows.to(torch.float32) + 0.5
    d = depth.reshape(-1).index_select(0, index)

    ref_K = np.asarray(reference.K, dtype=np.float64)
    ref_K_inv = np.linalg.inv(ref_K)
    ref_from_world = _rigid(reference.cam_from_world)
    world_from_ref = np.linalg.inv(ref_from_world)
    # Points are carried as K_r X (homogeneous reference pixels times depth): projections then need
    # one 3x3 product each, and the mean of K_r X is K_r times the mean of X.
    ref_homogeneous = torch.stack([x * d, y * d, d])

    num_sources = len(sources)
    needed = min(params.min_consistent_views, num_sources)
    overrides = []  # (pixel mask, count) in increasing precedence
    if params.low_texture_min_consistent_views is not None:
        if reference.image is None:
            raise FusionInputError(
                f"view {reference.image_id}: fuse.low_texture_min_consistent_views needs the reference image "
                "(FusionView.image; null fuses without it)"
            )
        low = low_texture_mask(np.asarray(reference.image), params.low_texture_std, LOW_TEXTURE_WINDOW)
        overrides.append((low, params.low_texture_min_consistent_views))
    if params.filled_min_consistent_views is not None and reference.filled is not None:
        overrides.append((np.asarray(reference.filled, dtype=bool), params.filled_min_consistent_views))
    for mask, views in overrides:
        mask = torch.as_tensor(mask, device=device).reshape(-1).index_select(0, index)
        needed = torch.where(mask, min(views, num_sources), needed)
    count = torch.zeros_like(d, dtype=torch.int32)
    violations = None if params.max_free_space_violations is None else torch.zeros_like(count)
    point_sum = ref_homogeneous.clone()
    per_source = []  # (K_r X'_s (3, N), level (N,)) for the dynamic variant
    for prepared in prepared_sources:
        source = prepared.view
        src_depth = prepared.depth
        src_K = np.asarray(source.K, dtype=np.float64)
        src_from_ref = _rigid(source.cam_from_world) @ world_from_ref
        ref_from_src = np.linalg.inv(src_from_ref)
        # Reference pixel p with depth d -> source pixel: K_s (R_sr K_r^-1 (d p) + t_sr).
        to_source = _as_tensor(src_K @ src_from_ref[:3, :3] @ ref_K_inv, device)
        to_source_offset = _as_tensor(src_K @ src_from_ref[:3, 3], device)
        projected = torch.addmm(to_source_offset[:, None], to_source, ref_homogeneous)
        in_front = projected[2] > 1e-6
        depth_in_source = projected[2].clone() if violations is not None else None
        projected /= projected[2].clamp(min=1e-6)
        d_src, valid = sample_depth(src_depth, projected[0], projected[1], params.sampling, prepared.sampler)
        valid &= in_front
        if violations is not None:  # the source sees past the point: it lies in that view's free space
            violations += valid & (d_src > depth_in_source * (1 + params.free_space_margin))
        # Source pixel p_s with its own depth d_s -> reference: K_r (R_rs K_s^-1 (d_s p_s) + t_rs).
        to_reference = _as_tensor(ref_K @ ref_from_src[:3, :3] @ np.linalg.inv(src_K), device)
        to_reference_offset = _as_tensor(ref_K @ ref_from_src[:3, 3], device)
        reprojected = torch.addmm(to_reference_offset[:, None], to_reference, projected * d_src)
        z_back = reprojected[2]
        valid &= z_back > 1e-6
        z_back_safe = z_back.clamp(min=1e-6)
        reprojection_error = torch.hypot(reprojected[0] / z_back_safe - x, reprojected[1] / z_back_safe - y)
        relative_depth_error = (z_back - d).abs_().div_(d)
        if params.dynamic:
            level = torch.maximum(
                torch.ceil(reprojection_error / params.dynamic_reprojection_step),
                torch.ceil(relative_depth_error / params.dynamic_relative_depth_step),
            ).clamp_(min=1)
            level = torch.where(valid, level, torch.full_like(level, float("inf")))
            per_source.append((reprojected, level))
        else:
            agrees = (
                valid
                & (reprojection_error <= params.max_reprojection_error)
                & (relative_depth_error <= params.max_relative_depth_error)
            )
            count += agrees
            point_sum.addcmul_(reprojected, agrees)

    if params.dynamic and num_sources > 0:
        levels = torch.stack([level for _, level in per_source])  # (S, N)
        best = dynamic_agreement_level(levels, _at_least_one(needed))
        for reprojected, level in per_source:
            agrees = (level <= best) & (best > 0)
            count += agrees
            point_sum.addcmul_(reprojected, agrees)
        del levels, per_source
    if num_sources == 0:
        kept = torch.zeros_like(d, dtype=torch.bool)
    else:
        kept = count >= _at_least_one(needed) if params.dynamic else count >= needed
        if violations is not None:
            kept &= violations <= params.max_free_space_violations
    kept_index = index[kept]
    mean_homogeneous = point_sum[:, kept] / (1 + count[kept]).to(point_sum.dtype)
    # World point = R_r^T (K_r^-1 (mean K_r X) - t_r) = A (mean K_r X) + b.
    to_world = _as_tensor(world_from_ref[:3, :3] @ ref_K_inv, device)
    xyz = torch.addmm(_as_tensor(world_from_ref[:3, 3], device)[:, None], to_world, mean_homogeneous).T

    normals = None
    if params.normals:
        kept_rows, kept_cols = rows[kept], cols[kept]
        normal_cam = _normals_at(depth, ref_K, kept_rows, kept_cols)
        rotation = _as_tensor(world_from_ref[:3, :3], device)
        normals = (rotation @ normal_cam).T.contiguous().cpu().numpy().astype(np.float32)

    rgb = None
    if reference.image is not None:
        image = np.asarray(reference.image).reshape(-1, 3)
        rgb = image[kept_index.cpu().numpy()].astype(np.uint8)
    mask = torch.zeros(height * width, dtype=torch.bool, device=device)
    mask[kept_index] = True
    num_consistent = torch.zeros(height * width, dtype=torch.int32, device=device)
    num_consistent[index] = count
    return FusedView(
        image_id=int(reference.image_id),
        mask=mask.reshape(height, width).cpu().numpy(),
        xyz=xyz.contiguous().cpu().numpy().astype(np.float32),
        rgb=rgb,
        normals=normals,
        num_consistent=num_consistent.clamp(max=255).to(torch.uint8).reshape(height, width).cpu().numpy(),
        num_photometric=num_photometric,
        source_ids=[int(s.image_id) for s in sources],
    )


class _ViewCache:
    """A small LRU cache of loaded views: bounded memory while streaming."""

    def __init__(self, load: Callable[[int], "_Prepared"], capacity: int) -> None:
        self.load = load
        self.capacity = max(capacity, 1)
        self.views: collections.OrderedDict[int, _Prepared] = collections.OrderedDict()
        self.loads = 0

    def get(self, image_id: int) -> "_Prepared":
        if image_id in self.views:
            self.views.move_to_end(image_id)
            return self.views[image_id]
        view = self.load(image_id)
        self.loads += 1
        self.views[image_id] = view
        while len(self.views) > self.capacity:
            self.views.popitem(last=False)
        return view


def fuse_views(
    view_ids: Sequence[int],
    source_ids: Mapping[int, Sequence[int]],
    load_view: Callable[[int], FusionView],
    params: FuseConfig = FuseConfig(),
    device: torch.device | str = "cpu",
    load_image: Callable[[int], np.ndarray | None] | None = None,
) -> Iterator[FusedView]:
    """Fuse every view of ``view_ids`` in turn, yielding its points (streamed, bounded memory).

    Args:
        view_ids: the reference views, in order.
        source_ids: per view, its source view ids best first; the first ``params.num_sources`` of
            those in ``view_ids`` are used.
        load_view: image id -> :class:`FusionView` (depth, confidence, camera); called lazily and
            cached for at most ``num_sources + 1`` views.
        params: thresholds.
        device: where to compute.
        load_image: image id -> (H, W, 3) uint8 colours of the reference at the depth resolution
            (used when the loaded view carries no image).
    """
    device = torch.device(device)
    available = set(int(v) for v in view_ids)

    def load(image_id: int) -> _Prepared:
        return _prepare(load_view(image_id), "", device, params.sampling)

    cache = _ViewCache(load, params.num_sources + 1)
    for view_id in view_ids:
        view_id = int(view_id)
        chosen = [int(s) for s in source_ids.get(view_id, []) if int(s) in available and int(s) != view_id]
        chosen = chosen[: params.num_sources]
        reference = cache.get(view_id)
        if reference.view.image is None and load_image is not None:
            image = load_image(view_id)
            with_image = dataclasses.replace(reference.view, image=image)
            _check_view(with_image, "")
            reference = dataclasses.replace(reference, view=with_image)
        sources = [cache.get(s) for s in chosen]
        if not sources:
            log.warning("view %d has no source views: it contributes no points", view_id)
        yield _fuse_prepared(reference, sources, params, device)
