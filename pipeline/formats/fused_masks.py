"""``fused_masks.h5``: the pixels of each view that ``selfmvs fuse`` kept (beside ``fused.ply``).

Layout (docs/formats.md)::

    /                              attrs: format_version=1, kind="selfmvs.fused_masks", depth_file,
                                          fuse.<setting> (each fuse setting; "null" when unset), num_points
    /views/<image_id>/mask         uint8 (H, W): 1 = pixel kept by fusion, 0 = rejected or no depth
    /views/<image_id>/num_consistent   (H, W): source views that agree (photometric pixels only)
        group attrs: source_ids (int64), num_points, num_photometric

Maps are at the depth map's resolution, one chunk per map, lzf-compressed. The file is written
atomically (a temporary name renamed on success).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Iterator, Mapping

import h5py
import numpy as np

from pipeline.formats.atomic import atomic_path

FORMAT_VERSION = 1
KIND = "selfmvs.fused_masks"


class FusedMasksError(ValueError):
    """A fused-masks file that does not follow the documented layout; names the file."""


def default_masks_path(fused_ply: str | os.PathLike) -> Path:
    """``fused.ply`` -> ``fused_masks.h5`` (same folder)."""
    fused_ply = Path(fused_ply)
    return fused_ply.with_name(fused_ply.stem + "_masks.h5")


@dataclasses.dataclass
class FusedMaskView:
    """What fusion kept of one view.

    Shape:
        mask: (H, W) bool; num_consistent: (H, W) integer; source_ids: (S,) int64.
    """

    image_id: int
    mask: np.ndarray
    num_consistent: np.ndarray
    source_ids: np.ndarray
    num_points: int
    num_photometric: int


class FusedMasksWriter:
    """Writes the file view by view; :meth:`close` sets the total of points."""

    def __init__(self, handle: h5py.File) -> None:
        self._handle = handle
        self._views = handle.create_group("views")

    def write(self, view: FusedMaskView) -> None:
        group = self._views.create_group(str(int(view.image_id)))
        height, width = view.mask.shape
        data = group.create_dataset(
            "mask", data=np.asarray(view.mask).astype(np.uint8), chunks=(height, width), compression="lzf"
        )
        data.attrs["units"] = "1 = pixel kept by fusion, 0 = rejected or no depth"
        data = group.create_dataset(
            "num_consistent", data=view.num_consistent, chunks=(height, width), compression="lzf"
        )
        data.attrs["units"] = "number of source views that agree (photometric pixels only)"
        group.attrs["source_ids"] = np.asarray(view.source_ids, dtype=np.int64)
        group.attrs["num_points"] = int(view.num_points)
        group.attrs["num_photometric"] = int(view.num_photometric)

    def close(self, num_points: int) -> None:
        self._handle.attrs["num_points"] = int(num_points)


@contextlib.contextmanager
def fused_masks_writer(
    path: str | os.PathLike, depth_file: str | os.PathLike, fuse_settings: Mapping[str, object]
) -> Iterator[FusedMasksWriter]:
    """Open ``path`` for writing (atomically: nothing appears there unless the block succeeds)."""
    with atomic_path(path, suffix=".h5") as tmp, h5py.File(tmp, "w") as handle:
        handle.attrs["format_version"] = FORMAT_VERSION
        handle.attrs["kind"] = KIND
        handle.attrs["depth_file"] = str(depth_file)
        for key, value in fuse_settings.items():
            handle.attrs[f"fuse.{key}"] = "null" if value is None else value
        yield FusedMasksWriter(handle)


def read_fused_masks(path: str | os.PathLike) -> dict[int, np.ndarray]:
    """Every view's mask of kept pixels, keyed by image id.

    Shape:
        each mask (H, W) bool.

    Raises:
        FileNotFoundError: no file there.
        FusedMasksError: not HDF5, another kind or format version, or a view without its mask.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: fusion mask file not found")
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise FusedMasksError(f"{path}: not an HDF5 file ({error})") from None
    with handle:
        kind = handle.attrs.get("kind")
        if kind != KIND or "views" not in handle:
            raise FusedMasksError(f"{path}: not a fused_masks.h5 of selfmvs fuse (kind={kind!r})")
        version = handle.attrs.get("format_version")
        version = version.item() if isinstance(version, np.generic) else version
        if version != FORMAT_VERSION:
            raise FusedMasksError(
                f"{path}: format_version {version!r}; this selfmvs reads fused masks of version {FORMAT_VERSION}"
            )
        masks = {}
        for key, group in handle["views"].items():
            if not isinstance(group, h5py.Group) or "mask" not in group:
                raise FusedMasksError(f"{path}: view {key} has no mask")
            masks[int(key)] = group["mask"][()] > 0
        return masks
