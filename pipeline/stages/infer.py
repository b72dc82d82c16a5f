"""``selfmvs infer SCENE_H5 CHECKPOINT OUT_DEPTH_H5``: a depth and a confidence map per view.

Views are processed one at a time and only the reference and its sources are read from the scene
file, so memory stays bounded whatever the scene's size. With ``infer.flip_average`` each view is
estimated twice, the second time on the left-right mirrored scene (every image flipped, the cameras
reflected with them), and the two maps are combined (:func:`combine_mirrored`). With
``infer.plane_fill`` each low-texture region whose surroundings are one plane then takes that plane's
depth (:mod:`pipeline.scene.planar_fill`; the view's ``filled`` mask says where). The output is
written view by view through :class:`pipeline.formats.depth_file.DepthWriter`: an interrupted run
resumes where it stopped.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import dataclasses
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import InferConfig, PlaneFillConfig, load_config, parse_assignments, section
from pipeline.formats.depth_file import DepthView, DepthWriter
from pipeline.formats.scene_file import SceneView, cap_num_sources, read_scene, read_view
from pipeline.model import CheckpointError, PatchmatchNet, load_checkpoint
from pipeline.scene.mirror import mirror_intrinsics, mirror_pose

log = logging.getLogger("selfmvs.infer")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available (queried now, at run time), else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("infer: device 'cuda' asked for but CUDA is not available (use 'auto' or 'cpu')")
        return torch.device("cuda")
    raise ValueError(f"infer: device must be auto, cpu or cuda, got {name!r}")


def _resized_size(height: int, width: int, max_size: int | None) -> tuple[int, int]:
    if max_size is None or max(height, width) <= max_size:
        return height, width
    scale = max_size / max(height, width)
    return max(2, round(height * scale)), max(2, round(width * scale))


def prepare_view(
    view: SceneView, max_size: int | None, device: torch.device, mirror: bool = False
) -> tuple[torch.Tensor, np.ndarray]:
    """The view's image as a (1, 3, h, w) float tensor in [0, 1] and K (3, 3) at that resolution.

    The image is downscaled (area-averaged) when its longest side exceeds ``max_size``; K is scaled
    per axis by the exact ratio of the sizes (pixel centres at j + 0.5 make that exact). ``mirror``:
    the image flipped left-right and K with it (:func:`pipeline.scene.mirror.mirror_intrinsics`).
    """
    if view.image is None:
        raise ValueError(f"infer: view {view.image_id} ({view.name}) has no image loaded")
    image = torch.from_numpy(np.ascontiguousarray(view.image)).to(device)
    # unsqueeze before permute: a (1, 3, h, w) view with channels-last strides (batch stride h*w*3)
    image = image.unsqueeze(0).permute(0, 3, 1, 2).float().div_(255.0)
    height, width = view.height, view.width
    new_h, new_w = _resized_size(height, width, max_size)
    K = view.K.copy()
    if (new_h, new_w) != (height, width):
        image = F.interpolate(image, size=(new_h, new_w), mode="area")
        K[0] *= new_w / width
        K[1] *= new_h / height
    if mirror:
        image = image.flip(3).contiguous(memory_format=torch.channels_last)
        K = mirror_intrinsics(K, new_w)
    return image, K


@dataclasses.dataclass
class PreparedView:
    """A view as the network takes it.

    Shape:
        image: (1, 3, h, w), the image's size only (a zero-stride placeholder without pixels: with
            the features given the network reads nothing else of a source image, and the reference's
            pixels are prepared from its SceneView; 3.7 MB less per cached 640x480 view);
        K: (3, 3) numpy at (h, w); intrinsics: (1, 3, 3); cam_from_world: (1, 4, 4);
        features: stage -> (1, C, ...).
    """

    image_id: int
    image: torch.Tensor
    K: np.ndarray
    intrinsics: torch.Tensor
    cam_from_world: torch.Tensor
    features: dict[int, torch.Tensor] | None


class ViewCache:
    """Prepared views with their features, at most ``capacity`` of them kept in memory.

    A view serves as the source of several references (and as a reference once): its image is read
    and its features computed once while it stays in the cache. ``capacity`` 0 disables caching.
    Which view leaves a full cache: with ``schedule`` (the ids in the order :meth:`get` will be
    called) the one needed again furthest in the future, or never (Belady's optimal policy: on a
    12-view 640x480 scene with 4 sources and capacity 6 it computes 16 instead of 23 feature
    pyramids); without it, the least recently used. ``mirror``: the views of the left-right mirrored
    scene (images flipped; :mod:`pipeline.scene.mirror`).
    """

    def __init__(
        self,
        model: PatchmatchNet,
        scene_path: str | os.PathLike,
        device: torch.device,
        max_size: int | None = None,
        capacity: int = 6,
        schedule: list[int] | None = None,
        mirror: bool = False,
    ) -> None:
        self.model, self.scene_path, self.device = model, scene_path, device
        self.mirror = mirror
        self.max_size, self.capacity = max_size, capacity
        self._views: collections.OrderedDict[int, PreparedView] = collections.OrderedDict()
        self.hits = self.misses = 0
        self._calls = 0
        self._uses: dict[int, collections.deque[int]] | None = None
        if schedule is not None:
            self._uses = collections.defaultdict(collections.deque)
            for position, image_id in enumerate(schedule):
                self._uses[int(image_id)].append(position)

    def _next_use(self, image_id: int) -> float:
        """Position of the next scheduled call for ``image_id`` (inf: none)."""
        uses = self._uses.get(image_id) if self._uses is not None else None
        while uses and uses[0] < self._calls:
            uses.popleft()
        return uses[0] if uses else float("inf")

    def _evict(self) -> None:
        while len(self._views) > self.capacity:
            if self._uses is None:
                self._views.popitem(last=False)
            else:
                # max() keeps the first of equals, i.e. the least recently used among them
                victim = max(self._views, key=self._next_use)
                del self._views[victim]

    def get(self, image_id: int, view: SceneView | None = None) -> PreparedView:
        """The prepared view ``image_id`` (``view``: its SceneView with the image, if already read)."""
        image_id = int(image_id)
        self._calls += 1
        if image_id in self._views:
            self.hits += 1
            self._views.move_to_end(image_id)
            return self._views[image_id]
        self.misses += 1
        if view is None or view.image is None:
            view = read_view(self.scene_path, image_id)
        image, K = prepare_view(view, self.max_size, self.device, self.mirror)
        pose = mirror_pose(view.cam_from_world_4x4) if self.mirror else view.cam_from_world_4x4
        prepared = PreparedView(
            image_id=image_id,
            image=image,
            K=K,
            intrinsics=torch.from_numpy(K).float().unsqueeze(0).to(self.device),
            cam_from_world=torch.from_numpy(pose).float().unsqueeze(0).to(self.device),
            features=self.model.extract_features(image),
        )
        prepared.image = image.new_zeros(()).expand(image.shape)
        del image
        if self.capacity > 0:
            self._views[image_id] = prepared
            self._evict()
        return prepared


def estimate_view(
    model: PatchmatchNet,
    ref: SceneView,
    sources: list[PreparedView],
    cache: ViewCache,
    mask_invalid: bool = True,
) -> DepthView:
    """Run the network on one reference view (read with its image and mask) and its sources.

    With a mirroring ``cache`` (and sources from it) the network sees the mirrored scene; its maps
    are flipped back, so the result is in the view's own frame either way.

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
    output = model(
        [ref_image, *(v.image for v in views[1:])],
        [v.intrinsics for v in views],
        [v.cam_from_world for v in views],
        torch.tensor([near], dtype=torch.float32, device=device),
        torch.tensor([far], dtype=torch.float32, device=device),
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


#: two estimates closer than this (relative to the nearer) are averaged by :func:`combine_mirrored`
MIRROR_AGREEMENT = 0.02


def combine_mirrored(direct: DepthView, mirrored: DepthView, agreement: float = MIRROR_AGREEMENT) -> DepthView:
    """One map from a view's estimates on the scene and on its mirror image (both in the view's frame).

    Where the two depths agree within ``agreement`` (relative to the nearer) their mean, with the mean
    confidence; elsewhere the more confident estimate (the direct one on ties). The network's errors
    on the two inputs are partly independent (its learned offsets and patterns are not symmetric),
    so the mean is more precise where both are right, and the confidence picks one where they differ.
    Measured on four held-out synthetic scenes (bench/README.md, session 17): agreement 0.5 / 1 / 2 /
    3 / 5 % and "always the mean" gave 83.28 / 83.48 / 83.60 / 83.56 / 83.43 / 83.07 % of pixels within
    1 % (one pass: 82.84).
    """
    if direct.depth.shape != mirrored.depth.shape:
        raise ValueError(
            f"combine_mirrored: view {direct.image_id}: maps of shape {direct.depth.shape} and {mirrored.depth.shape}"
        )
    a, b = direct.depth, mirrored.depth
    agree = (a > 0) & (b > 0) & (np.abs(a - b) < agreement * np.minimum(a, b))
    first = direct.confidence >= mirrored.confidence
    depth = np.where(agree, 0.5 * (a + b), np.where(first, a, b))
    confidence = np.where(
        agree, 0.5 * (direct.confidence + mirrored.confidence), np.where(first, direct.confidence, mirrored.confidence)
    )
    return dataclasses.replace(direct, depth=depth.astype(np.float32), confidence=confidence.astype(np.float32))


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


#: glibc's ceiling of M_MMAP_THRESHOLD on 64-bit systems (HEAP_MAX_SIZE / 2)
MAX_MMAP_THRESHOLD_KIB = 32 * 1024


def set_mmap_threshold(kib: int) -> str:
    """Let glibc serve allocations of at least ``kib`` KiB from pages of their own (process-wide).

    By default glibc raises this threshold to the size of every large block freed, so after the
    first view the tensors of a forward come from the heap, and the holes the freed ones leave
    count as resident (on a 640x480 run with 4 sources ~60 MB of the peak; bench/README.md,
    session 13). A fixed threshold returns each large tensor's pages when it is freed: peak RSS
    follows the live tensors, for the cost of faulting fresh pages in (~0.1 s, a third more time,
    per 640x480 view on 2 cores).

    Returns:
        a line for the log: what was set, or why nothing was (not glibc, mallopt refused).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return f"mmap threshold {kib} KiB not set: this C library has no mallopt"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    M_MMAP_THRESHOLD = -3  # glibc's malloc.h
    if mallopt(M_MMAP_THRESHOLD, int(kib) * 1024) != 1:
        return f"mmap threshold {kib} KiB not set: mallopt refused it"
    return f"mmap threshold {kib} KiB (malloc serves larger blocks from their own pages)"


def run_infer(
    scene_path: str | os.PathLike,
    checkpoint: str | os.PathLike,
    out_path: str | os.PathLike,
    config: InferConfig | None = None,
) -> Path:
    """Write ``out_path`` (depth.h5) with every view of ``scene_path`` that has a source view.

    Views already complete in an interrupted run's partial file are skipped. Views without any
    source view in the scene are left out (with a warning).
    """
    config = config if config is not None else InferConfig()
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
    scene_path, out_path = Path(scene_path), Path(out_path)
    if not scene_path.is_file():
        raise FileNotFoundError(f"{scene_path}: scene file not found")
    device = resolve_device(config.device)
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
    scene = read_scene(scene_path, load_images=False)  # metadata only; images are read per view
    num_sources = cap_num_sources(config.num_sources, scene.num_sources, "infer.num_sources", scene_path)
    attrs = {
        "kind": "selfmvs.depth",
        "checkpoint": str(checkpoint),
        "scene": str(scene_path),
        "num_sources": int(config.num_sources),
        "model_config": json.dumps(model.config.to_dict()),
        "flip_average": int(config.flip_average),
        "plane_fill": plane_fill_setting(config.plane_fill),
    }
    _discard_foreign_partial(out_path, attrs)
    from tqdm import tqdm

    started = time.perf_counter()
    computed = filled_pixels = total_pixels = 0
    with DepthWriter(out_path, attrs) as writer, torch.inference_mode():
        # The views to compute and their sources first: the cache then knows every future read.
        plan: list[tuple[int, list[int]]] = []
        for image_id, view in scene.views.items():
            if writer.has(image_id):
                continue
            source_ids = [int(s) for s in view.source_ids if int(s) in scene.views and int(s) != image_id]
            source_ids = source_ids[:num_sources]
            if not source_ids:
                log.warning("%s: view %d (%s) has no source view; skipped", scene_path, image_id, view.name)
                continue
            plan.append((image_id, source_ids))
        if plan:
            warm_up(model, device)
            started = time.perf_counter()  # the per-view rate below is that of the scene's views
        schedule = [i for image_id, source_ids in plan for i in (*source_ids, image_id)]
        capacity = num_sources + 1 if config.feature_cache is None else config.feature_cache
        caches = [ViewCache(model, scene_path, device, config.max_size, capacity, schedule=schedule)]
        if config.flip_average:
            caches.append(ViewCache(model, scene_path, device, config.max_size, capacity, schedule=schedule, mirror=True))
        for image_id, source_ids in tqdm(plan, desc="infer", unit="view", disable=None):
            ref = read_view(scene_path, image_id)
            estimates = [estimate_view(model, ref, [c.get(s) for s in source_ids], c, config.mask_invalid) for c in caches]
            estimate = estimates[0] if len(estimates) == 1 else combine_mirrored(*estimates)
            if config.plane_fill.enabled:
                estimate = fill_low_texture(estimate, ref, config.plane_fill)
                filled_pixels += int(estimate.filled.sum())
                total_pixels += estimate.filled.size
            writer.write(estimate)
            computed += 1
            del ref, estimates
    elapsed = time.perf_counter() - started
    hits, reads = sum(c.hits for c in caches), sum(c.hits + c.misses for c in caches)
    log.info(
        "%s: %d views computed in %.1f s (%.2f s/view) on %s%s; %d of %d view reads from the cache",
        out_path, computed, elapsed, elapsed / max(computed, 1), device,
        ", each also mirrored" if config.flip_average else "", hits, reads,
    )
    if total_pixels:
        log.info("%s: %.1f %% of the computed pixels took a low-texture region's plane (infer.plane_fill)",
                 out_path, 100.0 * filled_pixels / total_pixels)
    return out_path


#: The file attributes a partial depth.h5 must share with this run to be resumed, with the value a file
#: written before the attribute existed stands for (None: no default, such a file is never resumed).
_RESUME_SETTINGS = {
    "checkpoint": None, "scene": None, "num_sources": None, "model_config": None, "flip_average": 0, "plane_fill": "off",
}


def plane_fill_setting(config: PlaneFillConfig) -> str:
    """The ``plane_fill`` file attribute: the in-fill's thresholds as JSON, or ``"off"``."""
    if not config.enabled:
        return "off"
    return json.dumps({k: v for k, v in dataclasses.asdict(config).items() if k != "enabled"}, sort_keys=True)


def fill_low_texture(view: DepthView, ref: SceneView, config: PlaneFillConfig) -> DepthView:
    """``view`` with :func:`pipeline.scene.planar_fill.planar_fill` applied (RANSAC seeded by the image
    id, so a view's result does not depend on the order or the resumption of a run)."""
    from pipeline.scene.planar_fill import planar_fill  # scipy.ndimage only when filling

    if ref.image.shape[:2] != view.depth.shape:
        image = torch.from_numpy(np.ascontiguousarray(ref.image)).permute(2, 0, 1)[None].float()
        image = F.interpolate(image, size=view.depth.shape, mode="area")[0].permute(1, 2, 0).numpy() / 255.0
    else:
        image = ref.image
    result = planar_fill(view.depth, image, tuple(ref.depth_range), config, np.random.default_rng(view.image_id))
    return dataclasses.replace(view, depth=result.depth, filled=result.filled)


def _discard_foreign_partial(out_path: Path, attrs: dict) -> None:
    """Resume only a partial file of the same scene, checkpoint and settings; else start afresh."""
    partial = out_path.with_name(out_path.name + ".partial")
    if not partial.exists():
        return
    import h5py

    try:
        with h5py.File(partial, "r") as handle:
            previous = {key: handle.attrs.get(key, default) for key, default in _RESUME_SETTINGS.items()}
    except OSError:
        return  # unreadable: DepthWriter starts over by itself
    previous = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in previous.items()}
    if any(previous[key] != attrs[key] for key in previous):
        log.warning("%s: written by another run (%s); starting afresh", partial, previous)
        partial.unlink()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scene", type=Path, help="scene.h5 written by prepare")
    parser.add_argument("checkpoint", type=Path, help="network checkpoint written by train")
    parser.add_argument("out", type=Path, help="depth.h5 to write")
    parser.add_argument("--config", type=Path, default=None, help="YAML config; its 'infer' section is used")
    parser.add_argument("--num-sources", type=int, default=None, help="source views per reference (default 6; 4, PatchmatchNet's setting, is ~25 %% faster and ~2 points worse within 1 %%; see README)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None, help="default: auto")
    parser.add_argument("--max-size", type=int, default=None, help="longest image side the network sees")
    parser.add_argument(
        "--flip-average", action=argparse.BooleanOptionalAction, default=None,
        help="also estimate each view on the left-right mirrored scene and combine the two (default: on; measured "
        "+0.8 points within 1 %% on held-out scenes, -13 %% sparse error on DTU, for twice the time; "
        "--no-flip-average: one pass; config: infer.flip_average)",
    )
    parser.add_argument(
        "--plane-fill", action=argparse.BooleanOptionalAction, default=None,
        help="give each low-texture region whose textured surroundings are one plane that plane's depth (default: "
        "on; measured on held-out synthetic scenes 81.5 -> 88.3 and 77.5 -> 85.5 %% within 1 %% where a quarter of "
        "the pixels has no texture, unchanged elsewhere; depth.h5 marks the pixels; config: infer.plane_fill)",
    )
    parser.add_argument(
        "--model", action="append", default=[], metavar="KEY=VALUE",
        help="replace a model option of the checkpoint for this run (YAML value), e.g. iterations=[1,4,1]; "
        "the weights must still fit; repeatable (config: infer.model)",
    )


def main(args: argparse.Namespace) -> int:
    config = section(load_config(args.config), "infer", InferConfig)
    overrides = {
        name: value
        for name, value in (
            ("num_sources", args.num_sources),
            ("device", args.device),
            ("max_size", args.max_size),
            ("flip_average", args.flip_average),
        )
        if value is not None
    }
    if args.model:
        try:
            overrides["model"] = {**config.model, **parse_assignments(args.model)}
        except ValueError as error:
            raise SystemExit(f"infer --model: {error}") from None
    if args.plane_fill is not None:
        overrides["plane_fill"] = dataclasses.replace(config.plane_fill, enabled=args.plane_fill)
    config = dataclasses.replace(config, **overrides)
    run_infer(args.scene, args.checkpoint, args.out, config)
    return 0
