"""Training samples: a reference view and its best sources, cropped, resized and drawn reproducibly.

A sample is a reference view and its ``num_sources`` best-ranked sources: the reference is a random
crop (same aspect as the training size) resized to ``width x height``, the sources are resized
whole; intrinsics follow exactly (COLMAP pixel convention). Every random choice of a step comes from
the generator the caller passes (seeded by (seed, step, rank)), so a resumed run draws what an
uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.formats.scene_file import source_views
from pipeline.scene.mirror import mirror_intrinsics, mirror_pose

log = logging.getLogger("selfmvs.train")


@dataclasses.dataclass
class _ViewData:
    image: torch.Tensor  # (3, H, W) float32 in [0, 1]
    K: torch.Tensor  # (3, 3) float64
    cam_from_world: torch.Tensor  # (4, 4) float64
    depth_range: torch.Tensor  # (2,) float64
    mask: torch.Tensor | None  # (H, W) bool


class ViewSampler:
    """Training samples (reference + sources) drawn from prepared scenes, one batch per step.

    Args:
        scenes: ``pipeline.formats.scene_file.Scene`` objects with images loaded.
        num_sources: source views per sample; a view with fewer sources repeats its last ones.
        size: (height, width) of every sample, or None to keep the reference's stored size
            (cropped down to a multiple of 8) with sources resized to it (fine-tuning).
        crop_scale: (min, max) fraction of the largest crop (with the training aspect) kept.
        names: file names for messages.
        labels: per scene, None or image_id -> (H, W) float32 label depth at the view's stored size
            (0 = no label); when given, every sample also has a ``label`` cropped and resized
            (nearest) like its reference, zeros for a scene without labels.
        mirror_probability: chance that a sample is the left-right mirror image of the scene's
            (every image, the mask and the label flipped; K and poses as :mod:`pipeline.scene.mirror`).
            0 draws nothing, so the random stream of a run without mirroring is unchanged.
        view_masks: every sample also has ``view_masks``, the valid pixels of each of its views
            (the reference's cropped like its image, the sources' resized whole), for objectives
            that take every view as a reference (MVS^2's symmetric training). No random draw.
    """

    def __init__(self, scenes, num_sources: int, size: tuple[int, int] | None, crop_scale=(1.0, 1.0), names=None,
                 labels=None, mirror_probability: float = 0.0, view_masks: bool = False):
        if not 0.0 <= mirror_probability <= 1.0:
            raise ValueError(f"train.mirror_probability: expected a value in [0, 1], got {mirror_probability}")
        self.mirror_probability = float(mirror_probability)
        self.view_masks = bool(view_masks)
        self.num_sources = num_sources
        self.labels = None
        self.set_labels(labels, len(scenes))
        self.size = size
        self.crop_scale = tuple(float(c) for c in crop_scale)
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"train.crop_scale: expected 0 < min <= max <= 1, got {list(crop_scale)}")
        self.views: list[dict[int, _ViewData]] = []
        self.items: list[tuple[int, int, list[int]]] = []
        names = list(names or [f"scene {i}" for i in range(len(scenes))])
        short = 0
        for index, scene in enumerate(scenes):
            views = {}
            for image_id, view in scene.views.items():
                if view.image is None:
                    raise ValueError(f"{names[index]}: view {image_id} has no image loaded")
                image = torch.from_numpy(np.ascontiguousarray(view.image)).permute(2, 0, 1).float().div_(255.0)
                pose = torch.eye(4, dtype=torch.float64)
                pose[:3] = torch.from_numpy(np.asarray(view.cam_from_world, dtype=np.float64))
                mask = None if view.mask is None else torch.from_numpy(np.asarray(view.mask, dtype=bool))
                views[image_id] = _ViewData(
                    image, torch.from_numpy(np.asarray(view.K, dtype=np.float64)), pose,
                    torch.from_numpy(np.asarray(view.depth_range, dtype=np.float64)), mask,
                )
            self.views.append(views)
            for image_id, view in scene.views.items():
                sources = source_views(view, views)
                if not sources:
                    continue
                if len(sources) < num_sources:
                    short += 1
                    sources = sources + [sources[-1]] * (num_sources - len(sources))
                self.items.append((index, image_id, sources[:num_sources]))
        if not self.items:
            raise ValueError(f"{', '.join(map(str, names))}: no view with at least one source view to train on")
        if short:
            log.info("%d reference views have fewer than %d sources; their last source is repeated", short, num_sources)

    def set_labels(self, labels, num_scenes: int | None = None) -> None:
        """Per scene None or image_id -> (H, W) label depth (see the class); None: no labels."""
        num_scenes = len(self.views) if num_scenes is None else num_scenes
        self.labels = list(labels) if labels is not None else None
        if self.labels is not None and len(self.labels) != num_scenes:
            raise ValueError(f"labels: one entry per scene expected, got {len(self.labels)} for {num_scenes} scenes")

    def __len__(self) -> int:
        return len(self.items)

    def reference_megapixels(self) -> float:
        """Mean size of a sample's reference image, in megapixels (what one step's work scales with)."""
        if self.size is not None:
            return self.size[0] * self.size[1] / 1e6
        sizes = [self.views[scene][ref].image.shape[1:] for scene, ref, _ in self.items]
        return sum((h // 8) * 8 * ((w // 8) * 8) for h, w in sizes) / len(sizes) / 1e6

    def item_indices(self, step: int, batch_size: int, rank: int, world_size: int, seed: int) -> list[int]:
        """Items of one step: epochs are seeded permutations, split over the processes."""
        indices = []
        count = len(self.items)
        for b in range(batch_size):
            position = (step * world_size + rank) * batch_size + b
            epoch, offset = divmod(position, count)
            order = torch.randperm(count, generator=torch.Generator().manual_seed(mix_seed(seed, epoch, 0x5EED)))
            indices.append(int(order[offset]))
        return indices

    def sample(self, item: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """One sample: ``images`` (V, 3, H, W), ``K`` (V, 3, 3), ``cam_from_world`` (V, 4, 4),
        ``depth_range`` (V, 2), ``mask`` (1, H, W) bool, with labels also ``label`` (1, H, W), with
        ``view_masks`` also ``view_masks`` (V, 1, H, W) bool (``view_masks[0]`` is ``mask``)."""
        scene_index, ref_id, sources = self.items[item]
        views = self.views[scene_index]
        ref = views[ref_id]
        ref_h, ref_w = ref.image.shape[1:]
        if self.size is None:
            height, width = (ref_h // 8) * 8, (ref_w // 8) * 8
            if height < 8 or width < 8:
                raise ValueError(f"view {ref_id}: image {ref_h}x{ref_w} is smaller than 8x8")
            top, left, crop_h, crop_w = 0, 0, height, width
        else:
            height, width = self.size
            aspect = width / height
            full_h, full_w = (ref_h, ref_h * aspect) if ref_w / ref_h > aspect else (ref_w / aspect, ref_w)
            scale = float(torch.empty((), dtype=torch.float64).uniform_(*self.crop_scale, generator=generator))
            crop_h = max(1, min(ref_h, round(full_h * scale)))
            crop_w = max(1, min(ref_w, round(full_w * scale)))
            top = int(torch.randint(0, ref_h - crop_h + 1, (), generator=generator))
            left = int(torch.randint(0, ref_w - crop_w + 1, (), generator=generator))
        images, Ks, poses, ranges = [], [], [], []
        ref_image = ref.image[:, top : top + crop_h, left : left + crop_w]
        K = ref.K.clone()
        K[0, 2] -= left
        K[1, 2] -= top
        images.append(_resize(ref_image, height, width))
        Ks.append(_scale_K(K, width / crop_w, height / crop_h))
        poses.append(ref.cam_from_world)
        ranges.append(ref.depth_range)
        if ref.mask is None:
            mask = torch.ones(1, height, width, dtype=torch.bool)
        else:
            cropped = ref.mask[top : top + crop_h, left : left + crop_w].float()[None]
            mask = _resize(cropped, height, width) > 0.999
        masks = [mask]
        for source_id in sources:
            source = views[source_id]
            src_h, src_w = source.image.shape[1:]
            images.append(_resize(source.image, height, width))
            if self.view_masks:
                masks.append(torch.ones(1, height, width, dtype=torch.bool) if source.mask is None
                             else _resize(source.mask.float()[None], height, width) > 0.999)
            Ks.append(_scale_K(source.K, width / src_w, height / src_h))
            poses.append(source.cam_from_world)
            ranges.append(source.depth_range)
        sample = {
            "images": torch.stack(images),
            "K": torch.stack(Ks),
            "cam_from_world": torch.stack(poses),
            "depth_range": torch.stack(ranges),
            "mask": mask,
        }
        if self.view_masks:
            sample["view_masks"] = torch.stack(masks)
        if self.labels is not None:
            scene_labels = self.labels[scene_index]
            if scene_labels is None:
                sample["label"] = torch.zeros(1, height, width)
            else:
                cropped = scene_labels[ref_id][top : top + crop_h, left : left + crop_w][None, None]
                sample["label"] = F.interpolate(cropped, size=(height, width), mode="nearest")[0]
        if self.mirror_probability > 0 and float(torch.rand((), generator=generator)) < self.mirror_probability:
            sample = _mirrored(sample)
        return sample

    def batch(self, step: int, batch_size: int, rank: int, world_size: int, seed: int, generator: torch.Generator):
        samples = [self.sample(i, generator) for i in self.item_indices(step, batch_size, rank, world_size, seed)]
        return {key: torch.stack([s[key] for s in samples]) for key in samples[0]}


def _mirrored(sample: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The sample's left-right mirror image: a consistent scene whose depth is the original's, flipped."""
    width = sample["images"].shape[-1]
    flipped = {key: sample[key].flip(-1) for key in ("images", "mask", "label", "view_masks") if key in sample}
    flipped["K"] = torch.stack([torch.from_numpy(mirror_intrinsics(K.numpy(), width)) for K in sample["K"]]).to(sample["K"].dtype)
    flipped["cam_from_world"] = torch.stack(
        [torch.from_numpy(mirror_pose(T.numpy())) for T in sample["cam_from_world"]]
    ).to(sample["cam_from_world"].dtype)
    return {**sample, **flipped}


def _resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if tuple(image.shape[-2:]) == (height, width):
        return image
    # align_corners=False samples at pixel centres: K scales exactly by the size ratio.
    antialias = height < image.shape[-2] or width < image.shape[-1]
    return F.interpolate(image[None], size=(height, width), mode="bilinear", align_corners=False, antialias=antialias)[0]


def _scale_K(K: torch.Tensor, scale_x: float, scale_y: float) -> torch.Tensor:
    return K * K.new_tensor([[scale_x], [scale_y], [1.0]])


def mix_seed(*values: int) -> int:
    """A 63-bit seed from several integers (splitmix64-style), stable across runs and processes."""
    state = 0x9E3779B97F4A7C15
    for value in values:
        state = (state ^ (int(value) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        state ^= state >> 31
    return state & 0x7FFFFFFFFFFFFFFF
