"""``selfmvs fuse SCENE_H5 DEPTH_H5 OUT_PLY``: depth maps -> one coloured point cloud.

Reads the cameras, source views and colours from ``scene.h5`` and the depth / confidence maps from
``depth.h5``; keeps the pixels that pass the photometric and geometric checks of
:mod:`pipeline.fusion` and writes their averaged points to ``fused.ply`` and the per-view masks of
kept pixels to ``fused_masks.h5`` beside it. Views are streamed: the memory held is that of one
reference, its sources and the points of one view (the cloud itself goes straight to disk).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path

from pipeline.config import FuseConfig
from pipeline.formats.paths import check_outputs_distinct

log = logging.getLogger(__name__)


class FuseInputError(ValueError):
    """Scene and depth files that cannot be fused together; names both files and the view."""


def run_fuse(
    scene_h5: str | os.PathLike,
    depth_h5: str | os.PathLike,
    out_ply: str | os.PathLike,
    config: FuseConfig = FuseConfig(),
    masks_path: str | os.PathLike | None = None,
) -> dict:
    """Fuse all views of ``depth_h5`` into ``out_ply`` (and ``fused_masks.h5``).

    Returns:
        A summary: number of points, points and photometric pixels per view, seconds, device.

    Raises:
        FuseInputError: a view of the scene missing in the depth file (except a view without source
            views, which ``infer`` leaves out: fused without it, with a warning), or the reverse, a depth map
            whose size or camera does not match the scene, NaN / empty depth maps (naming the view).
    """
    # numpy, h5py and torch are imported here, not at module level: ``selfmvs --help`` stays fast.
    from pipeline.formats.fused_masks import default_masks_path
    from pipeline.fusion.stage_inputs import CameraMismatchError, torch_threads
    from pipeline.model.device import resolve_device

    start = time.perf_counter()
    scene_h5, depth_h5, out_ply = Path(scene_h5), Path(depth_h5), Path(out_ply)
    masks_path = Path(masks_path) if masks_path is not None else default_masks_path(out_ply)
    check_outputs_distinct({"scene": scene_h5, "depth": depth_h5}, {"cloud": out_ply, "masks": masks_path})
    params = config  # fusion reads its thresholds from the fuse section itself
    device = resolve_device(config.device, setting="fuse.device")
    with torch_threads(config.num_threads):
        try:
            return _run_fuse(scene_h5, depth_h5, out_ply, config, masks_path, params, device, start)
        except CameraMismatchError as error:
            raise FuseInputError(str(error)) from None


def _run_fuse(scene_h5, depth_h5, out_ply, config, masks_path, params, device, start) -> dict:
    import numpy as np

    from pipeline.formats.depth_file import list_depth_views, read_depth_view
    from pipeline.formats.fused_masks import FusedMaskView, fused_masks_writer
    from pipeline.formats.ply import PlyStreamWriter
    from pipeline.formats.scene_file import cap_num_sources, list_scene_views, read_scene, read_view, source_views
    from pipeline.fusion import FusionInputError, FusionView, fuse_views
    from pipeline.fusion.stage_inputs import check_camera, colours_at

    scene = read_scene(scene_h5, load_images=False)
    num_sources = cap_num_sources(params.num_sources, scene.num_sources, "fuse.num_sources", scene_h5)
    params = dataclasses.replace(params, num_sources=num_sources)
    view_ids = list_scene_views(scene_h5)
    depth_ids = set(list_depth_views(depth_h5))
    missing = [i for i in view_ids if i not in depth_ids]
    # selfmvs infer leaves out a view with no source view (nothing to match it with); fusion does too.
    sourceless = [i for i in missing if not source_views(scene.views[i], scene.views)]
    if len(sourceless) < len(missing):
        raise FuseInputError(
            f"{depth_h5}: view(s) {[i for i in missing if i not in sourceless][:10]} of scene {scene_h5} missing")
    if sourceless:
        log.warning("%s: view(s) %s have no source view and no depth map; left out", scene_h5, sourceless[:10])
        view_ids = [i for i in view_ids if i in depth_ids]
    extra = sorted(depth_ids - set(view_ids))
    if extra:
        raise FuseInputError(f"{depth_h5}: view(s) {extra[:10]} are not in scene {scene_h5}")
    sizes: dict[int, tuple[int, int]] = {}

    def load_view(image_id: int) -> FusionView:
        depth_view = read_depth_view(depth_h5, image_id)
        check_camera(scene_h5, depth_h5, scene.views[image_id], depth_view)
        sizes[image_id] = depth_view.depth.shape
        return FusionView(
            image_id=image_id,
            depth=depth_view.depth,
            K=depth_view.K,
            cam_from_world=depth_view.cam_from_world,
            confidence=depth_view.confidence,
            filled=depth_view.filled,
        )

    def load_image(image_id: int) -> np.ndarray:
        height, width = sizes[image_id]
        return colours_at(read_view(scene_h5, image_id).image, height, width)

    source_ids = {i: [int(s) for s in scene.views[i].source_ids if int(s) in depth_ids] for i in view_ids}
    per_view = {}
    comments = [
        "selfmvs fused point cloud",
        f"scene {scene_h5.name} depth {depth_h5.name}",
        "fuse " + " ".join(f"{k}={v}" for k, v in dataclasses.asdict(config).items()),
    ]
    settings = dataclasses.asdict(config)
    with fused_masks_writer(masks_path, depth_h5, settings) as masks:
        with PlyStreamWriter(out_ply, with_color=True, with_normals=params.normals, comments=comments) as ply:
            try:
                for fused in fuse_views(view_ids, source_ids, load_view, params, device, load_image):
                    ply.append(fused.xyz, fused.rgb, fused.normals)
                    masks.write(FusedMaskView(
                        fused.image_id, fused.mask, fused.num_consistent, fused.source_ids,
                        len(fused.xyz), fused.num_photometric,
                    ))
                    height, width = fused.mask.shape
                    per_view[fused.image_id] = {
                        "points": len(fused.xyz),
                        "photometric_pixels": fused.num_photometric,
                        "pixels": height * width,
                    }
                    log.info(
                        "view %d: %d of %d pixels pass the photometric check, %d kept",
                        fused.image_id, fused.num_photometric, height * width, len(fused.xyz),
                    )
            except FusionInputError as error:
                raise FuseInputError(f"{scene_h5} / {depth_h5}: {error}") from None
        total = ply.count
        masks.close(total)
    if total == 0:
        log.warning("%s: no point survived fusion; wrote an empty point cloud", out_ply)
    seconds = time.perf_counter() - start
    log.info("fused %d views into %d points in %.1f s on %s -> %s", len(view_ids), total, seconds, device, out_ply)
    return {"num_points": total, "views": per_view, "seconds": seconds, "device": str(device)}
