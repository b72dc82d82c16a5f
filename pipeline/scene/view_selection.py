"""Source-view selection with MVSNet's score.

For views i and j (Yao et al., "MVSNet", ECCV 2018, sec. 4.1)::

    s(i, j) = sum over sparse points p seen by both of G(theta_ij(p)),
    theta_ij(p) = (180 / pi) * angle between the rays c_i -> p and c_j -> p,
    G(theta) = exp(-(theta - theta0)^2 / (2 sigma^2)),  sigma = sigma1 if theta <= theta0 else sigma2,

with theta0 = 5, sigma1 = 1, sigma2 = 10. Each view takes the ``num_sources`` views of highest score
(only views with a positive score). These four are options of the ``prepare`` section, and the
functions here take that section, :class:`pipeline.config.PrepareConfig`, reading only them.

Everything is vectorised: observations are sorted by point, and the pairs of a track are formed
offset by offset (observation k with k + d for d = 1, 2, ...), so the Python loop runs over the
longest track length, not over points or pairs. Scores are accumulated with ``np.bincount``
(a dense upper triangle for up to 2,000 views, a sort-based sparse sum beyond).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Mapping

import numpy as np

from pipeline.config import PrepareConfig

LOGGER = logging.getLogger(__name__)
_DENSE_LIMIT = 4_000_000  # views^2 up to which scores live in a dense array (2,000 views: 32 MB)


@dataclasses.dataclass
class ViewSelection:
    """Selected sources per view.

    Attributes:
        sources: image id -> (source image ids (S,) int64 best first, their scores (S,) float64).
        num_shared: image id -> number of sparse points it shares with any other view.
    """

    sources: dict[int, tuple[np.ndarray, np.ndarray]]
    num_shared: dict[int, int]


def angle_weight(theta: np.ndarray, options: PrepareConfig = PrepareConfig()) -> np.ndarray:
    """MVSNet's piecewise Gaussian G(theta) of triangulation angles in degrees."""
    theta = np.asarray(theta, dtype=np.float64)
    sigma = np.where(theta <= options.theta0, options.sigma1, options.sigma2)
    return np.exp(-((theta - options.theta0) ** 2) / (2.0 * sigma * sigma))


def select_views(
    image_ids: np.ndarray,
    centers: np.ndarray,
    points_xyz: np.ndarray,
    observation_points: np.ndarray,
    observation_images: np.ndarray,
    options: PrepareConfig = PrepareConfig(),
) -> ViewSelection:
    """Select source views from camera centres and sparse-point tracks.

    Args:
        image_ids: COLMAP image ids (any order, need not be contiguous).
        centers: camera centres in the world frame, row k for ``image_ids[k]``.
        points_xyz: sparse point positions, world frame.
        observation_points: for each observation, the row of its point in ``points_xyz``.
        observation_images: for each observation, the row of its view in ``image_ids``.
            Repeated (point, view) observations count once.
        options: the ``prepare`` section; its ``num_sources``, ``theta0``, ``sigma1`` and ``sigma2``
            (angles in degrees) are the score parameters and the number of sources per view.

    Shape:
        image_ids: (N,); centers: (N, 3); points_xyz: (P, 3); observation_*: (M,)

    Raises:
        ValueError: on mismatched shapes, duplicate image ids or out-of-range indices.
    """
    image_ids = np.asarray(image_ids, dtype=np.int64).reshape(-1)
    centers = np.asarray(centers, dtype=np.float64)
    points_xyz = np.asarray(points_xyz, dtype=np.float64)
    obs_point = np.asarray(observation_points, dtype=np.int64).reshape(-1)
    obs_image = np.asarray(observation_images, dtype=np.int64).reshape(-1)
    num_views = image_ids.size
    if centers.shape != (num_views, 3):
        raise ValueError(f"expected centers of shape ({num_views}, 3), got {centers.shape}")
    if points_xyz.ndim != 2 or points_xyz.shape[1] != 3:
        raise ValueError(f"expected points_xyz of shape (P, 3), got {points_xyz.shape}")
    if obs_point.shape != obs_image.shape:
        raise ValueError(f"observation arrays differ in length: {obs_point.shape} vs {obs_image.shape}")
    sorted_check = np.sort(image_ids)
    if num_views > 1 and np.any(sorted_check[1:] == sorted_check[:-1]):
        raise ValueError("image_ids contains duplicates")
    if obs_point.size and (obs_point.min() < 0 or obs_point.max() >= points_xyz.shape[0]):
        raise ValueError(f"observation_points out of range [0, {points_xyz.shape[0]})")
    if obs_image.size and (obs_image.min() < 0 or obs_image.max() >= num_views):
        raise ValueError(f"observation_images out of range [0, {num_views})")
    if options.num_sources < 0:
        raise ValueError(f"num_sources must be >= 0, got {options.num_sources}")

    # Views ranked by image id, so that results (ties included) do not depend on input order.
    order = np.argsort(image_ids, kind="stable")
    rank_of_row = np.empty(num_views, dtype=np.int64)
    rank_of_row[order] = np.arange(num_views)
    sorted_ids = image_ids[order]
    sorted_centers = centers[order]

    # Unique (point, view) observations, sorted by point then view. Tracks usually arrive grouped
    # by point already (then no sort at all); a sort-based unique is much faster here than
    # np.unique's hashing.
    keys = obs_point * num_views + rank_of_row[obs_image]
    if keys.size > 1 and not np.all(keys[1:] >= keys[:-1]):
        keys = np.sort(keys)
    if keys.size > 1:
        keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])]
    obs_point, obs_view = keys // max(num_views, 1), keys % max(num_views, 1)
    rays = points_xyz[obs_point] - sorted_centers[obs_view]
    rays /= np.maximum(np.linalg.norm(rays, axis=1, keepdims=True), 1e-300)

    # Position of each observation within its track, and how many follow it.
    new_track = np.ones(keys.size, dtype=bool)
    new_track[1:] = obs_point[1:] != obs_point[:-1]
    track_start = np.flatnonzero(new_track)
    track_length = np.diff(np.append(track_start, keys.size))
    following = np.repeat(track_start + track_length, track_length) - np.arange(keys.size) - 1

    dense = num_views * num_views <= _DENSE_LIMIT
    upper = np.zeros(num_views * num_views if dense else 0)
    sparse_parts: list[tuple[np.ndarray, np.ndarray]] = []
    candidates = np.flatnonzero(following >= 1)
    shared_obs = np.zeros(keys.size, dtype=bool)
    offset = 1
    while candidates.size:
        first, second = candidates, candidates + offset
        cosine = np.einsum("ij,ij->i", rays[first], rays[second])
        # arccos near 1 costs ~1e-8 rad of precision, far below what G can tell apart.
        weight = angle_weight(np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0))), options)
        # Within a track views are sorted, so first < second: an upper-triangle index.
        pair = obs_view[first] * num_views + obs_view[second]
        if dense:
            upper += np.bincount(pair, weights=weight, minlength=upper.size)
        else:
            sparse_parts.append((pair, weight))
        shared_obs[first] = True
        shared_obs[second] = True
        offset += 1
        candidates = candidates[following[candidates] >= offset]
    shared = np.bincount(obs_view[shared_obs], minlength=num_views)

    if dense:
        pair_index = np.flatnonzero(upper)
        pair_score = upper[pair_index]
    elif sparse_parts:
        all_pairs = np.concatenate([p for p, _ in sparse_parts])
        all_weights = np.concatenate([w for _, w in sparse_parts])
        by_pair = np.argsort(all_pairs)
        all_pairs = all_pairs[by_pair]
        starts = np.flatnonzero(np.concatenate([[True], all_pairs[1:] != all_pairs[:-1]]))
        pair_index = all_pairs[starts]
        pair_score = np.add.reduceat(all_weights[by_pair], starts)
    else:
        pair_index, pair_score = np.zeros(0, np.int64), np.zeros(0)
    keep = pair_score > 0
    pair_index, pair_score = pair_index[keep], pair_score[keep]
    row, col = pair_index // max(num_views, 1), pair_index % max(num_views, 1)
    # Both directions, then best-first within each reference (ties: smaller image id first).
    ref = np.concatenate([row, col])
    src = np.concatenate([col, row])
    score = np.concatenate([pair_score, pair_score])
    by_ref = np.lexsort((src, -score, ref))
    ref, src, score = ref[by_ref], src[by_ref], score[by_ref]
    ref_start = np.searchsorted(ref, np.arange(num_views + 1))
    place = np.arange(ref.size) - ref_start[ref]  # 0 for the best source of each reference
    chosen = place < options.num_sources
    ref, src, score = ref[chosen], src[chosen], score[chosen]
    ref_start = np.searchsorted(ref, np.arange(num_views + 1))

    sources: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    num_shared: dict[int, int] = {}
    for r in range(num_views):  # in image-id order
        begin, end = ref_start[r], ref_start[r + 1]
        image_id = int(sorted_ids[r])
        sources[image_id] = (sorted_ids[src[begin:end]].astype(np.int64), score[begin:end].astype(np.float64))
        num_shared[image_id] = int(shared[r])
    lonely = [i for i, (ids, _) in sources.items() if ids.size == 0]
    if lonely:
        LOGGER.warning(
            "%d view(s) share no sparse point with any other view and get no source views: %s",
            len(lonely), lonely[:20],
        )
    return ViewSelection(sources=sources, num_shared=num_shared)


def tracks_from_model(images: Mapping, points3D: Mapping) -> tuple[np.ndarray, ...]:
    """Arrays for :func:`select_views` from COLMAP records (``pipeline.colmap`` Image / Point3D).

    Observations whose image is not in ``images`` are ignored.

    Returns:
        (image_ids (N,), centers (N, 3), point_ids (P,), points_xyz (P, 3),
        observation_points (M,), observation_images (M,)).
    """
    image_ids = np.array(sorted(images), dtype=np.int64)
    centers = np.array([images[i].projection_center() for i in image_ids]).reshape(-1, 3)
    point_ids = np.fromiter(points3D.keys(), dtype=np.int64, count=len(points3D))
    points = list(points3D.values())
    xyz = np.array([p.xyz for p in points], dtype=np.float64).reshape(-1, 3)
    lengths = np.fromiter((len(p.image_ids) for p in points), dtype=np.int64, count=len(points))
    track_images = (
        np.concatenate([np.asarray(p.image_ids, dtype=np.int64) for p in points]) if points else np.zeros(0, np.int64)
    )
    track_points = np.repeat(np.arange(len(points)), lengths)
    row = np.searchsorted(image_ids, track_images)
    row = np.minimum(row, max(image_ids.size - 1, 0))
    known = image_ids.size > 0
    known = (image_ids[row] == track_images) if known else np.zeros(track_images.size, bool)
    return image_ids, centers, point_ids, xyz, track_points[known], row[known]
