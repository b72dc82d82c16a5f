"""One view's depth: the network on a reference and its sources, then the planar in-fill."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import PlaneFillConfig
from pipeline.formats.depth_file import DepthView
from pipeline.formats.scene_file import SceneView
from pipeline.inference.cache import PreparedView, ViewCache, prepare_view
from pipeline.inference.graph import GraphedForward
from pipeline.model import PatchmatchNet
from pipeline.scene.mirror import mirror_intrinsics


def estimate_view(
    model: PatchmatchNet | GraphedForward,
    ref: SceneView,
    sources: list[PreparedView],
    cache: ViewCache,
    mask_invalid: bool = True,
) -> DepthView:
    """Run the network on one reference view (read with its image and mask) and its sources.

    With a mirroring ``cache`` (and sources from it) the network sees the mirrored scene; its maps
    are flipped back, so the result is in the view's own frame either way. ``model``: the network,
    or its forward as a CUDA graph (:class:`pipeline.inference.graph.GraphedForward`).

    Returns:
        the reference's DepthView: depth and confidence (h, w) float32, K at that resolution.
    """
    near, far = (float(v) for v in ref.depth_range)
    if not (np.isfinite(near) and np.isfinite(far) and 0 < near < far):
        raise ValueError(
            f"{cache.scene_path}: view {ref.image_id} ({ref.name}): invalid depth_range [{near}, {far}]"
        )
    views = [cache.get(ref.image_id, ref), *sources]
    device = cache.device
    ref_image, _ = prepare_view(ref, cache.max_size, device, cache.mirror)  # the cached view keeps no pixels
    depth_range = torch.tensor([[near], [far]], dtype=torch.float32).to(device, non_blocking=True)
    output = model(
        [ref_image, *(v.image for v in views[1:])],
        [v.intrinsics for v in views],
        [v.cam_from_world for v in views],
        depth_range[0],
        depth_range[1],
        features=[v.features for v in views],
    )
    depth = output.depth[0, 0].float().cpu().numpy()
    confidence = output.confidence[0, 0].float().cpu().numpy()
    K = views[0].K
    if cache.mirror:
        depth, confidence = depth[:, ::-1], confidence[:, ::-1]
        K = mirror_intrinsics(K, depth.shape[1])
    if mask_invalid and ref.mask is not None:
        mask = torch.from_numpy(ref.mask).float()[None, None]
        mask = F.interpolate(mask, size=depth.shape, mode="nearest")[0, 0].numpy() > 0.5
        depth = np.where(mask, depth, 0.0)
        confidence = np.where(mask, confidence, 0.0)
    return DepthView(
        image_id=ref.image_id,
        name=ref.name,
        depth=np.ascontiguousarray(depth, dtype=np.float32),
        confidence=np.ascontiguousarray(confidence, dtype=np.float32),
        K=K,
        cam_from_world=ref.cam_from_world.copy(),
    )


def fill_low_texture(view: DepthView, ref: SceneView, config: PlaneFillConfig) -> DepthView:
    """``view`` with :func:`pipeline.scene.planar_fill.planar_fill` applied (RANSAC seeded by the image
    id, so a view's result does not depend on the order or the resumption of a run); with
    ``config.confident_within``, a filled pixel whose plane is further than that fraction from the
    network's depth gets confidence 0."""
    from pipeline.scene.planar_fill import planar_fill  # scipy.ndimage only when filling

    if ref.image.shape[:2] != view.depth.shape:
        image = torch.from_numpy(np.ascontiguousarray(ref.image)).permute(2, 0, 1)[None].float()
        image = F.interpolate(image, size=view.depth.shape, mode="area")[0].permute(1, 2, 0).numpy() / 255.0
    else:
        image = ref.image
    result = planar_fill(view.depth, image, tuple(ref.depth_range), config, np.random.default_rng(view.image_id))
    confidence = view.confidence
    if config.confident_within is not None and confidence is not None:
        far = np.abs(result.depth - view.depth) > config.confident_within * view.depth
        confidence = np.where(result.filled & far, np.float32(0.0), confidence)
    return dataclasses.replace(view, depth=result.depth, filled=result.filled, confidence=confidence)
