"""Parallax between a view and its sources: whether stereo can tell depths apart at all.

Photos taken from one spot (a panorama, a tripod turned in place) have no triangulation angle:
every depth hypothesis reprojects to the same source pixel, so a depth network returns a constant
and fusion keeps nothing. The angle measured here is, for a reference view and one source, the
median over the sparse points the reference sees of the angle between the rays from the two camera
centres to the point (degrees); a view's parallax is that of its best source.
"""

from __future__ import annotations

import numpy as np

# COLMAP's mapper drops points triangulated under 1.5 degrees (filter_min_tri_angle); below
# 1 degree the depth hypotheses of a plane sweep hardly move in the source image.
MIN_TRIANGULATION_ANGLE_DEG = 1.0


def view_parallax(
    center: np.ndarray, source_centers: np.ndarray, points_xyz: np.ndarray
) -> float:
    """Largest median triangulation angle (degrees) of a view with any of its sources.

    Args:
        center: the reference camera centre, world frame.
        source_centers: the sources' camera centres, world frame.
        points_xyz: the sparse points the reference sees, world frame.

    Shape:
        center: (3,); source_centers: (S, 3); points_xyz: (P, 3).

    Returns:
        The angle, 0.0 when there is no source or no point.
    """
    source_centers = np.asarray(source_centers, dtype=np.float64).reshape(-1, 3)
    points_xyz = np.asarray(points_xyz, dtype=np.float64).reshape(-1, 3)
    if not len(source_centers) or not len(points_xyz):
        return 0.0
    ref_rays = _unit(np.asarray(center, dtype=np.float64)[None, :] - points_xyz)  # (P, 3)
    src_rays = _unit(source_centers[:, None, :] - points_xyz[None, :, :])  # (S, P, 3)
    cosine = np.clip(np.einsum("pk,spk->sp", ref_rays, src_rays), -1.0, 1.0)
    return float(np.max(np.median(np.degrees(np.arccos(cosine)), axis=1)))


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-300)


def parallax_per_view(
    image_ids: np.ndarray,
    centers: np.ndarray,
    points_xyz: np.ndarray,
    observation_points: np.ndarray,
    observation_images: np.ndarray,
    sources: dict[int, tuple[np.ndarray, np.ndarray]],
) -> dict[int, float]:
    """:func:`view_parallax` of every view, from the arrays of ``view_selection.tracks_from_model``.

    Shape:
        image_ids: (N,); centers: (N, 3); points_xyz: (P, 3); observation_*: (M,) rows into
        ``points_xyz`` and ``image_ids``.
    """
    image_ids = np.asarray(image_ids, dtype=np.int64)
    row_of = {int(i): k for k, i in enumerate(image_ids)}
    order = np.argsort(observation_images, kind="stable")
    bounds = np.searchsorted(np.asarray(observation_images)[order], np.arange(len(image_ids) + 1))
    angles = {}
    for row, image_id in enumerate(image_ids.tolist()):
        seen = points_xyz[np.asarray(observation_points)[order[bounds[row]:bounds[row + 1]]]]
        source_rows = [row_of[int(s)] for s in sources.get(image_id, (np.zeros(0, np.int64),))[0]]
        angles[image_id] = view_parallax(centers[row], centers[source_rows], seen)
    return angles


def check_parallax(angles: dict[int, float], names: dict[int, str], min_angle: float = MIN_TRIANGULATION_ANGLE_DEG) -> list[int]:
    """The views whose best source sees their points under less than ``min_angle`` degrees.

    Raises:
        ValueError: one view only, or no view with enough parallax (naming the views and angles).
    """
    if len(angles) == 1:
        (image_id,) = angles
        raise ValueError(
            f"only one registered image, {image_id} ({names[image_id]}): depth from stereo needs at "
            "least two views of the scene from different positions"
        )
    weak = [i for i, angle in angles.items() if not angle >= min_angle]
    if len(weak) == len(angles):
        listed = ", ".join(f"{i} ({names[i]}): {angles[i]:.2g} deg" for i in weak[:20])
        raise ValueError(
            f"no view has a source view with a triangulation angle of at least {min_angle:g} degrees "
            f"(photos taken from one position?); median angle to the best source: {listed}"
            + (f" and {len(weak) - 20} more" if len(weak) > 20 else "")
        )
    return weak
