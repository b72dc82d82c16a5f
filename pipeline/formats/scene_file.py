"""``scene.h5``: the prepared scene (undistorted pinhole views, source views, depth ranges, sparse points).

Layout (docs/formats.md)::

    /                               attrs: format_version=1, kind="selfmvs.scene", units, num_sources,
                                    + writer's attrs
    /views                          attrs: image_ids (int64, file order)
    /views/<image_id>/image         uint8 (H, W, 3) RGB, undistorted pinhole image, one chunk, lzf
    /views/<image_id>/mask          bool (H, W), optional: pixels that saw the scene through the lens
    /views/<image_id>/source_ids    int64 (S,) best source views first
    /views/<image_id>/source_scores float64 (S,) view-selection score of each source
    /views/<image_id>/point3D_ids   int64 (P,) ids of the sparse points this view observes
    /views/<image_id>/points2D      float64 (P, 2), optional: their observed pixel positions (x, y)
        group attrs: image_id, name, width, height, K (3x3 pixels), cam_from_world (3x4),
                     depth_range ([near, far] z-depth), num_depth (suggested hypotheses)
    /sparse/ids                     int64 (N,)
    /sparse/xyz                     float64 (N, 3) world frame, scene units
    /sparse/rgb                     uint8 (N, 3)

``num_sources`` (int) is the length of the views' source lists: every view keeps its best
``num_sources`` source views (``prepare.num_sources``), fewer only where fewer views share sparse
points with it. A stage that asks for more sources per view gets at most this many
(:func:`cap_num_sources` says so in the log). Files written before the attribute existed: the
longest stored source list (:attr:`Scene.num_sources`).

Pixel convention (COLMAP's): the centre of pixel (row i, col j) is (x, y) = (j + 0.5, i + 0.5).
The file is written atomically: a temporary file beside the target, renamed when complete.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np

from pipeline.formats.atomic import atomic_path

FORMAT_VERSION = 1
KIND = "selfmvs.scene"
_FRAME_K = "pixels; centre of pixel (row i, col j) is (x, y) = (j + 0.5, i + 0.5)"
_FRAME_POSE = "cam_from_world [R | t]: world -> camera (x right, y down, z forward), scene units"
_RESERVED_ATTRS = ("format_version", "kind")

log = logging.getLogger(__name__)


class SceneFormatError(ValueError):
    """A scene file that does not follow the documented layout; names the file and the view."""


@dataclasses.dataclass
class SceneView:
    """One prepared (undistorted, pinhole) view.

    Shape:
        image: (H, W, 3) uint8 or None when not loaded; K: (3, 3) at the stored resolution;
        cam_from_world: (3, 4); depth_range: (2,) [near, far]; source_ids, source_scores: (S,);
        mask: (H, W) bool or None; point3D_ids: (P,); points2D: (P, 2) pixels or None.
    """

    image_id: int
    name: str
    image: np.ndarray | None
    K: np.ndarray
    cam_from_world: np.ndarray
    depth_range: np.ndarray
    num_depth: int
    source_ids: np.ndarray
    source_scores: np.ndarray
    mask: np.ndarray | None
    point3D_ids: np.ndarray
    width: int
    height: int
    points2D: np.ndarray | None = None

    def __post_init__(self) -> None:
        where = f"view {self.image_id}"
        self.image_id = int(self.image_id)
        self.width, self.height, self.num_depth = int(self.width), int(self.height), int(self.num_depth)
        self.K = np.asarray(self.K, dtype=np.float64)
        if self.K.shape != (3, 3):
            raise SceneFormatError(f"{where}: expected K of shape (3, 3), got {self.K.shape}")
        self.cam_from_world = np.asarray(self.cam_from_world, dtype=np.float64)
        if self.cam_from_world.shape == (4, 4):
            self.cam_from_world = self.cam_from_world[:3]
        if self.cam_from_world.shape != (3, 4):
            raise SceneFormatError(f"{where}: expected cam_from_world (3, 4), got {self.cam_from_world.shape}")
        self.depth_range = np.asarray(self.depth_range, dtype=np.float64).reshape(-1)
        if self.depth_range.shape != (2,):
            raise SceneFormatError(f"{where}: expected depth_range [near, far], got {self.depth_range}")
        self.source_ids = np.asarray(self.source_ids, dtype=np.int64).reshape(-1)
        self.source_scores = np.asarray(self.source_scores, dtype=np.float64).reshape(-1)
        if self.source_ids.shape != self.source_scores.shape:
            raise SceneFormatError(
                f"{where}: {self.source_ids.size} source ids but {self.source_scores.size} scores"
            )
        self.point3D_ids = np.asarray(self.point3D_ids, dtype=np.int64).reshape(-1)
        if self.image is not None:
            self.image = np.asarray(self.image)
            if self.image.shape != (self.height, self.width, 3) or self.image.dtype != np.uint8:
                raise SceneFormatError(
                    f"{where}: expected uint8 image ({self.height}, {self.width}, 3), "
                    f"got {self.image.dtype} {self.image.shape}"
                )
        if self.mask is not None:
            self.mask = np.asarray(self.mask, dtype=bool)
            if self.mask.shape != (self.height, self.width):
                raise SceneFormatError(
                    f"{where}: expected mask ({self.height}, {self.width}), got {self.mask.shape}"
                )
        if self.points2D is not None:
            self.points2D = np.asarray(self.points2D, dtype=np.float64)
            if self.points2D.shape != (self.point3D_ids.size, 2):
                raise SceneFormatError(
                    f"{where}: expected points2D ({self.point3D_ids.size}, 2), got {self.points2D.shape}"
                )

    @property
    def cam_from_world_4x4(self) -> np.ndarray:
        """The pose as a 4x4 matrix with last row (0, 0, 0, 1)."""
        return np.vstack([self.cam_from_world, [0.0, 0.0, 0.0, 1.0]])


@dataclasses.dataclass
class Scene:
    """A prepared scene: views in file order plus the sparse points.

    Shape:
        points3D_ids: (N,) int64; points3D_xyz: (N, 3) float64 world frame; points3D_rgb: (N, 3) uint8.
    """

    views: dict[int, SceneView]
    points3D_ids: np.ndarray
    points3D_xyz: np.ndarray
    points3D_rgb: np.ndarray
    attrs: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def num_sources(self) -> int:
        """The length of the views' source lists: the file's ``num_sources`` attribute, or, for files
        written without it, the longest stored list."""
        if "num_sources" in self.attrs:
            return int(self.attrs["num_sources"])
        return max((view.source_ids.size for view in self.views.values()), default=0)

    def __post_init__(self) -> None:
        self.points3D_ids = np.asarray(self.points3D_ids, dtype=np.int64).reshape(-1)
        self.points3D_xyz = np.asarray(self.points3D_xyz, dtype=np.float64).reshape(-1, 3)
        self.points3D_rgb = np.asarray(self.points3D_rgb, dtype=np.uint8).reshape(-1, 3)
        count = self.points3D_ids.size
        if self.points3D_xyz.shape[0] != count or self.points3D_rgb.shape[0] != count:
            raise SceneFormatError(
                f"sparse points: {count} ids, {self.points3D_xyz.shape[0]} xyz, "
                f"{self.points3D_rgb.shape[0]} rgb"
            )
        for key, view in self.views.items():
            if int(key) != view.image_id:
                raise SceneFormatError(f"views[{key}] holds view {view.image_id}")


# --------------------------------------------------------------------------------------------- write


def _dataset(group: h5py.Group, name: str, data: np.ndarray, description: str, **attrs) -> None:
    data = np.ascontiguousarray(data)
    # One chunk per array (i.e. per view); empty arrays cannot be chunked.
    options = {"chunks": data.shape, "compression": "lzf"} if data.size > 0 else {}
    dataset = group.create_dataset(name, data=data, **options)
    dataset.attrs["description"] = description
    for key, value in attrs.items():
        dataset.attrs[key] = value


def _write_view(views_group: h5py.Group, view: SceneView) -> None:
    group = views_group.create_group(str(view.image_id))
    group.attrs["image_id"] = view.image_id
    group.attrs["name"] = view.name
    group.attrs["width"] = view.width
    group.attrs["height"] = view.height
    group.attrs["K"] = view.K
    group.attrs["K_frame"] = _FRAME_K
    group.attrs["cam_from_world"] = view.cam_from_world
    group.attrs["cam_from_world_frame"] = _FRAME_POSE
    group.attrs["depth_range"] = view.depth_range
    group.attrs["depth_range_units"] = "scene units, z-depth along the optical axis: [near, far]"
    group.attrs["num_depth"] = view.num_depth
    group.attrs["num_depth_description"] = "suggested number of depth hypotheses (one-pixel parallax)"
    if view.image is not None:
        _dataset(group, "image", view.image, "undistorted pinhole image, RGB", units="uint8 0..255",
                 frame="row i, column j; pixel centre (j + 0.5, i + 0.5)")
    if view.mask is not None:
        _dataset(group, "mask", view.mask, "pixels that saw the scene through the original lens",
                 units="bool", frame="same pixels as image")
    _dataset(group, "source_ids", view.source_ids, "source views, best first", units="COLMAP image id")
    _dataset(group, "source_scores", view.source_scores, "view-selection score (MVSNet)",
             units="sum of Gaussian angle weights over shared sparse points")
    _dataset(group, "point3D_ids", view.point3D_ids, "sparse points observed by this view",
             units="COLMAP point3D id")
    if view.points2D is not None:
        _dataset(group, "points2D", view.points2D, "observed position of each point3D_ids entry",
                 units="pixels (x, y) at the stored resolution", frame=_FRAME_K)


class SceneWriter:
    """Write a scene file view by view (so that large scenes never sit in memory at once).

    The file appears under its final name only when the ``with`` block ends without an error::

        with SceneWriter(path, attrs) as writer:
            for view in views:
                writer.write_view(view)
            writer.write_sparse(ids, xyz, rgb)

    ``attrs["num_sources"]``, when given, is the length limit of the source lists (a longer list is an
    error); without it the file records the longest list written.

    Raises:
        SceneFormatError: a ``num_sources`` attribute that is not an integer >= 0.
    """

    def __init__(self, path: str | os.PathLike, attrs: Mapping[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.attrs = dict(attrs or {})
        self._num_sources: int | None = None
        if "num_sources" in self.attrs:
            value = self.attrs["num_sources"]
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
                raise SceneFormatError(f"{self.path}: num_sources must be an integer >= 0, got {value!r}")
            self._num_sources = int(value)
        self._longest = 0
        self._atomic = None
        self._handle: h5py.File | None = None
        self._ids: list[int] = []
        self._has_sparse = False

    def __enter__(self) -> "SceneWriter":
        self._atomic = atomic_path(self.path, suffix=".h5.tmp")
        tmp = self._atomic.__enter__()
        try:
            # mkstemp makes the file private (0600); give it the usual permissions of a new file.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            self._handle = h5py.File(tmp, "w")
            self._handle.attrs["format_version"] = FORMAT_VERSION
            self._handle.attrs["kind"] = KIND
            self._handle.attrs["units"] = "scene units of the COLMAP model"
            for key, value in self.attrs.items():
                if key not in _RESERVED_ATTRS:
                    self._handle.attrs[key] = value
            self._handle.create_group("views", track_order=True)
        except BaseException:
            self._close(*sys.exc_info())
            raise
        return self

    def write_view(self, view: SceneView) -> None:
        if view.image is None:
            raise SceneFormatError(f"{self.path}: view {view.image_id} has no image to write")
        if view.image_id in self._ids:
            raise SceneFormatError(f"{self.path}: view {view.image_id} written twice")
        if self._num_sources is not None and view.source_ids.size > self._num_sources:
            raise SceneFormatError(
                f"{self.path}: view {view.image_id} has {view.source_ids.size} source views, "
                f"more than num_sources={self._num_sources}"
            )
        _write_view(self._handle["views"], view)
        self._ids.append(view.image_id)
        self._longest = max(self._longest, int(view.source_ids.size))

    def write_sparse(self, ids: np.ndarray, xyz: np.ndarray, rgb: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
        rgb = np.asarray(rgb, dtype=np.uint8).reshape(-1, 3)
        if not ids.size == xyz.shape[0] == rgb.shape[0]:
            raise SceneFormatError(
                f"{self.path}: sparse points: {ids.size} ids, {xyz.shape[0]} xyz, {rgb.shape[0]} rgb"
            )
        sparse = self._handle.create_group("sparse")
        _dataset(sparse, "ids", ids, "sparse point ids", units="COLMAP point3D id")
        _dataset(sparse, "xyz", xyz, "sparse point positions", units="scene units", frame="world")
        _dataset(sparse, "rgb", rgb, "sparse point colours", units="uint8 0..255")
        self._has_sparse = True

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and not self._has_sparse:
            error = SceneFormatError(f"{self.path}: write_sparse was never called")
            self._close(type(error), error, None)
            raise error
        self._close(exc_type, exc, tb)

    def _close(self, exc_type, exc, tb) -> None:
        if self._handle is not None:
            if exc_type is None:
                self._handle["views"].attrs["image_ids"] = np.array(self._ids, dtype=np.int64)
                num_sources = self._longest if self._num_sources is None else self._num_sources
                self._handle.attrs["num_sources"] = np.int64(num_sources)
                self._handle.attrs["num_sources_description"] = (
                    "length of the views' source lists (prepare.num_sources); fewer where fewer views overlap"
                )
            self._handle.close()
            self._handle = None
        atomic, self._atomic = self._atomic, None
        if atomic is not None:
            if exc_type is None:
                atomic.__exit__(None, None, None)
            else:
                atomic.__exit__(exc_type, exc, tb)


def write_scene(path: str | os.PathLike, scene: Scene) -> None:
    """Write ``scene`` to ``path`` atomically (temporary file beside it, then rename).

    Views without an image (``image is None``) are an error: a scene file always holds its images.
    """
    path = Path(path)
    for view in scene.views.values():
        if view.image is None:
            raise SceneFormatError(f"{path}: view {view.image_id} has no image to write")
    with SceneWriter(path, scene.attrs) as writer:
        for view in scene.views.values():
            writer.write_view(view)
        writer.write_sparse(scene.points3D_ids, scene.points3D_xyz, scene.points3D_rgb)


# ---------------------------------------------------------------------------------------------- read


def _open(path: str | os.PathLike) -> h5py.File:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: scene file not found")
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise SceneFormatError(f"{path}: not an HDF5 file ({error})") from None
    kind = handle.attrs.get("kind")
    version = handle.attrs.get("format_version")
    problem = None
    if kind != KIND:
        problem = f"not a selfmvs scene file (kind={_plain(kind)!r}, expected {KIND!r})"
    elif version is None or int(version) != FORMAT_VERSION:
        problem = f"format_version {_plain(version)!r} not supported (expected {FORMAT_VERSION})"
    elif "views" not in handle or "sparse" not in handle:
        problem = "missing /views or /sparse group"
    if problem is not None:
        handle.close()
        raise SceneFormatError(f"{path}: {problem}")
    return handle


def _view_order(path: Path, views: h5py.Group) -> list[int]:
    if "image_ids" in views.attrs:
        order = [int(i) for i in views.attrs["image_ids"]]
    else:
        order = sorted(int(key) for key in views)
    missing = [i for i in order if str(i) not in views]
    if missing:
        raise SceneFormatError(f"{path}: views {missing[:10]} listed in /views but missing")
    return order


def _read_view(path: Path, views: h5py.Group, image_id: int, load_images: bool) -> SceneView:
    key = str(int(image_id))
    if key not in views:
        raise SceneFormatError(f"{path}: view {image_id} missing (have {list(views)[:10]}...)")
    group = views[key]
    try:
        attrs = group.attrs
        return SceneView(
            image_id=int(key),
            name=str(attrs["name"]),
            image=group["image"][()] if load_images else None,
            K=attrs["K"],
            cam_from_world=attrs["cam_from_world"],
            depth_range=attrs["depth_range"],
            num_depth=int(attrs["num_depth"]),
            source_ids=group["source_ids"][()],
            source_scores=group["source_scores"][()],
            mask=group["mask"][()] if (load_images and "mask" in group) else None,
            point3D_ids=group["point3D_ids"][()],
            width=int(attrs["width"]),
            height=int(attrs["height"]),
            points2D=group["points2D"][()] if "points2D" in group else None,
        )
    except KeyError as error:
        raise SceneFormatError(f"{path}: view {image_id}: missing {error}") from None
    except SceneFormatError as error:
        raise SceneFormatError(f"{path}: {error}") from None


def list_scene_views(path: str | os.PathLike) -> list[int]:
    """Image ids of the views stored in ``path``, in file order."""
    with _open(path) as handle:
        return _view_order(Path(path), handle["views"])


def read_view(path: str | os.PathLike, image_id: int, load_image: bool = True) -> SceneView:
    """One view (with its image and mask unless ``load_image`` is False).

    Raises:
        SceneFormatError: naming the file when the view is missing or malformed.
    """
    with _open(path) as handle:
        return _read_view(Path(path), handle["views"], image_id, load_image)


def read_scene(path: str | os.PathLike, load_images: bool = True) -> Scene:
    """The whole scene; with ``load_images=False`` views carry ``image=None`` and ``mask=None``."""
    path = Path(path)
    with _open(path) as handle:
        views = handle["views"]
        order = _view_order(path, views)
        scene_views = {i: _read_view(path, views, i, load_images) for i in order}
        sparse = handle["sparse"]
        try:
            ids, xyz, rgb = sparse["ids"][()], sparse["xyz"][()], sparse["rgb"][()]
        except KeyError as error:
            raise SceneFormatError(f"{path}: /sparse: missing {error}") from None
        attrs = {key: _plain(value) for key, value in handle.attrs.items()}
    try:
        return Scene(views=scene_views, points3D_ids=ids, points3D_xyz=xyz, points3D_rgb=rgb, attrs=attrs)
    except SceneFormatError as error:
        raise SceneFormatError(f"{path}: {error}") from None


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    return value


def scene_attrs(path: str | os.PathLike) -> Mapping[str, Any]:
    """The file attributes only (cheap: no view is read)."""
    with _open(path) as handle:
        return {key: _plain(value) for key, value in handle.attrs.items()}


def source_views(view: SceneView, view_ids) -> list[int]:
    """``view``'s source views (best first) that are other views among ``view_ids``: the views it is matched
    with. ``selfmvs infer`` leaves out a view without any, and ``selfmvs fuse`` and training skip it too."""
    return [int(s) for s in view.source_ids if int(s) in view_ids and int(s) != view.image_id]


def cap_num_sources(requested: int, stored: int, setting: str, where: Any) -> int:
    """``requested`` source views per view, capped at ``stored``, the scene's :attr:`Scene.num_sources`.

    A cap is logged (WARNING; call this once per run) naming both numbers, since the caller's setting
    then does not take effect.

    Args:
        requested: the stage's setting, e.g. ``infer.num_sources``.
        stored: the scene's ``num_sources`` (of several scenes: the smallest).
        setting: the setting's name, quoted in the log line.
        where: the scene file (or files), quoted in the log line.
    """
    if requested <= stored:
        return requested
    log.warning(
        "%s: %s is %d, but the scene stores at most %d source views per view (prepare.num_sources "
        "when it was prepared): using %d", where, setting, requested, stored, stored,
    )
    return stored


def same_pose(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two 3x4 (or 4x4) cam_from_world matrices are one camera, to the float32 round-off of our files.

    The one pose check of every stage that pairs files (fusion: depth.h5 against scene.h5; evaluation:
    against ground truth): rotation entries within 1e-5, translation within 1e-5 of its largest entry (1 at least).
    """
    a, b = np.asarray(a, dtype=np.float64)[:3, :4], np.asarray(b, dtype=np.float64)[:3, :4]
    scale = max(1.0, float(np.abs(a[:, 3]).max()))
    return bool(np.allclose(a[:, :3], b[:, :3], rtol=0.0, atol=1e-5)
                and np.allclose(a[:, 3], b[:, 3], rtol=0.0, atol=1e-5 * scale))
