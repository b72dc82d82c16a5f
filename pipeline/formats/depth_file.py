"""``depth.h5``: per-view depth and confidence maps (also the layout of ``gt/depth.h5``).

Layout (docs/formats.md)::

    /                        attrs: format_version=1, kind ("selfmvs.depth" | "selfmvs.gt_depth" |
                                    "selfmvs.depth_labels"),
                                    units, plus whatever the writer adds (e.g. checkpoint)
    /views/<image_id>/depth       float32 (H, W) z-depth in scene units, 0 = no estimate
    /views/<image_id>/confidence  float32 (H, W) in [0, 1] (optional in gt/depth.h5)
    /views/<image_id>/filled      uint8 (H, W), optional: 1 where the depth is a low-texture region's
                                  plane (infer.plane_fill), not the network's estimate
        group attrs: name, K (3x3 pixels, at the map's resolution), cam_from_world (3x4)

Files are written atomically. :class:`DepthWriter` writes view by view into ``<path>.partial`` and
renames it to ``path`` when closed after success, so a long inference can be resumed: a rerun finds
the partial file and :meth:`DepthWriter.has` tells which views are already complete. The writer holds
``<path>.lock`` (:func:`pipeline.formats.atomic.output_lock`) while open: a second writer of the same
file is refused at once, and the rename moves only the partial file this writer opened.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Iterable, Mapping

import h5py
import numpy as np

from pipeline.formats.atomic import OutputLockedError, output_lock, replace_own

FORMAT_VERSION = 1
KINDS = ("selfmvs.depth", "selfmvs.gt_depth", "selfmvs.depth_labels")


class DepthFormatError(ValueError):
    """A depth file that does not follow the documented layout; names the file and the view."""


@dataclasses.dataclass
class DepthView:
    """One view's depth map.

    Shape:
        depth: (H, W) float32; confidence: (H, W) float32 or None; K: (3, 3); cam_from_world: (3, 4);
        filled: (H, W) bool or None (where the depth is a plane of :mod:`pipeline.scene.planar_fill`).
    """

    image_id: int
    name: str
    depth: np.ndarray
    confidence: np.ndarray | None
    K: np.ndarray
    cam_from_world: np.ndarray
    filled: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.depth = np.asarray(self.depth, dtype=np.float32)
        if self.depth.ndim != 2:
            raise DepthFormatError(f"view {self.image_id}: expected (H, W) depth, got {self.depth.shape}")
        if self.confidence is not None:
            self.confidence = np.asarray(self.confidence, dtype=np.float32)
            if self.confidence.shape != self.depth.shape:
                raise DepthFormatError(
                    f"view {self.image_id}: confidence {self.confidence.shape} != depth {self.depth.shape}"
                )
        if self.filled is not None:
            self.filled = np.asarray(self.filled, dtype=bool)
            if self.filled.shape != self.depth.shape:
                raise DepthFormatError(f"view {self.image_id}: filled {self.filled.shape} != depth {self.depth.shape}")
        self.K = np.asarray(self.K, dtype=np.float64).reshape(3, 3)
        self.cam_from_world = np.asarray(self.cam_from_world, dtype=np.float64)[:3, :4]
        if self.cam_from_world.shape != (3, 4):
            raise DepthFormatError(f"view {self.image_id}: cam_from_world must be 3x4")


def _write_view(views_group: h5py.Group, view: DepthView) -> None:
    key = str(int(view.image_id))
    if key in views_group:
        del views_group[key]
    group = views_group.create_group(key)
    height, width = view.depth.shape
    # Not compressed: lzf saved 4 % of a 640x480 view's depth + confidence (2310 vs 2406 KiB) and
    # cost 44 ms per view, 2.5 ms without (float32 network output barely compresses).
    data = group.create_dataset("depth", data=view.depth, chunks=(height, width))
    data.attrs["units"] = "scene units (z-depth along the optical axis); 0 = no estimate"
    if view.confidence is not None:
        conf = group.create_dataset(
            "confidence", data=view.confidence, chunks=(height, width)
        )
        conf.attrs["units"] = "probability in [0, 1]"
    if view.filled is not None:
        filled = group.create_dataset("filled", data=view.filled.astype(np.uint8), chunks=(height, width))
        filled.attrs["units"] = "1: the depth is a low-texture region's plane (infer.plane_fill), 0: the network's"
    group.attrs["name"] = view.name
    group.attrs["K"] = view.K
    group.attrs["cam_from_world"] = view.cam_from_world
    group.attrs["frame"] = "K: pixels, pixel centre (j + 0.5, i + 0.5); cam_from_world: COLMAP [R|t]"
    # Written last: a view is complete only once this attribute exists (resumable writes).
    group.attrs["complete"] = 1


def _write_file_attrs(handle: h5py.File, attrs: Mapping) -> None:
    handle.attrs["format_version"] = FORMAT_VERSION
    handle.attrs.setdefault("kind", "selfmvs.depth")
    handle.attrs.setdefault("units", "scene units of the COLMAP model")
    for key, value in attrs.items():
        handle.attrs[key] = value


class DepthWriter:
    """Write a depth file view by view; resumable; the final name appears only when complete.

    Example::

        with DepthWriter(path, {"checkpoint": "model.pt"}) as writer:
            for view_id in ids:
                if not writer.has(view_id):
                    writer.write(compute(view_id))
    """

    def __init__(self, path: str | os.PathLike, attrs: Mapping | None = None) -> None:
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.attrs = dict(attrs or {})
        self._handle: h5py.File | None = None
        self._lock = None
        self._identity: os.stat_result | None = None

    def __enter__(self) -> "DepthWriter":
        self._lock = output_lock(self.path)
        self._lock.__enter__()
        try:
            self._open()
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        return self

    def _open(self) -> None:
        try:
            self._handle = h5py.File(self.partial, "a")
        except OSError as error:
            if "lock" in str(error).lower():
                # HDF5's own lock: a process reading or writing the partial file outside our lock file
                raise OutputLockedError(f"{self.partial}: opened by another process ({error})") from None
            # A partial file broken by a hard kill: start over rather than fail.
            self.partial.unlink(missing_ok=True)
            self._handle = h5py.File(self.partial, "w")
        self._identity = os.stat(self.partial)
        _write_file_attrs(self._handle, self.attrs)
        self._handle.require_group("views")

    def has(self, image_id: int) -> bool:
        group = self._handle["views"].get(str(int(image_id)))
        return group is not None and "complete" in group.attrs

    def write(self, view: DepthView) -> None:
        _write_view(self._handle["views"], view)
        self._handle.flush()

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._handle.close()
            self._handle = None
            if exc_type is None:
                replace_own(self.partial, self.path, self._identity)
        finally:
            self._lock.__exit__(exc_type, exc, tb)
            self._lock = None


def write_depth_file(
    path: str | os.PathLike, views: Iterable[DepthView], attrs: Mapping | None = None
) -> None:
    """Write all ``views`` to ``path`` atomically (any previous partial file is discarded)."""
    path = Path(path)
    with output_lock(path):
        path.with_name(path.name + ".partial").unlink(missing_ok=True)
        with DepthWriter(path, attrs) as writer:
            for view in views:
                writer.write(view)


def _open(path: str | os.PathLike) -> h5py.File:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: depth file not found")
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise DepthFormatError(f"{path}: not an HDF5 file ({error})") from None
    kind = handle.attrs.get("kind")
    if isinstance(kind, bytes):
        kind = kind.decode(errors="replace")
    version = handle.attrs.get("format_version")
    problem = None
    if kind not in KINDS or "views" not in handle:
        problem = f"not a selfmvs depth file (kind={kind!r})"
    elif not _is_current_version(version):
        problem = (f"format_version {_plain(version)!r} not supported "
                   f"(this build of selfmvs reads depth files of format_version {FORMAT_VERSION})")
    if problem is not None:
        handle.close()
        raise DepthFormatError(f"{path}: {problem}")
    return handle


def _plain(value):
    """An attribute value as a plain Python value for messages."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    return value


def _is_current_version(version) -> bool:
    return isinstance(version, (int, np.integer)) and int(version) == FORMAT_VERSION


def _read_view(path: Path, views: h5py.Group, key: str) -> DepthView:
    group = views[key]
    try:
        depth = group["depth"][()]
        confidence = group["confidence"][()] if "confidence" in group else None
        filled = group["filled"][()].astype(bool) if "filled" in group else None
        return DepthView(
            image_id=int(key),
            name=str(group.attrs["name"]),
            depth=depth,
            confidence=confidence,
            K=group.attrs["K"],
            cam_from_world=group.attrs["cam_from_world"],
            filled=filled,
        )
    except (KeyError, ValueError) as error:
        raise DepthFormatError(f"{path}: view {key}: {error}") from None


def list_depth_views(path: str | os.PathLike) -> list[int]:
    """Image ids of the views stored in ``path``."""
    with _open(path) as handle:
        return [int(key) for key in handle["views"]]


def read_depth_view(path: str | os.PathLike, image_id: int) -> DepthView:
    """One view of a depth file. Raises DepthFormatError naming the file if the view is missing."""
    with _open(path) as handle:
        key = str(int(image_id))
        if key not in handle["views"]:
            raise DepthFormatError(f"{path}: view {image_id} missing")
        return _read_view(Path(path), handle["views"], key)


def read_depth_file(path: str | os.PathLike) -> dict[int, DepthView]:
    """All views of a depth file, keyed by image id."""
    with _open(path) as handle:
        return {int(key): _read_view(Path(path), handle["views"], key) for key in handle["views"]}


def read_depth_attrs(path: str | os.PathLike) -> dict:
    """The file attributes (format_version, kind, units, checkpoint, ...)."""
    with _open(path) as handle:
        return {key: handle.attrs[key] for key in handle.attrs}
