"""Coloured point clouds as binary little-endian PLY (``fused.ply``, ``gt/points.ply``).

Layout: one ``vertex`` element with properties ``x y z`` (float32, scene units), ``red green blue``
(uint8) and optionally ``nx ny nz`` (float32, unit normals in the world frame). A cloud with no
points is still a valid PLY (``element vertex 0``).

:func:`write_ply` writes arrays held in memory through ``plyfile``; :class:`PlyStreamWriter` appends
chunks of points to a body file and writes the header once the count is known, so that fusion
never holds the whole cloud in memory. Both produce the same bytes and both are atomic.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import numpy as np
import plyfile

from pipeline.formats.atomic import atomic_path, output_lock, private_temp, remove_stale_temps


class PlyFormatError(ValueError):
    """A PLY file that cannot be read as a point cloud; the message names the file."""


_XYZ = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
_RGB = [("red", "u1"), ("green", "u1"), ("blue", "u1")]
_NORMALS = [("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]


def vertex_dtype(with_color: bool = True, with_normals: bool = False) -> np.dtype:
    """The numpy record type of one vertex, in the order the file stores the properties."""
    fields = list(_XYZ)
    if with_color:
        fields += _RGB
    if with_normals:
        fields += _NORMALS
    return np.dtype(fields)


@dataclasses.dataclass
class PointCloud:
    """Points with optional colours and normals.

    Shape:
        xyz: (N, 3) float32; rgb: (N, 3) uint8 or None; normals: (N, 3) float32 or None.
    """

    xyz: np.ndarray
    rgb: np.ndarray | None = None
    normals: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.xyz.shape[0])


def _vertices(xyz, rgb, normals) -> np.ndarray:
    xyz = np.asarray(xyz)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"expected (N, 3) points, got {xyz.shape}")
    count = xyz.shape[0]
    if rgb is not None:
        rgb = np.asarray(rgb)
        if rgb.shape != (count, 3):
            raise ValueError(f"expected ({count}, 3) colours, got {rgb.shape}")
        if rgb.dtype != np.uint8:
            raise ValueError(f"expected uint8 colours, got {rgb.dtype}")
    if normals is not None:
        normals = np.asarray(normals)
        if normals.shape != (count, 3):
            raise ValueError(f"expected ({count}, 3) normals, got {normals.shape}")
    vertices = np.empty(count, dtype=vertex_dtype(rgb is not None, normals is not None))
    for axis, name in enumerate("xyz"):
        vertices[name] = xyz[:, axis]
    if normals is not None:
        for axis, name in enumerate(("nx", "ny", "nz")):
            vertices[name] = normals[:, axis]
    if rgb is not None:
        for axis, name in enumerate(("red", "green", "blue")):
            vertices[name] = rgb[:, axis]
    return vertices


def write_ply(
    path: str | os.PathLike,
    xyz: np.ndarray,
    rgb: np.ndarray | None = None,
    normals: np.ndarray | None = None,
    comments: list[str] | None = None,
) -> None:
    """Write a point cloud atomically as binary little-endian PLY (``plyfile``).

    Shape:
        xyz: (N, 3); rgb: (N, 3) uint8 or None; normals: (N, 3) or None. N may be 0.
    """
    vertices = _vertices(xyz, rgb, normals)
    element = plyfile.PlyElement.describe(vertices, "vertex")
    data = plyfile.PlyData([element], text=False, byte_order="<", comments=list(comments or []))
    with atomic_path(path, suffix=".ply") as tmp:
        data.write(str(tmp))


def read_ply(path: str | os.PathLike) -> PointCloud:
    """Read the ``vertex`` element of a PLY file (binary or ascii) as a :class:`PointCloud`.

    Raises:
        FileNotFoundError: the file does not exist.
        PlyFormatError: not a PLY, or no ``vertex`` element with ``x y z``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: PLY file not found")
    try:
        data = plyfile.PlyData.read(str(path))
    except Exception as error:  # plyfile raises several unrelated types for a broken file
        raise PlyFormatError(f"{path}: not a readable PLY file ({type(error).__name__}: {error})") from None
    if "vertex" not in data:
        raise PlyFormatError(f"{path}: no 'vertex' element")
    vertex = data["vertex"].data
    names = set(vertex.dtype.names or ())
    if not {"x", "y", "z"} <= names:
        raise PlyFormatError(f"{path}: vertex element lacks x y z (has {sorted(names)})")
    xyz = np.stack([vertex["x"], vertex["y"], vertex["z"]], axis=1).astype(np.float32)
    rgb = None
    if {"red", "green", "blue"} <= names:
        rgb = np.stack([vertex["red"], vertex["green"], vertex["blue"]], axis=1).astype(np.uint8)
    normals = None
    if {"nx", "ny", "nz"} <= names:
        normals = np.stack([vertex["nx"], vertex["ny"], vertex["nz"]], axis=1).astype(np.float32)
    return PointCloud(xyz=xyz, rgb=rgb, normals=normals)


def _header(count: int, with_color: bool, with_normals: bool, comments: list[str]) -> bytes:
    lines = ["ply", "format binary_little_endian 1.0"]
    lines += [f"comment {c}" for c in comments]
    lines.append(f"element vertex {count}")
    names = {"<f4": "float", "u1": "uchar"}
    for name, code in vertex_dtype(with_color, with_normals).descr:
        lines.append(f"property {names[code.lstrip('|')]} {name}")
    lines.append("end_header")
    return ("\n".join(lines) + "\n").encode("ascii")


class PlyStreamWriter:
    """Append points chunk by chunk; the PLY appears under ``path`` (atomically) on a clean exit.

    Example::

        with PlyStreamWriter("fused.ply", with_normals=True) as writer:
            for chunk in chunks:
                writer.append(chunk.xyz, chunk.rgb, chunk.normals)
    """

    def __init__(
        self,
        path: str | os.PathLike,
        with_color: bool = True,
        with_normals: bool = False,
        comments: list[str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.with_color = with_color
        self.with_normals = with_normals
        self.comments = list(comments or [])
        self.count = 0
        self._body = None
        self._body_path: Path | None = None
        self._lock = None

    def __enter__(self) -> "PlyStreamWriter":
        # the output's lock for the whole stream, so a second writer is refused before it writes a body
        self._lock = output_lock(self.path)
        self._lock.__enter__()
        try:
            remove_stale_temps(self.path)
            self._body_path = private_temp(self.path, ".body")
            self._body = open(self._body_path, "wb")
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        return self

    def append(self, xyz: np.ndarray, rgb: np.ndarray | None = None, normals: np.ndarray | None = None) -> None:
        """Append (N, 3) points (and (N, 3) uint8 colours / (N, 3) normals if the writer has them)."""
        if (rgb is not None) != self.with_color:
            raise ValueError(f"writer with_color={self.with_color} but rgb is {'given' if rgb is not None else 'None'}")
        if (normals is not None) != self.with_normals:
            raise ValueError(
                f"writer with_normals={self.with_normals} but normals is {'given' if normals is not None else 'None'}"
            )
        vertices = _vertices(xyz, rgb, normals)
        self._body.write(vertices.tobytes())
        self.count += len(vertices)

    def __exit__(self, exc_type, exc, tb) -> None:
        self._body.close()
        try:
            if exc_type is None:
                with atomic_path(self.path, suffix=".ply") as tmp:
                    with open(tmp, "wb") as out, open(self._body_path, "rb") as body:
                        out.write(_header(self.count, self.with_color, self.with_normals, self.comments))
                        shutil.copyfileobj(body, out, length=16 << 20)
        finally:
            self._body_path.unlink(missing_ok=True)
            self._lock.__exit__(exc_type, exc, tb)
