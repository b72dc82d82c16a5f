"""COLMAP sparse model I/O (text and binary), with COLMAP's own field names and byte layouts.

A model is three files in one folder: ``cameras``, ``images`` and ``points3D``, each ``.bin`` or
``.txt``. COLMAP 4.x adds ``rigs`` and ``frames`` files beside them; they describe multi-camera
rigs and are ignored: COLMAP 4.x still writes every registered image's own ``cam_from_world`` (rig
pose and sensor-from-rig composed) into ``images``, which is what we read.

Binary layout (all little-endian; ids as COLMAP's C++ types: ``camera_t`` and ``image_t`` are
uint32, ``point3D_t`` uint64, ``point2D_t`` uint32; an untriangulated keypoint stores point3D id
2**64 - 1, read here as ``-1``):

- ``cameras.bin``: uint64 count, then per camera uint32 camera_id, int32 model_id,
  uint64 width, uint64 height, float64 params[n] (n fixed by the model).
- ``images.bin``: uint64 count, then per image uint32 image_id, float64 qvec[4] (w, x, y, z),
  float64 tvec[3], uint32 camera_id, the name as bytes ending in NUL, uint64 num_points2D, then
  (float64 x, float64 y, int64 point3D_id) per keypoint.
- ``points3D.bin``: uint64 count, then per point uint64 point3D_id, float64 xyz[3], uint8 rgb[3],
  float64 error, uint64 track_length, then (uint32 image_id, uint32 point2D_idx) per observation.

Every reader error is a :class:`ColmapFormatError` that names the file and the byte offset
(binary) or the line number (text, counted from 1) where the problem was found. Counts are checked
against the bytes left before anything is allocated, so a corrupted count cannot ask for terabytes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import struct
from pathlib import Path
from typing import Iterable, Mapping, NamedTuple

import numpy as np

from pipeline.formats.atomic import atomic_path

__all__ = [
    "CAMERA_MODELS",
    "CAMERA_MODEL_IDS",
    "Camera",
    "CameraModel",
    "ColmapFormatError",
    "Image",
    "Point3D",
    "detect_model_ext",
    "find_model_dir",
    "qvec_to_rotmat",
    "read_cameras_binary",
    "read_cameras_text",
    "read_images_binary",
    "read_images_text",
    "read_model",
    "read_points3D_binary",
    "read_points3D_text",
    "rotmat_to_qvec",
    "write_model",
]


class ColmapFormatError(ValueError):
    """A COLMAP file that cannot be read; the message names the file and the byte offset or line."""


class CameraModel(NamedTuple):
    model_id: int
    model_name: str
    num_params: int


# Every camera model of COLMAP 4.2 (src/colmap/sensor/models.h), id -> parameter count; checked
# against pycolmap in tests/test_colmap.py.
CAMERA_MODELS: dict[str, CameraModel] = {
    m.model_name: m
    for m in (
        CameraModel(0, "SIMPLE_PINHOLE", 3),  # f, cx, cy
        CameraModel(1, "PINHOLE", 4),  # fx, fy, cx, cy
        CameraModel(2, "SIMPLE_RADIAL", 4),  # f, cx, cy, k
        CameraModel(3, "RADIAL", 5),  # f, cx, cy, k1, k2
        CameraModel(4, "OPENCV", 8),  # fx, fy, cx, cy, k1, k2, p1, p2
        CameraModel(5, "OPENCV_FISHEYE", 8),  # fx, fy, cx, cy, k1, k2, k3, k4
        CameraModel(6, "FULL_OPENCV", 12),  # fx, fy, cx, cy, k1, k2, p1, p2, k3, k4, k5, k6
        CameraModel(7, "FOV", 5),  # fx, fy, cx, cy, omega
        CameraModel(8, "SIMPLE_RADIAL_FISHEYE", 4),  # f, cx, cy, k
        CameraModel(9, "RADIAL_FISHEYE", 5),  # f, cx, cy, k1, k2
        CameraModel(10, "THIN_PRISM_FISHEYE", 12),  # fx, fy, cx, cy, k1, k2, p1, p2, k3, k4, sx1, sy1
        CameraModel(11, "RAD_TAN_THIN_PRISM_FISHEYE", 16),  # fx, fy, cx, cy, k0..k5, p0, p1, s0..s3
        CameraModel(12, "SIMPLE_DIVISION", 4),  # f, cx, cy, k
        CameraModel(13, "DIVISION", 5),  # fx, fy, cx, cy, k
        CameraModel(14, "SIMPLE_FISHEYE", 3),  # f, cx, cy
        CameraModel(15, "FISHEYE", 4),  # fx, fy, cx, cy
        CameraModel(16, "EUCM", 6),  # fx, fy, cx, cy, alpha, beta
        CameraModel(17, "EQUIRECTANGULAR", 2),  # w, h
    )
}
CAMERA_MODEL_IDS: dict[int, CameraModel] = {m.model_id: m for m in CAMERA_MODELS.values()}

# Models whose params start with one focal length f, then cx, cy.
_SINGLE_FOCAL = {"SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE",
                 "SIMPLE_DIVISION", "SIMPLE_FISHEYE"}


@dataclasses.dataclass
class Camera:
    id: int
    model: str  # e.g. "PINHOLE", "OPENCV"
    width: int
    height: int
    params: np.ndarray  # float64, length fixed by the model

    def calibration_matrix(self) -> np.ndarray:
        """The 3x3 pinhole part K of the model (focal lengths and principal point, pixels).

        Distortion parameters are not part of K. Raises ValueError for EQUIRECTANGULAR, which has
        no focal length.
        """
        p = np.asarray(self.params, dtype=np.float64)
        if self.model in _SINGLE_FOCAL:
            fx = fy = p[0]
            cx, cy = p[1], p[2]
        elif self.model in CAMERA_MODELS and self.model != "EQUIRECTANGULAR":
            fx, fy, cx, cy = p[:4]
        else:
            raise ValueError(f"camera {self.id}: model {self.model} has no pinhole calibration matrix")
        return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


@dataclasses.dataclass
class Image:
    id: int
    qvec: np.ndarray  # (4,) float64, w x y z, rotation cam_from_world
    tvec: np.ndarray  # (3,) float64, translation cam_from_world
    camera_id: int
    name: str
    xys: np.ndarray  # (N, 2) float64 keypoints in pixels
    point3D_ids: np.ndarray  # (N,) int64, -1 where not triangulated

    def cam_from_world(self) -> np.ndarray:
        """[R | t] mapping world points into this camera's frame.

        Shape:
            (3, 4) float64.
        """
        return np.concatenate([qvec_to_rotmat(self.qvec), np.asarray(self.tvec, np.float64)[:, None]], axis=1)

    def projection_center(self) -> np.ndarray:
        """The camera centre in world coordinates, -R^T t. Shape: (3,)."""
        return -qvec_to_rotmat(self.qvec).T @ np.asarray(self.tvec, np.float64)


@dataclasses.dataclass
class Point3D:
    id: int
    xyz: np.ndarray  # (3,) float64, world frame
    rgb: np.ndarray  # (3,) uint8
    error: float
    image_ids: np.ndarray  # (L,) int64
    point2D_idxs: np.ndarray  # (L,) int64


# --------------------------------------------------------------------------------------------------
# Rotations


def qvec_to_rotmat(qvec: np.ndarray) -> np.ndarray:
    """Rotation matrix of a quaternion (w, x, y, z), normalised first (Hamilton convention, as COLMAP).

    Shape:
        qvec (4,) -> (3, 3).
    """
    q = np.asarray(qvec, dtype=np.float64)
    if q.shape != (4,):
        raise ValueError(f"expected a (4,) quaternion (w, x, y, z), got shape {q.shape}")
    norm = np.linalg.norm(q)
    if not np.isfinite(norm) or norm < 1e-12:
        raise ValueError(f"quaternion {q.tolist()} has no direction (norm {norm})")
    w, x, y, z = q / norm
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def rotmat_to_qvec(R: np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z) with w >= 0 of a rotation matrix.

    Uses the eigenvector of the symmetric 4x4 matrix of Bar-Itzhack (2000), which is stable for
    every rotation and gives the nearest rotation's quaternion for a slightly non-orthogonal R.

    Shape:
        R (3, 3) -> (4,).
    """
    R = np.asarray(R, dtype=np.float64)
    if R.shape != (3, 3):
        raise ValueError(f"expected a (3, 3) rotation matrix, got shape {R.shape}")
    if not np.all(np.isfinite(R)):
        raise ValueError(f"rotation matrix has non-finite entries: {R.tolist()}")
    (r11, r12, r13), (r21, r22, r23), (r31, r32, r33) = R
    K = np.array(
        [
            [r11 - r22 - r33, 0.0, 0.0, 0.0],
            [r21 + r12, r22 - r11 - r33, 0.0, 0.0],
            [r31 + r13, r32 + r23, r33 - r11 - r22, 0.0],
            [r32 - r23, r13 - r31, r21 - r12, r11 + r22 + r33],
        ]
    ) / 3.0
    eigenvalues, eigenvectors = np.linalg.eigh(K, UPLO="L")
    x, y, z, w = eigenvectors[:, np.argmax(eigenvalues)]
    qvec = np.array([w, x, y, z])
    if qvec[0] < 0:
        qvec = -qvec
    return qvec / np.linalg.norm(qvec)


# --------------------------------------------------------------------------------------------------
# Finding a model


_KINDS = ("cameras", "images", "points3D")


def _has_model(folder: Path, ext: str) -> bool:
    return all((folder / f"{kind}{ext}").is_file() for kind in _KINDS)


def detect_model_ext(folder: str | os.PathLike) -> str:
    """``".bin"`` or ``".txt"``: the format of the complete model in ``folder`` (binary preferred).

    Raises:
        FileNotFoundError: ``folder`` holds no complete model (the message lists what it holds).
    """
    folder = Path(folder)
    for ext in (".bin", ".txt"):
        if _has_model(folder, ext):
            return ext
    present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    raise FileNotFoundError(
        f"{folder}: no complete COLMAP model (needs cameras, images and points3D, all .bin or all .txt); "
        f"found {present[:20] if present else 'nothing'}"
    )


def find_model_dir(scene_or_sparse_path: str | os.PathLike) -> Path:
    """The folder holding a COLMAP model, given a scene folder, its ``sparse/`` or ``sparse/0/``.

    Looks in the path itself, then ``sparse/``, ``sparse/0/`` and ``0/`` below it.

    Raises:
        FileNotFoundError: the path does not exist or none of those folders holds a complete model.
    """
    root = Path(scene_or_sparse_path)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such file or folder (expected a scene folder or a COLMAP model)")
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: is a file; expected a scene folder, sparse/ or sparse/0/")
    candidates = [root, root / "sparse", root / "sparse" / "0", root / "0"]
    for folder in candidates:
        if _has_model(folder, ".bin") or _has_model(folder, ".txt"):
            return folder
    looked = ", ".join(str(c) for c in candidates if c.is_dir())
    partial = sorted(p.name for c in candidates if c.is_dir() for p in c.iterdir() if p.stem in _KINDS)
    raise FileNotFoundError(
        f"{root}: no COLMAP model (cameras, images, points3D, all .bin or all .txt) in {looked}"
        + (f"; found only {partial}" if partial else "")
    )


# --------------------------------------------------------------------------------------------------
# Binary reading


class _BinaryReader:
    """A cursor over one file's bytes that names the file and offset in every error."""

    def __init__(self, path: Path):
        self.path = path
        self.buf = path.read_bytes()
        self.pos = 0

    @property
    def left(self) -> int:
        return len(self.buf) - self.pos

    def error(self, message: str, pos: int | None = None) -> ColmapFormatError:
        return ColmapFormatError(f"{self.path}: byte {self.pos if pos is None else pos}: {message}")

    def take(self, size: int, what: str) -> int:
        if size > self.left:
            raise self.error(f"file ends inside {what} (needs {size} bytes, {self.left} left)")
        start = self.pos
        self.pos += size
        return start

    def unpack(self, layout: struct.Struct, what: str) -> tuple:
        return layout.unpack_from(self.buf, self.take(layout.size, what))

    def count(self, record_size: int, what: str) -> int:
        """A uint64 count of records that are at least ``record_size`` bytes each, checked."""
        start = self.pos
        (n,) = self.unpack(_U64, f"the number of {what}")
        if n * record_size > self.left:
            raise self.error(
                f"{n} {what} need at least {n * record_size} bytes but only {self.left} are left "
                "(corrupted count or truncated file)",
                start,
            )
        return n

    def array(self, dtype: np.dtype, count: int, what: str) -> np.ndarray:
        size = count * dtype.itemsize
        start = self.take(size, what)
        return np.frombuffer(self.buf, dtype=dtype, count=count, offset=start)

    def cstring(self, what: str) -> str:
        end = self.buf.find(b"\0", self.pos)
        if end < 0:
            raise self.error(f"file ends inside {what} (no terminating NUL byte)")
        raw = self.buf[self.pos : end]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise self.error(f"{what} is not UTF-8: {raw[:80]!r} ({error.reason})") from None
        self.pos = end + 1
        return text

    def finish(self, what: str) -> None:
        if self.left:
            raise self.error(f"{self.left} unexpected bytes after the last of the {what} (corrupted count?)")


_U64 = struct.Struct("<Q")
_CAMERA_HEAD = struct.Struct("<IiQQ")
_IMAGE_HEAD = struct.Struct("<I4d3dI")
_POINT_HEAD = struct.Struct("<Q3d3BdQ")
_POINT2D = np.dtype([("xy", "<f8", (2,)), ("point3D_id", "<i8")])
_TRACK = np.dtype([("image_id", "<u4"), ("point2D_idx", "<u4")])
_MAX_SIDE = 1 << 31  # widths and heights above this are corruption, not cameras
_UINT32 = (1 << 32) - 1


def _check_camera(camera_id, width, height, params, fail) -> None:
    if not (0 < width < _MAX_SIDE and 0 < height < _MAX_SIDE):
        raise fail(f"camera {camera_id}: implausible size {width}x{height}")
    if not np.all(np.isfinite(params)):
        raise fail(f"camera {camera_id}: non-finite parameters {np.asarray(params).tolist()}")


def _check_pose(image_id, qvec, tvec, fail) -> None:
    if not (np.all(np.isfinite(qvec)) and np.all(np.isfinite(tvec))):
        raise fail(f"image {image_id}: non-finite pose qvec={np.asarray(qvec).tolist()} tvec={np.asarray(tvec).tolist()}")
    if np.linalg.norm(qvec) < 1e-12:
        raise fail(f"image {image_id}: zero quaternion")


def read_cameras_binary(path: str | os.PathLike) -> dict[int, Camera]:
    """``cameras.bin`` -> {camera_id: Camera} in file order (no cross-file checks; see read_model)."""
    reader = _BinaryReader(Path(path))
    cameras: dict[int, Camera] = {}
    for _ in range(reader.count(_CAMERA_HEAD.size, "cameras")):
        start = reader.pos
        camera_id, model_id, width, height = reader.unpack(_CAMERA_HEAD, "a camera record")
        model = CAMERA_MODEL_IDS.get(model_id)
        if model is None:
            raise reader.error(f"camera {camera_id}: unknown camera model id {model_id}", start)
        params = reader.array(np.dtype("<f8"), model.num_params, f"the {model.model_name} parameters of camera {camera_id}")
        _check_camera(camera_id, width, height, params, lambda m: reader.error(m, start))
        if camera_id in cameras:
            raise reader.error(f"camera id {camera_id} appears twice", start)
        cameras[camera_id] = Camera(camera_id, model.model_name, int(width), int(height), params.astype(np.float64))
    reader.finish("cameras")
    return cameras


def read_images_binary(path: str | os.PathLike) -> dict[int, Image]:
    """``images.bin`` -> {image_id: Image} in file order (no cross-file checks; see read_model)."""
    images, _ = _read_images_binary(Path(path))
    return images


def _read_images_binary(path: Path) -> tuple[dict[int, Image], dict[int, str]]:
    reader = _BinaryReader(path)
    images: dict[int, Image] = {}
    where: dict[int, str] = {}
    for _ in range(reader.count(_IMAGE_HEAD.size + 1 + 8, "images")):
        start = reader.pos
        image_id, qw, qx, qy, qz, tx, ty, tz, camera_id = reader.unpack(_IMAGE_HEAD, "an image record")
        name = reader.cstring(f"the name of image {image_id}")
        count_pos = reader.pos
        (num_points2D,) = reader.unpack(_U64, f"the keypoint count of image {image_id}")
        if num_points2D * _POINT2D.itemsize > reader.left:
            raise reader.error(
                f"image {image_id}: {num_points2D} keypoints need {num_points2D * _POINT2D.itemsize} bytes, "
                f"only {reader.left} left",
                count_pos,
            )
        records = reader.array(_POINT2D, num_points2D, f"the keypoints of image {image_id}")
        qvec = np.array([qw, qx, qy, qz])
        tvec = np.array([tx, ty, tz])
        _check_pose(image_id, qvec, tvec, lambda m: reader.error(m, start))
        point3D_ids = records["point3D_id"].astype(np.int64)
        if np.any(point3D_ids < -1):
            raise reader.error(f"image {image_id}: negative point3D id {int(point3D_ids.min())}", count_pos)
        if image_id in images:
            raise reader.error(f"image id {image_id} appears twice", start)
        images[image_id] = Image(image_id, qvec, tvec, camera_id, name, records["xy"].copy(), point3D_ids)
        where[image_id] = f"{path}: byte {start}"
    reader.finish("images")
    return images, where


def read_points3D_binary(path: str | os.PathLike) -> dict[int, Point3D]:
    """``points3D.bin`` -> {point3D_id: Point3D} in file order (no cross-file checks; see read_model)."""
    points3D, _ = _read_points3D_binary(Path(path))
    return points3D


_POINT_RECORD = np.dtype([("id", "<u8"), ("xyz", "<f8", (3,)), ("rgb", "u1", (3,)), ("error", "<f8"),
                          ("track_length", "<u8")])  # packed: 51 bytes, as in the file
_GATHER_CHUNK = 1 << 16  # points per vectorised gather (bounds the temporary index arrays)


def _read_points3D_binary(path: Path) -> tuple[dict[int, Point3D], dict[int, str]]:
    """Two passes: a tight scan for record offsets, then whole-file numpy gathers and checks."""
    reader = _BinaryReader(path)
    head_size = _POINT_RECORD.itemsize
    count = reader.count(head_size, "points3D")
    buf = reader.buf
    end = len(buf)
    unpack_length = struct.Struct("<Q").unpack_from
    starts: list[int] = []
    lengths: list[int] = []
    pos = reader.pos
    for _ in range(count):
        if end - pos < head_size:
            reader.pos = pos
            reader.take(head_size, "a point3D record")  # raises, naming the offset
        (track_length,) = unpack_length(buf, pos + head_size - 8)
        if track_length > (end - pos - head_size) // _TRACK.itemsize:
            raise reader.error(
                f"point3D record: track of {track_length} observations needs {track_length * _TRACK.itemsize} "
                f"bytes, only {end - pos - head_size} left",
                pos + head_size - 8,
            )
        starts.append(pos)
        lengths.append(track_length)
        pos += head_size + track_length * _TRACK.itemsize
    reader.pos = pos
    reader.finish("points3D")

    start_arr = np.array(starts, dtype=np.int64)
    length_arr = np.array(lengths, dtype=np.int64)
    raw = np.frombuffer(buf, dtype=np.uint8)
    heads = np.empty(count, dtype=_POINT_RECORD)
    head_bytes = heads.view(np.uint8).reshape(count, head_size)
    track_starts = np.concatenate([[0], np.cumsum(length_arr)]).astype(np.int64)
    tracks = np.empty(int(track_starts[-1]), dtype=_TRACK)
    track_bytes = tracks.view(np.uint8).reshape(-1, _TRACK.itemsize)
    byte_range = np.arange(head_size)
    for first in range(0, count, _GATHER_CHUNK):
        last = min(first + _GATHER_CHUNK, count)
        head_bytes[first:last] = raw[start_arr[first:last, None] + byte_range]
        # Each track is contiguous in the file: gather observation by observation.
        lo, hi = track_starts[first], track_starts[last]
        if hi > lo:
            owner = np.repeat(np.arange(first, last), length_arr[first:last])
            within = np.arange(lo, hi) - track_starts[owner]
            offsets = start_arr[owner] + head_size + within * _TRACK.itemsize
            track_bytes[lo:hi] = raw[offsets[:, None] + np.arange(_TRACK.itemsize)]

    ids = heads["id"]
    bad = np.flatnonzero(ids >= np.uint64(1 << 63))
    if bad.size:
        k = int(bad[0])
        raise reader.error(f"point3D id {int(ids[k])} is out of range (reserved for 'no point')", starts[k])
    xyz = heads["xyz"].copy()
    bad = np.flatnonzero(~np.all(np.isfinite(xyz), axis=1))
    if bad.size:
        k = int(bad[0])
        raise reader.error(f"point3D {int(ids[k])}: non-finite position {xyz[k].tolist()}", starts[k])
    ids = ids.astype(np.int64)
    unique, first_index = np.unique(ids, return_index=True)
    if unique.size != count:
        seen = np.zeros(count, bool)
        seen[first_index] = True
        k = int(np.flatnonzero(~seen)[0])
        raise reader.error(f"point3D id {int(ids[k])} appears twice", starts[k])
    rgb = heads["rgb"].copy()
    errors = heads["error"].tolist()
    image_ids = tracks["image_id"].astype(np.int64)
    point2D_idxs = tracks["point2D_idx"].astype(np.int64)
    id_list = ids.tolist()
    # Row views and track slices made in bulk: per-point Python work is the dict entry only.
    bounds = track_starts.tolist()
    points3D = {
        point_id: Point3D(point_id, position, colour, error, image_ids[lo:hi], point2D_idxs[lo:hi])
        for point_id, position, colour, error, lo, hi in zip(id_list, list(xyz), list(rgb), errors, bounds, bounds[1:])
    }
    where = _LazyWhere(path, id_list, starts, "byte")
    return points3D, where


class _LazyWhere:
    """point id -> "file: byte N" (or line), built only when an error message needs it."""

    def __init__(self, path: Path, ids: list[int], positions: list[int], unit: str):
        self.path, self.ids, self.positions, self.unit = path, ids, positions, unit

    def __getitem__(self, point_id: int) -> str:
        return f"{self.path}: {self.unit} {self.positions[self.ids.index(point_id)]}"


# --------------------------------------------------------------------------------------------------
# Text reading


def _text_lines(path: Path) -> list[str]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise ColmapFormatError(f"{path}: line {line}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    if "\0" in text:
        line = text.count("\n", 0, text.index("\0")) + 1
        raise ColmapFormatError(f"{path}: line {line}: NUL byte in a text file")
    # COLMAP splits on '\n' only; a Windows '\r' is stripped with the rest of the white space.
    return text.split("\n")


def _data_lines(lines: list[str]) -> Iterable[tuple[int, str]]:
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            yield number, line


class _Fields:
    """The white-space separated fields of one line, parsed with errors naming file, line and field."""

    def __init__(self, path: Path, number: int, line: str, what: str):
        self.path, self.number, self.what = path, number, what
        self.items = line.split()

    def error(self, message: str) -> ColmapFormatError:
        return ColmapFormatError(f"{self.path}: line {self.number}: {message}")

    def need(self, count: int, names: str) -> None:
        if len(self.items) < count:
            raise self.error(f"{self.what} needs at least {count} fields ({names}), got {len(self.items)}")

    def int(self, index: int, name: str, low: int = -(1 << 63), high: int = (1 << 64) - 1) -> int:
        item = self.items[index]
        try:
            value = int(item)
        except ValueError:
            raise self.error(f"{self.what}: {name} must be an integer, got {item!r}") from None
        if not low <= value <= high:
            raise self.error(f"{self.what}: {name} {value} is out of range [{low}, {high}]")
        return value

    def floats(self, start: int, stop: int, name: str) -> np.ndarray:
        try:
            return np.array([float(v) for v in self.items[start:stop]], dtype=np.float64)
        except ValueError:
            raise self.error(f"{self.what}: {name} must be numbers, got {self.items[start:stop]}") from None


def read_cameras_text(path: str | os.PathLike) -> dict[int, Camera]:
    """``cameras.txt`` -> {camera_id: Camera} in file order (no cross-file checks; see read_model)."""
    path = Path(path)
    cameras: dict[int, Camera] = {}
    for number, line in _data_lines(_text_lines(path)):
        f = _Fields(path, number, line, "camera line")
        f.need(4, "CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]")
        camera_id = f.int(0, "CAMERA_ID", 0, (1 << 32) - 1)
        model = CAMERA_MODELS.get(f.items[1])
        if model is None:
            raise f.error(f"camera {camera_id}: unknown camera model {f.items[1]!r} (known: {', '.join(CAMERA_MODELS)})")
        width, height = f.int(2, "WIDTH", 0), f.int(3, "HEIGHT", 0)
        if len(f.items) - 4 != model.num_params:
            raise f.error(f"camera {camera_id}: {model.model_name} has {model.num_params} parameters, got {len(f.items) - 4}")
        params = f.floats(4, len(f.items), "PARAMS")
        _check_camera(camera_id, width, height, params, f.error)
        if camera_id in cameras:
            raise f.error(f"camera id {camera_id} appears twice")
        cameras[camera_id] = Camera(camera_id, model.model_name, width, height, params)
    return cameras


def read_images_text(path: str | os.PathLike) -> dict[int, Image]:
    """``images.txt`` -> {image_id: Image} in file order (no cross-file checks; see read_model)."""
    images, _ = _read_images_text(Path(path))
    return images


def _read_images_text(path: Path) -> tuple[dict[int, Image], dict[int, str]]:
    lines = _text_lines(path)
    images: dict[int, Image] = {}
    where: dict[int, str] = {}
    index = 0
    while index < len(lines):
        number, line = index + 1, lines[index].strip()
        index += 1
        if not line or line.startswith("#"):
            continue
        # IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME; the name is the rest of the line (it may hold spaces).
        head = line.split(maxsplit=9)
        f = _Fields(path, number, line, "image line")
        f.items = head
        f.need(10, "IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME")
        image_id = f.int(0, "IMAGE_ID", 0, (1 << 32) - 1)
        pose = f.floats(1, 8, "QW QX QY QZ TX TY TZ")
        camera_id = f.int(8, "CAMERA_ID", 0, (1 << 32) - 1)
        name = head[9].strip()
        _check_pose(image_id, pose[:4], pose[4:], f.error)
        # The next line holds the keypoints; COLMAP writes it even when empty.
        points_number = index + 1
        points_line = lines[index].strip() if index < len(lines) else ""
        index += 1
        items = points_line.split()
        g = _Fields(path, points_number, points_line, f"keypoint line of image {image_id}")
        if len(items) % 3:
            raise g.error(f"{g.what}: expected triples X Y POINT3D_ID, got {len(items)} fields")
        try:
            xys = np.array([items[0::3], items[1::3]], dtype=np.float64).T.copy()
        except ValueError:
            bad = next(v for k, v in enumerate(items) if k % 3 != 2 and not _is_float(v))
            raise g.error(f"{g.what}: X Y must be numbers, got {bad!r}") from None
        try:
            point3D_ids = np.array([int(v) for v in items[2::3]], dtype=np.int64)
        except (ValueError, OverflowError):
            bad = next(v for v in items[2::3] if not _is_int64(v))
            raise g.error(f"{g.what}: POINT3D_ID must be an integer, got {bad!r}") from None
        if np.any(point3D_ids < -1):
            raise g.error(f"{g.what}: negative POINT3D_ID {int(point3D_ids.min())}")
        if image_id in images:
            raise f.error(f"image id {image_id} appears twice")
        images[image_id] = Image(
            image_id, pose[:4].copy(), pose[4:].copy(), camera_id, name, xys.reshape(-1, 2), point3D_ids,
        )
        where[image_id] = f"{path}: line {number}"
    return images, where


def _is_int64(value: str) -> bool:
    try:
        return -(1 << 63) <= int(value) < 1 << 63
    except ValueError:
        return False


def _is_float(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def read_points3D_text(path: str | os.PathLike) -> dict[int, Point3D]:
    """``points3D.txt`` -> {point3D_id: Point3D} in file order (no cross-file checks; see read_model)."""
    points3D, _ = _read_points3D_text(Path(path))
    return points3D


def _read_points3D_text(path: Path) -> tuple[dict[int, Point3D], dict[int, str]]:
    """Whole-file numpy conversion; any doubt sends it to the line-by-line reader for the message."""
    lines = _text_lines(path)
    numbers: list[int] = []
    heads: list[str] = []
    tracks: list[str] = []
    lengths: list[int] = []
    for number, line in _data_lines(lines):
        items = line.split()
        if len(items) < 8 or len(items) % 2:
            return _read_points3D_text_lines(path, lines)
        numbers.append(number)
        heads.extend(items[:8])
        tracks.extend(items[8:])
        lengths.append((len(items) - 8) // 2)
    if not numbers:
        return {}, {}
    try:
        head = np.array(heads).reshape(-1, 8)
        ids = head[:, 0].astype(np.int64)
        xyz = head[:, 1:4].astype(np.float64)
        rgb = head[:, 4:7].astype(np.int64)
        errors = head[:, 7].astype(np.float64).tolist()
        track = np.array(tracks).astype(np.int64).reshape(-1, 2) if tracks else np.zeros((0, 2), np.int64)
    except (ValueError, OverflowError):
        return _read_points3D_text_lines(path, lines)
    if (ids.min() < 0 or not np.all(np.isfinite(xyz)) or rgb.min() < 0 or rgb.max() > 255
            or np.unique(ids).size != ids.size
            or (track.size and (track.min() < 0 or track.max() > _UINT32))):
        return _read_points3D_text_lines(path, lines)
    bounds = np.concatenate([[0], np.cumsum(lengths)]).tolist()
    image_ids = np.ascontiguousarray(track[:, 0])
    point2D_idxs = np.ascontiguousarray(track[:, 1])
    id_list = ids.tolist()
    points3D = {
        point_id: Point3D(point_id, position, colour, error, image_ids[lo:hi], point2D_idxs[lo:hi])
        for point_id, position, colour, error, lo, hi in zip(
            id_list, list(xyz), list(rgb.astype(np.uint8)), errors, bounds, bounds[1:]
        )
    }
    return points3D, _LazyWhere(path, id_list, numbers, "line")


def _read_points3D_text_lines(path: Path, lines: list[str]) -> tuple[dict[int, Point3D], dict[int, str]]:
    points3D: dict[int, Point3D] = {}
    where: dict[int, str] = {}
    for number, line in _data_lines(lines):
        f = _Fields(path, number, line, "point3D line")
        f.need(8, "POINT3D_ID X Y Z R G B ERROR TRACK[]")
        point_id = f.int(0, "POINT3D_ID", 0, (1 << 63) - 1)
        xyz = f.floats(1, 4, "X Y Z")
        if not np.all(np.isfinite(xyz)):
            raise f.error(f"point3D {point_id}: non-finite position {xyz.tolist()}")
        rgb = np.array([f.int(i, "R G B", 0, 255) for i in (4, 5, 6)], dtype=np.uint8)
        error = float(f.floats(7, 8, "ERROR")[0])
        if (len(f.items) - 8) % 2:
            raise f.error(f"point3D {point_id}: TRACK must be pairs IMAGE_ID POINT2D_IDX, got {len(f.items) - 8} fields")
        try:
            track = np.array([int(v) for v in f.items[8:]], dtype=np.int64).reshape(-1, 2)
        except (ValueError, OverflowError):
            raise f.error(f"point3D {point_id}: TRACK must be integers, got {' '.join(f.items[8:])[:200]!r}") from None
        if track.size and (track.min() < 0 or track.max() >= 1 << 32):
            raise f.error(f"point3D {point_id}: TRACK entries must be in [0, 2**32)")
        if point_id in points3D:
            raise f.error(f"point3D id {point_id} appears twice")
        points3D[point_id] = Point3D(point_id, xyz, rgb, error, track[:, 0].copy(), track[:, 1].copy())
        where[point_id] = f"{path}: line {number}"
    return points3D, where


# --------------------------------------------------------------------------------------------------
# The model as a whole


def read_model(
    path: str | os.PathLike, ext: str | None = None
) -> tuple[dict[int, Camera], dict[int, Image], dict[int, Point3D]]:
    """Read a COLMAP sparse model (text or binary).

    Args:
        path: the model folder, or a scene folder / ``sparse/`` above it (see :func:`find_model_dir`).
        ext: ``".bin"``, ``".txt"`` or None to detect (binary preferred when both are complete).

    Returns:
        ``(cameras, images, points3D)``, dicts keyed by id in file order.

    Raises:
        FileNotFoundError: no model there.
        ColmapFormatError: a file is corrupt or the three files disagree (an image's camera, a
            track's image or keypoint, or a keypoint's point3D does not exist); the message names
            the file and byte offset or line.
    """
    folder = Path(path)
    if ext is None:
        folder = find_model_dir(folder)
        ext = detect_model_ext(folder)
    else:
        if ext not in (".bin", ".txt"):
            raise ValueError(f"ext must be '.bin', '.txt' or None, got {ext!r}")
        if not _has_model(folder, ext):
            folder = find_model_dir(folder)
            if not _has_model(folder, ext):
                raise FileNotFoundError(f"{folder}: no complete {ext} COLMAP model")
    if ext == ".bin":
        cameras = read_cameras_binary(folder / "cameras.bin")
        images, image_where = _read_images_binary(folder / "images.bin")
        points3D, point_where = _read_points3D_binary(folder / "points3D.bin")
    else:
        cameras = read_cameras_text(folder / "cameras.txt")
        images, image_where = _read_images_text(folder / "images.txt")
        points3D, point_where = _read_points3D_text(folder / "points3D.txt")
    _check_consistency(cameras, images, points3D, image_where, point_where)
    return cameras, images, points3D


def _escapes_image_folder(name: str) -> bool:
    """Whether an image name is absolute or climbs out of the images folder (either slash)."""
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) is not None or ".." in parts


def _check_consistency(cameras, images, points3D, image_where, point_where) -> None:
    """The three files must agree; checked with whole-model arrays so that large models stay fast."""
    for image in images.values():
        if _escapes_image_folder(image.name):
            # The name is joined to the images folder by every reader: "../x" or "/x" would read a
            # file outside the scene.
            raise ColmapFormatError(
                f"{image_where[image.id]}: image {image.id} has the name {image.name!r}, which leaves the "
                "images folder (absolute, or with a '..' part); names are paths relative to it"
            )
        if image.camera_id not in cameras:
            raise ColmapFormatError(
                f"{image_where[image.id]}: image {image.id} ({image.name}) uses camera {image.camera_id}, "
                f"which is not in the cameras file (ids {sorted(cameras)[:10]})"
            )
    image_ids = np.fromiter(images.keys(), dtype=np.int64, count=len(images))
    lengths = np.fromiter((len(i.point3D_ids) for i in images.values()), dtype=np.int64, count=len(images))
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    keypoint_points = (np.concatenate([i.point3D_ids for i in images.values()]) if images else np.zeros(0, np.int64))
    point_ids = np.fromiter(points3D.keys(), dtype=np.int64, count=len(points3D))

    # Every triangulated keypoint names an existing point.
    seen = keypoint_points[keypoint_points >= 0]
    sorted_points = np.sort(point_ids)
    found = np.searchsorted(sorted_points, seen)
    missing = (found >= len(sorted_points)) | (sorted_points[np.minimum(found, len(sorted_points) - 1)] != seen) \
        if len(sorted_points) else np.ones(len(seen), bool)
    if np.any(missing):
        bad_point = int(seen[np.argmax(missing)])
        owner = next(i for i in images.values() if np.any(i.point3D_ids == bad_point))
        raise ColmapFormatError(
            f"{image_where[owner.id]}: image {owner.id} ({owner.name}) sees point3D {bad_point}, "
            f"which is not in the points3D file ({int(missing.sum())} such keypoints in the model)"
        )

    # Every track element names an existing image and keypoint, and that keypoint names the point back.
    if not points3D:
        return
    track_lengths = np.fromiter((len(p.image_ids) for p in points3D.values()), dtype=np.int64, count=len(points3D))
    track_points = np.repeat(point_ids, track_lengths)
    track_images = np.concatenate([p.image_ids for p in points3D.values()]).astype(np.int64)
    track_idxs = np.concatenate([p.point2D_idxs for p in points3D.values()]).astype(np.int64)
    order = np.argsort(image_ids, kind="stable")
    slot = np.searchsorted(image_ids[order], track_images)
    slot = np.minimum(slot, max(len(order) - 1, 0))
    exists = (image_ids[order][slot] == track_images) if len(order) else np.zeros(len(track_images), bool)
    where_image = order[slot] if len(order) else slot
    in_range = exists & (track_idxs >= 0) & (track_idxs < lengths[where_image] if len(order) else False)
    agrees = in_range.copy()
    agrees[in_range] = keypoint_points[starts[where_image[in_range]] + track_idxs[in_range]] == track_points[in_range]
    if np.all(agrees):
        return
    k = int(np.argmin(agrees))
    point_id, image_id, idx = int(track_points[k]), int(track_images[k]), int(track_idxs[k])
    prefix = f"{point_where[point_id]}: point3D {point_id}"
    if not exists[k]:
        raise ColmapFormatError(f"{prefix} is seen by image {image_id}, which is not in the images file")
    image = images[image_id]
    if not in_range[k]:
        raise ColmapFormatError(
            f"{prefix} is seen by keypoint {idx} of image {image_id}, which has only {len(image.point3D_ids)} keypoints"
        )
    raise ColmapFormatError(
        f"{prefix} is seen by keypoint {idx} of image {image_id} ({image.name}), but the images file says that "
        f"keypoint sees point3D {int(image.point3D_ids[idx])}"
    )


def write_model(
    cameras: Mapping[int, Camera],
    images: Mapping[int, Image],
    points3D: Mapping[int, Point3D],
    path: str | os.PathLike,
    ext: str = ".bin",
) -> Path:
    """Write a COLMAP model to the folder ``path`` (created if needed), each file atomically.

    Args:
        ext: ``".bin"`` (COLMAP's binary layout) or ``".txt"`` (COLMAP's text layout, '#' headers).

    Returns:
        The model folder.

    Raises:
        ValueError: an unknown camera model or a wrong number of parameters (naming the camera).
    """
    if ext not in (".bin", ".txt"):
        raise ValueError(f"ext must be '.bin' or '.txt', got {ext!r}")
    _check_writable(cameras, images, points3D, ext)
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    if ext == ".bin":
        payloads = {
            "cameras.bin": _cameras_bytes(cameras),
            "images.bin": _images_bytes(images),
            "points3D.bin": _points3D_bytes(points3D),
        }
    else:
        payloads = {
            "cameras.txt": _cameras_text(cameras).encode("utf-8"),
            "images.txt": _images_text(images).encode("utf-8"),
            "points3D.txt": _points3D_text(points3D).encode("utf-8"),
        }
    # All three are written to temporary files first and renamed together at the end, so that a
    # failure while writing leaves the previous model (if any) whole.
    with contextlib.ExitStack() as stack:
        for name, payload in payloads.items():
            stack.enter_context(atomic_path(folder / name)).write_bytes(payload)
    return folder


def _check_writable(cameras, images, points3D, ext: str) -> None:
    """Refuse what COLMAP's layouts cannot hold or what :func:`read_model` would refuse to read back."""

    def in_range(value, low, high, what) -> None:
        if not isinstance(value, (int, np.integer)) or not low <= int(value) <= high:
            raise ValueError(f"{what} must be an integer in [{low}, {high}], got {value!r}")

    for key, camera in cameras.items():
        in_range(camera.id, 0, _UINT32, "camera id")
        if key != camera.id:
            raise ValueError(f"cameras[{key}] holds camera {camera.id}")
        model = CAMERA_MODELS.get(camera.model)
        if model is None:
            raise ValueError(f"camera {camera.id}: unknown camera model {camera.model!r}")
        if np.size(camera.params) != model.num_params:
            raise ValueError(
                f"camera {camera.id}: {camera.model} has {model.num_params} parameters, got {np.size(camera.params)}"
            )
        in_range(camera.width, 1, _MAX_SIDE - 1, f"camera {camera.id}: width")
        in_range(camera.height, 1, _MAX_SIDE - 1, f"camera {camera.id}: height")
        if not np.all(np.isfinite(np.asarray(camera.params, dtype=np.float64))):
            raise ValueError(f"camera {camera.id}: non-finite parameters {np.asarray(camera.params).tolist()}")
    for key, image in images.items():
        in_range(image.id, 0, _UINT32, "image id")
        if key != image.id:
            raise ValueError(f"images[{key}] holds image {image.id}")
        in_range(image.camera_id, 0, _UINT32, f"image {image.id}: camera_id")
        qvec, tvec = np.asarray(image.qvec, np.float64), np.asarray(image.tvec, np.float64)
        if qvec.shape != (4,) or tvec.shape != (3,):
            raise ValueError(f"image {image.id}: expected qvec (4,) and tvec (3,), got {qvec.shape} and {tvec.shape}")
        if not (np.all(np.isfinite(qvec)) and np.all(np.isfinite(tvec))) or np.linalg.norm(qvec) < 1e-12:
            raise ValueError(f"image {image.id}: invalid pose qvec={qvec.tolist()} tvec={tvec.tolist()}")
        if "\0" in image.name or "\n" in image.name or "\r" in image.name:
            raise ValueError(f"image {image.id}: name {image.name!r} holds a NUL or line break")
        if ext == ".txt" and (not image.name or any(c.isspace() for c in image.name)):
            # COLMAP's text reader ends the name at the first blank; the binary layout has no such limit.
            raise ValueError(f"image {image.id}: name {image.name!r} is empty or holds white space, which "
                             "COLMAP's text format cannot store; write .bin instead")
        xys = np.asarray(image.xys)
        point3D_ids = np.asarray(image.point3D_ids)
        if xys.reshape(-1, 2).shape[0] != point3D_ids.size or xys.size % 2:
            raise ValueError(f"image {image.id}: {xys.shape} keypoints but {point3D_ids.size} point3D ids")
        if point3D_ids.size and point3D_ids.min() < -1:
            raise ValueError(f"image {image.id}: point3D ids must be >= -1 (-1 = none), got {int(point3D_ids.min())}")
    if _points_look_writable(points3D):
        return
    for key, point in points3D.items():  # slow path: find the culprit and name it
        in_range(point.id, 0, (1 << 63) - 1, "point3D id")
        if key != point.id:
            raise ValueError(f"points3D[{key}] holds point {point.id}")
        xyz, rgb = np.asarray(point.xyz, np.float64), np.asarray(point.rgb)
        if xyz.shape != (3,) or not np.all(np.isfinite(xyz)):
            raise ValueError(f"point3D {point.id}: expected 3 finite coordinates, got {xyz.tolist()}")
        if rgb.shape != (3,) or rgb.min() < 0 or rgb.max() > 255:
            raise ValueError(f"point3D {point.id}: expected rgb of 3 values in 0..255, got {rgb.tolist()}")
        image_ids, idxs = np.asarray(point.image_ids), np.asarray(point.point2D_idxs)
        if image_ids.shape != idxs.shape or image_ids.ndim != 1:
            raise ValueError(f"point3D {point.id}: {image_ids.shape} image ids but {idxs.shape} keypoint indices")
        if image_ids.size and (min(image_ids.min(), idxs.min()) < 0 or max(image_ids.max(), idxs.max()) > _UINT32):
            raise ValueError(f"point3D {point.id}: track ids must be in [0, 2**32)")


def _points_look_writable(points3D) -> bool:
    """Whole-model checks of the points (fast); False sends the caller to the per-point checks."""
    if not points3D:
        return True
    try:
        values = list(points3D.values())
        if not all(type(p.id) is int and k == p.id for k, p in points3D.items()):  # noqa: E721
            return False
        ids = np.fromiter((p.id for p in values), dtype=np.int64, count=len(values))
        xyz = np.array([p.xyz for p in values], dtype=np.float64)
        rgb = np.array([p.rgb for p in values])
        lengths = np.fromiter((len(p.image_ids) for p in values), dtype=np.int64, count=len(values))
        idx_lengths = np.fromiter((len(p.point2D_idxs) for p in values), dtype=np.int64, count=len(values))
        tracks = np.concatenate([np.asarray(p.image_ids).reshape(-1) for p in values]
                                + [np.asarray(p.point2D_idxs).reshape(-1) for p in values])
    except (ValueError, TypeError, OverflowError):  # ragged or non-numeric: let the slow path say what
        return False
    return bool(
        ids.min() >= 0
        and xyz.shape == (len(values), 3) and np.all(np.isfinite(xyz))
        and rgb.shape == (len(values), 3) and rgb.dtype.kind in "iu" and rgb.min() >= 0 and rgb.max() <= 255
        and np.array_equal(lengths, idx_lengths)
        and (tracks.size == 0 or (tracks.dtype.kind in "iu" and tracks.min() >= 0 and tracks.max() <= _UINT32))
    )


def _cameras_bytes(cameras: Mapping[int, Camera]) -> bytes:
    chunks = [_U64.pack(len(cameras))]
    for camera in cameras.values():
        model = CAMERA_MODELS[camera.model]
        chunks.append(_CAMERA_HEAD.pack(camera.id, model.model_id, camera.width, camera.height))
        chunks.append(np.asarray(camera.params, dtype="<f8").tobytes())
    return b"".join(chunks)


def _images_bytes(images: Mapping[int, Image]) -> bytes:
    chunks = [_U64.pack(len(images))]
    for image in images.values():
        chunks.append(_IMAGE_HEAD.pack(image.id, *np.asarray(image.qvec, np.float64).tolist(),
                                       *np.asarray(image.tvec, np.float64).tolist(), image.camera_id))
        chunks.append(image.name.encode("utf-8") + b"\0")
        records = np.empty(len(image.point3D_ids), dtype=_POINT2D)
        records["xy"] = np.asarray(image.xys, np.float64).reshape(-1, 2)
        records["point3D_id"] = np.asarray(image.point3D_ids, np.int64)
        chunks.append(_U64.pack(len(records)))
        chunks.append(records.tobytes())
    return b"".join(chunks)


def _points3D_bytes(points3D: Mapping[int, Point3D]) -> bytes:
    chunks = [_U64.pack(len(points3D))]
    for point in points3D.values():
        x, y, z = np.asarray(point.xyz, np.float64).tolist()
        r, g, b = np.asarray(point.rgb).astype(np.uint8).tolist()
        track = np.empty(len(point.image_ids), dtype=_TRACK)
        track["image_id"] = np.asarray(point.image_ids, np.int64)
        track["point2D_idx"] = np.asarray(point.point2D_idxs, np.int64)
        chunks.append(_POINT_HEAD.pack(point.id, x, y, z, r, g, b, float(point.error), len(track)))
        chunks.append(track.tobytes())
    return b"".join(chunks)


def _cameras_text(cameras: Mapping[int, Camera]) -> str:
    lines = [
        "# Camera list with one line of data per camera:",
        "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]",
        f"# Number of cameras: {len(cameras)}",
    ]
    for camera in cameras.values():
        params = " ".join(repr(float(v)) for v in np.asarray(camera.params, np.float64))
        lines.append(f"{camera.id} {camera.model} {camera.width} {camera.height} {params}")
    return "\n".join(lines) + "\n"


def _images_text(images: Mapping[int, Image]) -> str:
    observations = sum(int(np.count_nonzero(np.asarray(i.point3D_ids) >= 0)) for i in images.values())
    mean = observations / len(images) if images else 0.0
    lines = [
        "# Image list with two lines of data per image:",
        "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
        "#   POINTS2D[] as (X, Y, POINT3D_ID)",
        f"# Number of images: {len(images)}, mean observations per image: {mean:g}",
    ]
    for image in images.values():
        pose = " ".join(repr(float(v)) for v in [*np.asarray(image.qvec), *np.asarray(image.tvec)])
        lines.append(f"{image.id} {pose} {image.camera_id} {image.name}")
        xys = np.asarray(image.xys, np.float64).reshape(-1, 2).tolist()
        ids = np.asarray(image.point3D_ids, np.int64).tolist()
        lines.append(" ".join(f"{x!r} {y!r} {i}" for (x, y), i in zip(xys, ids)))
    return "\n".join(lines) + "\n"


def _points3D_text(points3D: Mapping[int, Point3D]) -> str:
    track_total = sum(len(p.image_ids) for p in points3D.values())
    mean = track_total / len(points3D) if points3D else 0.0
    lines = [
        "# 3D point list with one line of data per point:",
        "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)",
        f"# Number of points: {len(points3D)}, mean track length: {mean:g}",
    ]
    for point in points3D.values():
        x, y, z = np.asarray(point.xyz, np.float64).tolist()
        r, g, b = np.asarray(point.rgb).astype(np.uint8).tolist()
        track = " ".join(
            f"{i} {j}" for i, j in zip(np.asarray(point.image_ids).tolist(), np.asarray(point.point2D_idxs).tolist())
        )
        line = f"{point.id} {x!r} {y!r} {z!r} {r} {g} {b} {float(point.error)!r}"
        lines.append(f"{line} {track}" if track else line)
    return "\n".join(lines) + "\n"
