"""Prepared views and their feature pyramids, kept while they serve as sources (:class:`ViewCache`)."""

from __future__ import annotations

import collections
import dataclasses
import os

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.formats.scene_file import SceneView, read_view
from pipeline.model import PatchmatchNet
from pipeline.scene.mirror import mirror_intrinsics, mirror_pose


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
