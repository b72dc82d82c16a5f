"""The ``prepare`` stage: a COLMAP scene folder -> ``scene.h5``.

    selfmvs prepare SCENE_DIR OUT_SCENE_H5 [--config FILE]

For every registered image: undistort to a pinhole camera (COLMAP's image_undistorter rule),
resize to at most ``max_image_size`` with sides a multiple of ``size_multiple`` (intrinsics
adjusted exactly), pick source views by MVSNet's score, estimate the depth range from the sparse
points and suggest a number of depth hypotheses. Poses and 3-D points do not change; the 2-D
observations of the sparse points are mapped into the stored images (``points2D``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.config import PrepareConfig
from pipeline.formats.paths import check_outputs_distinct

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)


class PrepareError(ValueError):
    """A scene folder that cannot be prepared; the message names the file."""


def _load_image(path: Path, width: int, height: int) -> np.ndarray:
    from pipeline.formats.photo import PhotoError, read_photo

    try:
        image = read_photo(path)
    except (FileNotFoundError, PhotoError) as error:
        raise PrepareError(str(error)) from None
    if image.shape[:2] != (height, width):
        raise PrepareError(
            f"{path}: image is {image.shape[1]}x{image.shape[0]} pixels but its COLMAP camera says "
            f"{width}x{height}"
        )
    return image


def run_prepare(
    scene_dir: str | os.PathLike, out_path: str | os.PathLike, config: PrepareConfig = PrepareConfig()
) -> Path:
    """Prepare ``scene_dir`` (``images/`` + a COLMAP model) into ``out_path`` (scene.h5).

    Raises:
        FileNotFoundError: no COLMAP model in ``scene_dir``.
        PrepareError: a missing, unreadable or wrongly sized image, an unsupported camera, a view
            with no sparse point in front of it, one image only, or no parallax between the views
            (the message names the file or views).
    """
    # numpy, h5py and PIL are imported here, not at module level: ``selfmvs --help`` stays fast.
    import numpy as np

    from pipeline.colmap import read_model
    from pipeline.formats.scene_file import SceneView, SceneWriter
    from pipeline.scene.camera_plan import CameraPlans
    from pipeline.scene.depth_range import suggest_num_depth, view_depth_range
    from pipeline.scene.parallax import MIN_TRIANGULATION_ANGLE_DEG, check_parallax, parallax_per_view
    from pipeline.scene.summary import log_prepare_summary
    from pipeline.scene.view_selection import select_views, tracks_from_model

    started = time.perf_counter()
    scene_dir, out_path = Path(scene_dir), Path(out_path)
    check_outputs_distinct({"scene folder": scene_dir}, {"scene": out_path})
    cameras, images, points3D = read_model(scene_dir)
    if not images:
        raise PrepareError(f"{scene_dir}: the COLMAP model has no registered image")
    image_dir = scene_dir / config.images_dir

    image_ids, centers, point_ids, xyz, obs_points, obs_images = tracks_from_model(images, points3D)
    rgb = np.array([p.rgb for p in points3D.values()], dtype=np.uint8).reshape(-1, 3)
    selection = select_views(image_ids, centers, xyz, obs_points, obs_images, config)
    names = {int(i): images[int(i)].name for i in image_ids}
    try:
        weak = check_parallax(parallax_per_view(image_ids, centers, xyz, obs_points, obs_images, selection.sources), names)
    except ValueError as error:
        raise PrepareError(f"{scene_dir}: {error}") from None
    if weak:
        log.warning("%d view(s) see their points from no source under %g degrees or more (little parallax; their "
                    "depth will be poor): %s", len(weak), MIN_TRIANGULATION_ANGLE_DEG,
                    ", ".join(f"{i} ({names[i]})" for i in weak[:20]))
    plans = CameraPlans(cameras, config)
    point_order = np.argsort(point_ids, kind="stable")
    sorted_point_ids = point_ids[point_order]
    poses = {int(i): images[i].cam_from_world() for i in image_ids}

    attrs = {
        "created_by": "selfmvs prepare",
        "source": str(scene_dir.resolve()),
        "prepare_config": json.dumps(dataclasses.asdict(config)),
        "num_sources": config.num_sources,
    }
    fallbacks, written = [], []
    with SceneWriter(out_path, attrs) as writer:
        for image_id in map(int, image_ids):
            record = images[image_id]
            camera = cameras[record.camera_id]
            try:
                plan = plans[record.camera_id]
                # Sparse points this view observes (first observation of each), and where.
                observed = np.asarray(record.point3D_ids, dtype=np.int64) >= 0
                ids_seen, first = np.unique(np.asarray(record.point3D_ids)[observed], return_index=True)
                xys_seen = np.asarray(record.xys, dtype=np.float64).reshape(-1, 2)[observed][first]
                rows = point_order[np.searchsorted(sorted_point_ids, ids_seen)] if ids_seen.size else np.zeros(0, int)
                depth_range, fallback = view_depth_range(
                    poses[image_id], xyz[rows], xyz, config, view_name=f"{image_id} ({record.name})"
                )
            except ValueError as error:
                raise PrepareError(f"{scene_dir}: {error}") from None
            if fallback:
                fallbacks.append(image_id)
            source_ids, source_scores = selection.sources[image_id]
            best = poses[int(source_ids[0])] if source_ids.size else None
            view = SceneView(
                image_id=image_id, name=record.name,
                image=plan.image(_load_image(image_dir / record.name, camera.width, camera.height)),
                K=plan.K, cam_from_world=poses[image_id], depth_range=depth_range,
                num_depth=suggest_num_depth(plan.K, poses[image_id], best, depth_range, config),
                source_ids=source_ids, source_scores=source_scores, mask=plan.mask, point3D_ids=ids_seen,
                width=plan.resize.out_width, height=plan.resize.out_height, points2D=plan.points(xys_seen),
            )
            writer.write_view(view)
            written.append((view.width, view.height, depth_range, source_ids.size))  # not the image: memory
        writer.write_sparse(point_ids, xyz, rgb)
    log_prepare_summary(written, scene_dir, out_path, time.perf_counter() - started, point_ids.size, fallbacks)
    return out_path
