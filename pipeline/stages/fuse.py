"""``selfmvs fuse SCENE_H5 DEPTH_H5 OUT_PLY``: depth maps -> one coloured point cloud.

Reads the cameras, source views and colours from ``scene.h5`` and the depth / confidence maps from
``depth.h5``; keeps the pixels that pass the photometric and geometric checks of
:mod:`pipeline.fusion` and writes their averaged points to ``fused.ply`` and the per-view masks of
kept pixels to ``fused_masks.h5`` beside it. Views are streamed: the memory held is that of one
reference, its sources and the points of one view (the cloud itself goes straight to disk).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from pathlib import Path

import h5py
import numpy as np

from pipeline.config import FuseConfig, load_config, section
from pipeline.formats.atomic import atomic_path
from pipeline.formats.depth_file import list_depth_views, read_depth_view
from pipeline.formats.ply import PlyStreamWriter
from pipeline.formats.scene_file import SceneView, cap_num_sources, list_scene_views, read_scene, read_view

log = logging.getLogger(__name__)

MASKS_KIND = "selfmvs.fused_masks"


class FuseInputError(ValueError):
    """Scene and depth files that cannot be fused together; names both files and the view."""


def default_masks_path(out_ply: str | os.PathLike) -> Path:
    """``fused.ply`` -> ``fused_masks.h5`` (same folder)."""
    out_ply = Path(out_ply)
    return out_ply.with_name(out_ply.stem + "_masks.h5")


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("fuse.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def _check_camera(scene_h5, depth_h5, scene_view: SceneView, depth_view) -> None:
    """The depth map must belong to the scene view: same pose, K equal up to the resolution."""
    where = f"{scene_h5} / {depth_h5}: view {scene_view.image_id}"
    height, width = depth_view.depth.shape
    if height == 0 or width == 0:
        raise FuseInputError(f"{where}: empty depth map {depth_view.depth.shape}")
    if (height, width) != (scene_view.height, scene_view.width):
        sx, sy = width / scene_view.width, height / scene_view.height
        scaled = scene_view.K * np.array([[sx], [sy], [1.0]])
        if not np.allclose(depth_view.K, scaled, rtol=1e-3, atol=1e-3):
            raise FuseInputError(
                f"{where}: depth map is {width}x{height} but the scene image is "
                f"{scene_view.width}x{scene_view.height}, and K does not scale between them"
            )
    pose = np.asarray(depth_view.cam_from_world)[:3, :4]
    scale = 1.0 + np.abs(scene_view.cam_from_world[:, 3]).max()
    if not (
        np.allclose(pose[:, :3], scene_view.cam_from_world[:, :3], atol=1e-4)
        and np.allclose(pose[:, 3], scene_view.cam_from_world[:, 3], atol=1e-4 * scale)
    ):
        raise FuseInputError(f"{where}: cam_from_world of depth.h5 and scene.h5 differ")


def _colours(image: np.ndarray, height: int, width: int) -> np.ndarray:
    if image.shape[:2] == (height, width):
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


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
        FuseInputError: a view of the scene missing in the depth file (or the reverse), a depth map
            whose size or camera does not match the scene, NaN / empty depth maps (naming the view).
    """
    start = time.perf_counter()
    scene_h5, depth_h5, out_ply = Path(scene_h5), Path(depth_h5), Path(out_ply)
    masks_path = Path(masks_path) if masks_path is not None else default_masks_path(out_ply)
    params = config  # fusion reads its thresholds from the fuse section itself
    device = resolve_device(config.device)
    with _torch_threads(config.num_threads):
        return _run_fuse(scene_h5, depth_h5, out_ply, config, masks_path, params, device, start)


@contextlib.contextmanager
def _torch_threads(num_threads: int):
    import torch

    previous = torch.get_num_threads()
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _run_fuse(scene_h5, depth_h5, out_ply, config, masks_path, params, device, start) -> dict:
    # torch is imported here, not at module level: ``selfmvs --help`` stays fast.
    from pipeline.fusion import FusionInputError, FusionView, fuse_views

    scene = read_scene(scene_h5, load_images=False)
    num_sources = cap_num_sources(params.num_sources, scene.num_sources, "fuse.num_sources", scene_h5)
    params = dataclasses.replace(params, num_sources=num_sources)
    view_ids = list_scene_views(scene_h5)
    depth_ids = set(list_depth_views(depth_h5))
    missing = [i for i in view_ids if i not in depth_ids]
    if missing:
        raise FuseInputError(f"{depth_h5}: view(s) {missing[:10]} of scene {scene_h5} missing")
    extra = sorted(depth_ids - set(view_ids))
    if extra:
        raise FuseInputError(f"{depth_h5}: view(s) {extra[:10]} are not in scene {scene_h5}")
    sizes: dict[int, tuple[int, int]] = {}

    def load_view(image_id: int) -> FusionView:
        depth_view = read_depth_view(depth_h5, image_id)
        _check_camera(scene_h5, depth_h5, scene.views[image_id], depth_view)
        sizes[image_id] = depth_view.depth.shape
        return FusionView(
            image_id=image_id,
            depth=depth_view.depth,
            K=depth_view.K,
            cam_from_world=depth_view.cam_from_world,
            confidence=depth_view.confidence,
        )

    def load_image(image_id: int) -> np.ndarray:
        height, width = sizes[image_id]
        return _colours(read_view(scene_h5, image_id).image, height, width)

    source_ids = {i: [int(s) for s in scene.views[i].source_ids] for i in view_ids}
    per_view = {}
    comments = [
        "selfmvs fused point cloud",
        f"scene {scene_h5.name} depth {depth_h5.name}",
        "fuse " + " ".join(f"{k}={v}" for k, v in dataclasses.asdict(config).items()),
    ]
    with atomic_path(masks_path, suffix=".h5") as tmp_masks, h5py.File(tmp_masks, "w") as masks:
        masks.attrs["format_version"] = 1
        masks.attrs["kind"] = MASKS_KIND
        masks.attrs["depth_file"] = str(depth_h5)
        for key, value in dataclasses.asdict(config).items():
            masks.attrs[f"fuse.{key}"] = value
        views_group = masks.create_group("views")
        with PlyStreamWriter(out_ply, with_color=True, with_normals=params.normals, comments=comments) as ply:
            try:
                for fused in fuse_views(view_ids, source_ids, load_view, params, device, load_image):
                    ply.append(fused.xyz, fused.rgb, fused.normals)
                    group = views_group.create_group(str(fused.image_id))
                    height, width = fused.mask.shape
                    data = group.create_dataset(
                        "mask", data=fused.mask.astype(np.uint8), chunks=(height, width), compression="lzf"
                    )
                    data.attrs["units"] = "1 = pixel kept by fusion, 0 = rejected or no depth"
                    data = group.create_dataset(
                        "num_consistent", data=fused.num_consistent, chunks=(height, width), compression="lzf"
                    )
                    data.attrs["units"] = "number of source views that agree (photometric pixels only)"
                    group.attrs["source_ids"] = np.asarray(fused.source_ids, dtype=np.int64)
                    group.attrs["num_points"] = len(fused.xyz)
                    group.attrs["num_photometric"] = fused.num_photometric
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
        masks.attrs["num_points"] = total
    if total == 0:
        log.warning("%s: no point survived fusion; wrote an empty point cloud", out_ply)
    seconds = time.perf_counter() - start
    log.info("fused %d views into %d points in %.1f s on %s -> %s", len(view_ids), total, seconds, device, out_ply)
    return {"num_points": total, "views": per_view, "seconds": seconds, "device": str(device)}


def add_arguments(parser) -> None:
    parser.add_argument("scene_h5", help="scene.h5 written by prepare")
    parser.add_argument("depth_h5", help="depth.h5 written by infer (or a gt/depth.h5)")
    parser.add_argument("out_ply", help="the fused point cloud to write")
    parser.add_argument("--masks", help="per-view masks of kept pixels (default: <out>_masks.h5 beside the PLY)")
    parser.add_argument("--config", help="YAML config; its 'fuse' section is used")


def main(args) -> int:
    config = section(load_config(args.config), "fuse", FuseConfig)
    run_fuse(args.scene_h5, args.depth_h5, args.out_ply, config, masks_path=args.masks)
    return 0
