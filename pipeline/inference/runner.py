"""The loop over a scene's views: plan, warm-up, estimate (direct and mirrored), in-fill, write."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.config import InferConfig
from pipeline.formats.atomic import output_lock
from pipeline.formats.depth_file import DepthView, DepthWriter
from pipeline.formats.scene_file import Scene, cap_num_sources, read_scene, read_view, source_views
from pipeline.inference.cache import ViewCache
from pipeline.inference.estimate import estimate_view, fill_low_texture
from pipeline.inference.graph import GraphedForward
from pipeline.inference.memory import MAX_MMAP_THRESHOLD_KIB, set_mmap_threshold
from pipeline.inference.mirror import combine_mirrored
from pipeline.formats.paths import file_sha256
from pipeline.inference.resume import discard_foreign_partial, plane_fill_setting
from pipeline.model import CheckpointError, PatchmatchNet, load_checkpoint

log = logging.getLogger("selfmvs.infer")


def validate_config(config: InferConfig) -> None:
    """Raise ValueError naming the first ``infer`` setting out of its range."""
    if config.num_sources < 1:
        raise ValueError(f"infer: num_sources must be >= 1, got {config.num_sources}")
    if config.feature_cache is not None and config.feature_cache < 0:
        raise ValueError(f"infer: feature_cache must be >= 0 or None, got {config.feature_cache}")
    if not 0 <= config.mmap_threshold_kib <= MAX_MMAP_THRESHOLD_KIB:
        raise ValueError(
            f"infer: mmap_threshold_kib must be in [0, {MAX_MMAP_THRESHOLD_KIB}], got {config.mmap_threshold_kib}"
        )
    if config.max_size is not None and config.max_size < 16:
        raise ValueError(f"infer: max_size must be >= 16 or None, got {config.max_size}")
    if config.plane_fill.enabled and (config.plane_fill.window < 1 or config.plane_fill.window % 2 == 0):
        raise ValueError(f"infer: plane_fill.window must be odd and positive, got {config.plane_fill.window}")


def warm_up(model: PatchmatchNet, device: torch.device) -> float:
    """Run the network once on a small synthetic input (one source view); returns the seconds taken.

    The first call of each kernel in a process loads it (CPU: the native forwards of
    ``kernels._native``, built with the C++ compiler on a machine's first run in a few seconds, or
    without a compiler numba's kernels from its on-disk cache, compiled on the first run in ~30 s on
    a 2-core CPU; CUDA: loads or compiles the modules).
    Doing that here, before any real image is in memory, says what the pause is, keeps the one-off
    cost out of the per-view rate in the log (which reports it apart), and puts the compilers'
    long-lived allocations below the first view's large tensors (12 views at 640x480: peak RSS
    620-627 MB against 636-641 MB without).
    """
    started = time.perf_counter()
    height, width = 64, 80
    K = torch.tensor([[[64.0, 0.0, 40.0], [0.0, 64.0, 32.0], [0.0, 0.0, 1.0]]], device=device)
    shifted = torch.eye(4, device=device)[None].clone()
    shifted[0, 0, 3] = -0.1  # the source 0.1 to the side of the reference
    poses = [torch.eye(4, device=device)[None], shifted]
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(1, 3, height, width, generator=generator).to(device) for _ in range(2)]
    with torch.inference_mode():
        model(images, [K, K], poses, torch.tensor([1.0], device=device), torch.tensor([10.0], device=device))
    seconds = time.perf_counter() - started
    which = ""
    if device.type == "cpu":
        from kernels import _native

        which = f"; CPU forwards: {_native.status()}"
    log.info("kernels ready in %.1f s (a first run on this machine compiles them, later runs load them%s)", seconds, which)
    return seconds


def check_weights(model: PatchmatchNet, checkpoint: str | os.PathLike) -> None:
    """Raise ValueError naming ``checkpoint`` if a weight of the model is NaN or infinite."""
    bad = [name for name, value in model.state_dict().items()
           if value.is_floating_point() and not bool(torch.isfinite(value).all())]
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise ValueError(f"{checkpoint}: {len(bad)} weight tensor(s) hold NaN or infinite values ({shown})")


def check_scene(scene: Scene, scene_path: Path) -> None:
    """Raise ValueError naming the file and view whose K, pose or depth range is not usable."""
    for image_id, view in scene.views.items():
        where = f"{scene_path}: view {image_id} ({view.name})"
        if not np.isfinite(view.K).all():
            raise ValueError(f"{where}: K is not finite")
        if not np.isfinite(view.cam_from_world).all():
            raise ValueError(f"{where}: cam_from_world is not finite")
        near, far = (float(v) for v in view.depth_range)
        if not (np.isfinite(near) and np.isfinite(far) and 0 < near < far):
            raise ValueError(f"{where}: invalid depth_range [{near}, {far}]")


def check_estimate(estimate: DepthView, scene_path: Path, checkpoint: str | os.PathLike) -> None:
    """Raise ValueError naming the view if its depth or confidence is not finite (never write NaN maps)."""
    for what, values in (("depth", estimate.depth), ("confidence", estimate.confidence)):
        if values is None:
            continue
        bad = int(np.count_nonzero(~np.isfinite(values)))
        if bad:
            raise ValueError(
                f"{scene_path}: view {estimate.image_id} ({estimate.name}): the estimated {what} is not finite at "
                f"{bad} of {values.size} pixels (checkpoint {checkpoint})"
            )


def run_inference(
    scene_path: Path, checkpoint: str | os.PathLike, out_path: Path, config: InferConfig, device: torch.device
) -> Path:
    """Write ``out_path`` (depth.h5) with every view of ``scene_path`` that has a source view.

    ``out_path``'s lock is held for the whole run: a second writer of the same file is refused at once.
    Views already complete in an interrupted run's partial file are kept if that run had the same
    checkpoint and scene content and the same settings (:mod:`pipeline.inference.resume`). Views
    without any source view in the scene are left out (with a warning).
    """
    with output_lock(out_path):
        return _run_locked(scene_path, checkpoint, out_path, config, device)


def _run_locked(
    scene_path: Path, checkpoint: str | os.PathLike, out_path: Path, config: InferConfig, device: torch.device
) -> Path:
    if config.num_threads is not None:
        torch.set_num_threads(int(config.num_threads))
    if device.type == "cpu" and config.mmap_threshold_kib > 0:
        log.info("%s", set_mmap_threshold(config.mmap_threshold_kib))
    try:
        model, _ = load_checkpoint(checkpoint, strict=True, map_location=device, model_overrides=config.model)
    except CheckpointError as error:
        if not config.model:
            raise
        raise CheckpointError(f"infer.model {dict(config.model)} does not fit: {error}") from None
    model.eval()
    check_weights(model, checkpoint)
    scene = read_scene(scene_path, load_images=False)  # metadata only; images are read per view
    num_sources = cap_num_sources(config.num_sources, scene.num_sources, "infer.num_sources", scene_path)
    check_scene(scene, scene_path)
    attrs = {
        "kind": "selfmvs.depth",
        "checkpoint": str(checkpoint),
        "scene": str(scene_path),
        "num_sources": int(config.num_sources),
        "model_config": json.dumps(model.config.to_dict()),
        "flip_average": int(config.flip_average),
        "plane_fill": plane_fill_setting(config.plane_fill),
        "checkpoint_sha256": file_sha256(checkpoint),
        "scene_sha256": file_sha256(scene_path),
        "max_size": int(config.max_size or 0),  # 0: full size
        "mask_invalid": int(config.mask_invalid),
        "device": device.type,  # CPU and CUDA estimates differ in the last digits
    }
    resumable = discard_foreign_partial(out_path, attrs)
    from tqdm import tqdm

    started = time.perf_counter()
    computed = filled_pixels = total_pixels = 0
    with DepthWriter(out_path, attrs) as writer, torch.inference_mode():
        # The views to compute and their sources first: the cache then knows every future read.
        plan: list[tuple[int, list[int]]] = []
        for image_id, view in scene.views.items():
            if writer.has(image_id):
                continue
            source_ids = source_views(view, scene.views)
            source_ids = source_ids[:num_sources]
            if not source_ids:
                log.warning("%s: view %d (%s) has no source view; skipped", scene_path, image_id, view.name)
                continue
            plan.append((image_id, source_ids))
        if resumable:
            done = sum(writer.has(image_id) for image_id in scene.views)
            log.info("%s: resuming %d of %d views from the partial file (same checkpoint, scene and settings)",
                     out_path, done, len(scene.views))
        if plan:
            warm_up(model, device)
            started = time.perf_counter()  # the per-view rate below is that of the scene's views
        schedule = [i for image_id, source_ids in plan for i in (*source_ids, image_id)]
        capacity = num_sources + 1 if config.feature_cache is None else config.feature_cache
        caches = [ViewCache(model, scene_path, device, config.max_size, capacity, schedule=schedule)]
        if config.flip_average:
            caches.append(ViewCache(model, scene_path, device, config.max_size, capacity, schedule=schedule, mirror=True))
        # One graph per input shape, shared by the direct and the mirrored pass (same sizes); CPU: the model.
        forward = GraphedForward(model, config.cuda_graph)
        for image_id, source_ids in tqdm(plan, desc="infer", unit="view", disable=None):
            ref = read_view(scene_path, image_id)
            estimates = [estimate_view(forward, ref, [c.get(s) for s in source_ids], c, config.mask_invalid) for c in caches]
            estimate = estimates[0] if len(estimates) == 1 else combine_mirrored(*estimates)
            if config.plane_fill.enabled:
                estimate = fill_low_texture(estimate, ref, config.plane_fill)
                filled_pixels += int(estimate.filled.sum())
                total_pixels += estimate.filled.size
            check_estimate(estimate, scene_path, checkpoint)
            writer.write(estimate)
            computed += 1
            del ref, estimates
    elapsed = time.perf_counter() - started
    hits, reads = sum(c.hits for c in caches), sum(c.hits + c.misses for c in caches)
    graphs = ""
    if plan and forward.captures:
        graphs = f"; {forward.replays} forwards replayed from {forward.captures} CUDA graph(s)"
    log.info(
        "%s: %d views computed in %.1f s (%.2f s/view) on %s%s; %d of %d view reads from the cache%s",
        out_path, computed, elapsed, elapsed / max(computed, 1), device,
        ", each also mirrored" if config.flip_average else "", hits, reads, graphs,
    )
    if total_pixels:
        log.info("%s: %.1f %% of the computed pixels took a low-texture region's plane (infer.plane_fill)",
                 out_path, 100.0 * filled_pixels / total_pixels)
    return out_path
