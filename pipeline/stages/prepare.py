"""The ``prepare`` stage: a COLMAP scene folder -> ``scene.h5``.

    selfmvs prepare SCENE_DIR OUT_SCENE_H5 [--config FILE]

For every registered image: undistort to a pinhole camera (COLMAP's image_undistorter rule),
resize to at most ``max_image_size`` with sides a multiple of ``size_multiple`` (intrinsics
adjusted exactly), pick source views by MVSNet's score, estimate the depth range from the sparse
points and suggest a number of depth hypotheses. Poses and 3-D points do not change; the 2-D
observations of the sparse points are mapped into the stored images (``points2D``).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from pipeline.colmap import read_model
from pipeline.config import PrepareConfig, load_config, section
from pipeline.formats.scene_file import SceneView, SceneWriter
from pipeline.scene.depth_range import DepthRangeOptions, suggest_num_depth, view_depth_range
from pipeline.scene.resize import ResizePlan, plan_resize
from pipeline.scene.undistort import Undistorter, make_undistorter
from pipeline.scene.view_selection import select_views, tracks_from_model

log = logging.getLogger(__name__)
_MAX_CACHED_PLANS = 4


class PrepareError(ValueError):
    """A scene folder that cannot be prepared; the message names the file."""


@dataclasses.dataclass
class _CameraPlan:
    undistorter: Undistorter
    resize: ResizePlan
    K: np.ndarray  # final intrinsics
    mask: np.ndarray | None  # final validity mask, None when every pixel is valid


def _camera_plan(camera, config: PrepareConfig) -> _CameraPlan:
    # A photo bound for a much smaller size is downscaled before it is undistorted (exact, and
    # far cheaper than undistorting at full resolution).
    longest = max(camera.width, camera.height)
    scale = min(1.0, config.max_image_size / longest) if config.max_image_size > 0 else 1.0
    try:
        undistorter = make_undistorter(
            camera.model, camera.width, camera.height, camera.params, config.undistort_mode, scale=scale
        )
        resize = plan_resize(
            undistorter.width, undistorter.height, config.max_image_size, config.size_multiple, config.fit
        )
    except ValueError as error:
        raise PrepareError(f"camera {camera.id} ({camera.model} {camera.width}x{camera.height}): {error}") from None
    mask = None
    if undistorter.mask is not None:
        mask = resize.mask(undistorter.mask)
        if mask.all():
            mask = None
    return _CameraPlan(undistorter, resize, resize.K(undistorter.K), mask)


def _load_image(path: Path, width: int, height: int) -> np.ndarray:
    if not path.is_file():
        raise PrepareError(f"{path}: image not found")
    try:
        with PILImage.open(path) as handle:
            image = np.asarray(handle.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise PrepareError(f"{path}: cannot read the image ({error})") from None
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
        PrepareError: a missing, unreadable or wrongly sized image, an unsupported camera, or a
            view with no sparse point in front of it (the message names the file or view).
    """
    started = time.perf_counter()
    scene_dir, out_path = Path(scene_dir), Path(out_path)
    cameras, images, points3D = read_model(scene_dir)
    if not images:
        raise PrepareError(f"{scene_dir}: the COLMAP model has no registered image")
    image_dir = scene_dir / config.images_dir

    image_ids, centers, point_ids, xyz, obs_points, obs_images = tracks_from_model(images, points3D)
    rgb = np.array([p.rgb for p in points3D.values()], dtype=np.uint8).reshape(-1, 3)
    selection = select_views(image_ids, centers, xyz, obs_points, obs_images, config)
    depth_options = DepthRangeOptions(
        percentiles=tuple(config.depth_percentiles),
        stretch=tuple(config.depth_stretch),
        min_points=config.min_points,
        num_depth_min=config.num_depth_min,
        num_depth_max=config.num_depth_max,
    )
    # Sampling plans are large (~30 bytes per pixel): keep only the few most recent, which is all
    # of them for the usual one-or-few-camera scenes and bounded for one camera per image.
    plans: collections.OrderedDict[int, _CameraPlan] = collections.OrderedDict()

    def plan_of(camera_id: int) -> _CameraPlan:
        if camera_id in plans:
            plans.move_to_end(camera_id)
        else:
            plans[camera_id] = _camera_plan(cameras[camera_id], config)
            if len(plans) > _MAX_CACHED_PLANS:
                plans.popitem(last=False)
        return plans[camera_id]

    point_order = np.argsort(point_ids, kind="stable")
    sorted_point_ids = point_ids[point_order]
    poses = {int(i): images[i].cam_from_world() for i in image_ids}

    attrs = {
        "created_by": "selfmvs prepare",
        "source": str(scene_dir.resolve()),
        "prepare_config": json.dumps(dataclasses.asdict(config)),
        "num_sources": config.num_sources,
    }
    fallbacks: list[int] = []
    summary_near, summary_far, summary_sources, sizes = [], [], [], {}
    with SceneWriter(out_path, attrs) as writer:
        for image_id in image_ids:
            image_id = int(image_id)
            record = images[image_id]
            camera = cameras[record.camera_id]
            plan = plan_of(record.camera_id)
            # Sparse points this view observes (first observation of each), and where.
            observed = np.asarray(record.point3D_ids, dtype=np.int64) >= 0
            ids_seen, first = np.unique(np.asarray(record.point3D_ids)[observed], return_index=True)
            xys_seen = np.asarray(record.xys, dtype=np.float64).reshape(-1, 2)[observed][first]
            rows = point_order[np.searchsorted(sorted_point_ids, ids_seen)] if ids_seen.size else np.zeros(0, int)
            try:
                depth_range, fallback = view_depth_range(
                    poses[image_id], xyz[rows], xyz, depth_options, view_name=f"{image_id} ({record.name})"
                )
            except ValueError as error:
                raise PrepareError(f"{scene_dir}: {error}") from None
            if fallback:
                fallbacks.append(image_id)
            source_ids, source_scores = selection.sources[image_id]
            best = poses[int(source_ids[0])] if source_ids.size else None
            num_depth = suggest_num_depth(plan.K, poses[image_id], best, depth_range, depth_options)

            pixels = _load_image(image_dir / record.name, camera.width, camera.height)
            pixels = np.array(plan.resize.image(plan.undistorter.image(pixels)), order="C")  # writable copy
            if plan.mask is not None:
                pixels[~plan.mask] = 0  # resizing blends the blank border into its neighbours
            points2D = plan.resize.points(plan.undistorter.points(xys_seen))
            writer.write_view(
                SceneView(
                    image_id=image_id,
                    name=record.name,
                    image=pixels,
                    K=plan.K,
                    cam_from_world=poses[image_id],
                    depth_range=depth_range,
                    num_depth=num_depth,
                    source_ids=source_ids,
                    source_scores=source_scores,
                    mask=plan.mask,
                    point3D_ids=ids_seen,
                    width=plan.resize.out_width,
                    height=plan.resize.out_height,
                    points2D=points2D,
                )
            )
            summary_near.append(depth_range[0])
            summary_far.append(depth_range[1])
            summary_sources.append(source_ids.size)
            size = (plan.resize.out_width, plan.resize.out_height)
            sizes[size] = sizes.get(size, 0) + 1
        writer.write_sparse(point_ids, xyz, rgb)

    log.info(
        "prepared %d views of %s -> %s in %.1f s: sizes %s; %.1f sources per view on average "
        "(%d without any); depth ranges near %.4g..%.4g, far %.4g..%.4g; %d sparse points%s",
        len(image_ids), scene_dir, out_path, time.perf_counter() - started,
        ", ".join(f"{w}x{h} ({n})" for (w, h), n in sizes.items()),
        float(np.mean(summary_sources)), int(np.sum(np.asarray(summary_sources) == 0)),
        min(summary_near), max(summary_near), min(summary_far), max(summary_far), point_ids.size,
        f"; depth-range fallback for views {fallbacks}" if fallbacks else "",
    )
    return out_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scene_dir", type=Path, help="scene folder with images/ and a COLMAP model (sparse/)")
    parser.add_argument("out", type=Path, help="scene.h5 to write")
    parser.add_argument("--config", type=Path, default=None, help="YAML config; its 'prepare' section is used")
    parser.add_argument("--max-image-size", type=int, default=None, help="longest side, pixels (default 800)")


def main(args: argparse.Namespace) -> int:
    config = section(load_config(args.config), "prepare", PrepareConfig)
    if args.max_image_size is not None:
        config = dataclasses.replace(config, max_image_size=args.max_image_size)
    run_prepare(args.scene_dir, args.out, config)
    return 0
