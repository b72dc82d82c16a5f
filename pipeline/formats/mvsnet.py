"""The MVSNet folder layout (MVSNet, R-MVSNet, CasMVSNet, PatchmatchNet data sets) <-> ``scene.h5``.

Layout::

    <dir>/images/%08d.jpg         one image per view (or .png), numbered 0..N-1 in scene order
                                  (import also reads BlendedMVS: blended_images/, cams/pair.txt)
    <dir>/cams/%08d_cam.txt       the view's camera, see below
    <dir>/pair.txt                N, then per view two lines: its number, and
                                  "S src score src score ..." (best source first)
    <dir>/masks/%08d.png          optional (selfmvs only): valid pixels after undistortion, 0/255
    <dir>/selfmvs_views.json      optional (selfmvs only): COLMAP image id and name of each number,
                                  the scene file's attributes; other tools ignore it

A cam file, line by line, exactly as PatchmatchNet and CasMVSNet index it (line 11 = depth line)::

    extrinsic
    r11 r12 r13 t1                4x4 cam_from_world (world -> camera), last row 0 0 0 1
    r21 r22 r23 t2
    r31 r32 r33 t3
    0 0 0 1

    intrinsic
    fx 0 cx                       3x3 K in pixels of the image in images/
    0 fy cy
    0 0 1

    depth_min depth_interval num_depth depth_max

``depth_interval = (depth_max - depth_min) / (num_depth - 1)``. Readers accept the short DTU form
``depth_min depth_interval`` (then ``num_depth`` is a parameter, 192 by default, and
``depth_max = depth_min + depth_interval * (num_depth - 1)``) and ``depth_min depth_interval num_depth``.

Pixel convention: the principal point is taken to be in COLMAP's convention (the centre of the
top-left pixel is (0.5, 0.5)) — as written by COLMAP-based converters such as MVSNet's
``colmap2mvsnet.py`` and as scaled by the MVSNet family (multiplying K by an image scale factor is
exact only in this convention). ``pixel_centre="integer"`` reads/writes files whose principal point
puts the centre of the top-left pixel at (0, 0): 0.5 is added on import and subtracted on export.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from pipeline.formats.atomic import atomic_path

log = logging.getLogger(__name__)

VIEWS_FILE = "selfmvs_views.json"
VIEWS_KIND = "selfmvs.mvsnet_views"
DEFAULT_NUM_DEPTH = 192  # MVSNet's DTU setting, used when a cam file gives only depth_min and interval
PIXEL_CENTRES = {"colmap": 0.0, "integer": 0.5}  # added to cx, cy of the file to get ours
_ROTATION_TOLERANCE = 1e-3  # cam files are often written with 6 decimals


class MVSNetFormatError(ValueError):
    """A file of the MVSNet layout that cannot be read; names the file and the line."""


@dataclasses.dataclass
class MVSNetCamera:
    """One ``cams/%08d_cam.txt``.

    Shape:
        cam_from_world: (3, 4); K: (3, 3) pixels, in the file's own convention (see module doc).
    """

    cam_from_world: np.ndarray
    K: np.ndarray
    depth_min: float
    depth_interval: float
    num_depth: int
    depth_max: float


# ----------------------------------------------------------------------------------------- cam files


def _lines(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, fields) of every non-empty line of a text file."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise MVSNetFormatError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    return [(number, line.split()) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]


def _row(path: Path, number: int, fields: list[str], count: int | None, what: str) -> np.ndarray:
    if count is not None and len(fields) != count:
        raise MVSNetFormatError(f"{path}: line {number}: {what} needs {count} numbers, got {len(fields)}: {' '.join(fields)[:100]!r}")
    values = []
    for token in fields:
        try:
            value = float(token)
        except ValueError:
            raise MVSNetFormatError(f"{path}: line {number}: {what}: expected a number, got {token!r}") from None
        if not math.isfinite(value):
            raise MVSNetFormatError(f"{path}: line {number}: {what}: non-finite value {token!r}")
        values.append(value)
    return np.array(values)


def _matrix(path: Path, lines: list[tuple[int, list[str]]], keyword: str, rows: int, cols: int) -> tuple[np.ndarray, int]:
    """The rows x cols matrix on the non-empty lines after the keyword line; and the index after it."""
    starts = [k for k, (_, fields) in enumerate(lines) if fields and fields[0].lower() == keyword]
    if not starts:
        raise MVSNetFormatError(f"{path}: no '{keyword}' line (not an MVSNet cam file?)")
    k = starts[0] + 1
    if len(lines) < k + rows:
        raise MVSNetFormatError(f"{path}: {keyword} needs {rows} lines of {cols} numbers; the file ends first")
    matrix = np.stack([_row(path, n, f, cols, f"{keyword} row {r + 1}") for r, (n, f) in enumerate(lines[k : k + rows])])
    return matrix, k + rows


def read_cam_file(path: str | os.PathLike, num_depth: int = DEFAULT_NUM_DEPTH) -> MVSNetCamera:
    """Read one MVSNet cam file.

    The matrices are found by their keyword lines ("extrinsic", "intrinsic"), each followed by 4
    (resp. 3) lines of 4 (resp. 3) numbers; the depth line is the next non-empty line.

    Args:
        num_depth: the hypothesis count when the depth line gives only ``depth_min depth_interval``.

    Raises:
        MVSNetFormatError: naming the file and line (missing keyword, a row of the wrong length, a
            rotation that is not one, a last extrinsic row other than 0 0 0 1, a bad depth range).
    """
    path = Path(path)
    lines = _lines(path)
    extrinsic, after_e = _matrix(path, lines, "extrinsic", 4, 4)
    K, after_i = _matrix(path, lines, "intrinsic", 3, 3)
    line_e = lines[after_e - 4][0]
    line_i = lines[after_i - 3][0]
    if not np.allclose(extrinsic[3], [0, 0, 0, 1], atol=1e-6):
        raise MVSNetFormatError(f"{path}: line {line_e + 3}: extrinsic last row must be 0 0 0 1, got {extrinsic[3].tolist()}")
    R = extrinsic[:3, :3]
    deviation = np.abs(R @ R.T - np.eye(3)).max()
    if deviation > _ROTATION_TOLERANCE or np.linalg.det(R) < 0:
        raise MVSNetFormatError(
            f"{path}: line {line_e}: extrinsic rotation is not a rotation (R R^T - I up to {deviation:.2g}, "
            f"det {np.linalg.det(R):.4g})"
        )
    if not (np.allclose(K[2], [0, 0, 1], atol=1e-9) and K[1, 0] == 0 and K[0, 0] > 0 and K[1, 1] > 0):
        raise MVSNetFormatError(f"{path}: line {line_i}: intrinsic must be [[fx s cx] [0 fy cy] [0 0 1]] "
                                f"with fx, fy > 0, got {K.tolist()}")
    rest = lines[max(after_e, after_i):]
    if not rest:
        raise MVSNetFormatError(f"{path}: no depth line (depth_min depth_interval [num_depth depth_max]) after the matrices")
    depth_line, fields = rest[0]
    values = _row(path, depth_line, fields, None, "depth line")
    if len(values) < 2 or len(values) > 4:
        raise MVSNetFormatError(
            f"{path}: line {depth_line}: expected 'depth_min depth_interval [num_depth [depth_max]]', got {len(values)} numbers"
        )
    depth_min, depth_interval = float(values[0]), float(values[1])
    if len(values) >= 3:
        if values[2] != round(values[2]) or values[2] < 2:
            raise MVSNetFormatError(f"{path}: line {depth_line}: num_depth must be an integer >= 2, got {values[2]}")
        num_depth = int(round(values[2]))
    depth_max = float(values[3]) if len(values) == 4 else depth_min + depth_interval * (num_depth - 1)
    if not (depth_min > 0 and depth_max > depth_min):
        raise MVSNetFormatError(
            f"{path}: line {depth_line}: need 0 < depth_min < depth_max, got depth_min={depth_min}, depth_max={depth_max}"
        )
    return MVSNetCamera(extrinsic[:3].copy(), K, depth_min, depth_interval, int(num_depth), depth_max)


def format_cam_file(camera: MVSNetCamera) -> str:
    """The text of a cam file (full float precision; line 11 is the depth line)."""
    extrinsic = np.vstack([np.asarray(camera.cam_from_world, np.float64)[:3], [0.0, 0.0, 0.0, 1.0]])
    rows = ["extrinsic"]
    rows += [" ".join(repr(float(v)) for v in row) for row in extrinsic]
    rows += ["", "intrinsic"]
    rows += [" ".join(repr(float(v)) for v in row) for row in np.asarray(camera.K, np.float64)]
    rows += ["", f"{float(camera.depth_min)!r} {float(camera.depth_interval)!r} {int(camera.num_depth)} {float(camera.depth_max)!r}"]
    return "\n".join(rows) + "\n"


def write_cam_file(path: str | os.PathLike, camera: MVSNetCamera) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(format_cam_file(camera), encoding="utf-8")


# ----------------------------------------------------------------------------------------- pair.txt


def read_pair_file(path: str | os.PathLike) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """``pair.txt`` -> {view number: (source numbers (S,) int64, scores (S,) float64)} in file order."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise MVSNetFormatError(f"{path}: not UTF-8 text ({error.reason})") from None
    rows = [(n, line.split()) for n, line in enumerate(lines, start=1) if line.strip()]
    if not rows:
        raise MVSNetFormatError(f"{path}: empty pair file")

    def integer(number: int, token: str, what: str) -> int:
        try:
            value = int(token)
        except ValueError:
            try:
                value = float(token)
            except ValueError:
                value = math.nan
            if not value.is_integer():
                raise MVSNetFormatError(f"{path}: line {number}: {what} must be an integer, got {token!r}") from None
            value = int(value)
        if value < 0:
            raise MVSNetFormatError(f"{path}: line {number}: {what} must be >= 0, got {value}")
        return value

    number, first = rows[0]
    if len(first) != 1:
        raise MVSNetFormatError(f"{path}: line {number}: expected the number of views alone, got {' '.join(first)!r}")
    count = integer(number, first[0], "the number of views")
    if len(rows) != 1 + 2 * count:
        raise MVSNetFormatError(f"{path}: {count} views need {1 + 2 * count} non-empty lines, got {len(rows)}")
    pairs: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for k in range(count):
        (n_ref, ref_fields), (n_src, src_fields) = rows[1 + 2 * k], rows[2 + 2 * k]
        if len(ref_fields) != 1:
            raise MVSNetFormatError(f"{path}: line {n_ref}: expected one view number, got {' '.join(ref_fields)!r}")
        ref = integer(n_ref, ref_fields[0], "the view number")
        num_sources = integer(n_src, src_fields[0], "the number of sources")
        if len(src_fields) != 1 + 2 * num_sources:
            raise MVSNetFormatError(
                f"{path}: line {n_src}: {num_sources} sources need {1 + 2 * num_sources} fields, got {len(src_fields)}"
            )
        ids = np.array([integer(n_src, t, "a source number") for t in src_fields[1::2]], dtype=np.int64)
        try:
            scores = np.array([float(t) for t in src_fields[2::2]], dtype=np.float64)
        except ValueError:
            raise MVSNetFormatError(f"{path}: line {n_src}: scores must be numbers: {' '.join(src_fields[2::2])[:200]!r}") from None
        if ref in pairs:
            raise MVSNetFormatError(f"{path}: line {n_ref}: view {ref} listed twice")
        pairs[ref] = (ids, scores)
    return pairs


def format_pair_file(pairs: Mapping[int, tuple[Iterable[int], Iterable[float]]]) -> str:
    lines = [str(len(pairs))]
    for ref, (ids, scores) in pairs.items():
        ids, scores = list(ids), list(scores)
        lines.append(str(int(ref)))
        lines.append(" ".join([str(len(ids))] + [f"{int(i)} {float(s)!r}" for i, s in zip(ids, scores)]))
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ scene.h5 <-> layout


def _pixel_offset(pixel_centre: str) -> float:
    if pixel_centre not in PIXEL_CENTRES:
        raise ValueError(f"pixel_centre must be one of {sorted(PIXEL_CENTRES)}, got {pixel_centre!r}")
    return PIXEL_CENTRES[pixel_centre]


def _shift_principal_point(K: np.ndarray, offset: float) -> np.ndarray:
    K = np.array(K, dtype=np.float64)
    K[0, 2] += offset
    K[1, 2] += offset
    return K


def _json_safe(attrs: Mapping[str, Any]) -> dict[str, Any]:
    safe = {}
    for key, value in attrs.items():
        if isinstance(value, np.ndarray):
            value = value.tolist()
        elif isinstance(value, np.generic):
            value = value.item()
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        safe[key] = value
    return safe


def export_mvsnet(
    scene_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    image_format: str = "jpg",
    jpeg_quality: int = 95,
    pixel_centre: str = "colmap",
) -> Path:
    """Write a prepared scene (``scene.h5``) as an MVSNet folder.

    Views are numbered 0..N-1 in the scene's file order; ``selfmvs_views.json`` maps the numbers
    back to COLMAP image ids and names. Source views missing from the scene are an error. The sparse
    points and each view's point3D ids are not part of the layout and are not written.

    Args:
        image_format: ``"jpg"`` (what MVSNet code expects; lossy) or ``"png"`` (lossless).
        pixel_centre: ``"colmap"`` (K as stored) or ``"integer"`` (cx, cy written 0.5 smaller).

    Returns:
        ``out_dir``.
    """
    from PIL import Image as PILImage

    from pipeline.formats.scene_file import read_scene, read_view

    if image_format not in ("jpg", "png"):
        raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    if not 1 <= int(jpeg_quality) <= 100:
        raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
    offset = _pixel_offset(pixel_centre)
    out = Path(out_dir)
    scene = read_scene(scene_path, load_images=False)
    number_of = {image_id: k for k, image_id in enumerate(scene.views)}
    for view in scene.views.values():
        missing = [int(s) for s in view.source_ids if int(s) not in number_of]
        if missing:
            raise ValueError(f"{scene_path}: view {view.image_id} lists source views {missing[:10]} not in the scene")
    for sub in ("images", "cams"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    pairs = {}
    entries = []
    masked: list[int] = []
    for image_id, view in scene.views.items():
        k = number_of[image_id]
        full = read_view(scene_path, image_id, load_image=True)
        image = PILImage.fromarray(np.ascontiguousarray(full.image))
        with atomic_path(out / "images" / f"{k:08d}.{image_format}", suffix=f".{image_format}") as tmp:
            if image_format == "jpg":
                image.save(tmp, format="JPEG", quality=int(jpeg_quality), subsampling=0)
            else:
                image.save(tmp, format="PNG")
        if full.mask is not None:
            masked.append(image_id)
            (out / "masks").mkdir(exist_ok=True)
            with atomic_path(out / "masks" / f"{k:08d}.png", suffix=".png") as tmp:
                PILImage.fromarray(full.mask.astype(np.uint8) * 255).save(tmp, format="PNG")
        near, far = (float(v) for v in view.depth_range)
        num_depth = max(int(view.num_depth), 2)
        write_cam_file(
            out / "cams" / f"{k:08d}_cam.txt",
            MVSNetCamera(view.cam_from_world, _shift_principal_point(view.K, -offset), near,
                         (far - near) / (num_depth - 1), num_depth, far),
        )
        pairs[k] = ([number_of[int(s)] for s in view.source_ids], view.source_scores.tolist())
        entries.append({"number": k, "image_id": int(image_id), "name": view.name, "num_depth": int(view.num_depth)})
    with atomic_path(out / "pair.txt") as tmp:
        tmp.write_text(format_pair_file(pairs), encoding="utf-8")
    _remove_stale(out, number_of.values(), image_format, masked={number_of[i] for i in masked})
    manifest = {
        "kind": VIEWS_KIND,
        "format_version": 1,
        "image_format": image_format,
        "pixel_centre": pixel_centre,
        "views": entries,
        "scene_attrs": _json_safe(scene.attrs),
    }
    with atomic_path(out / VIEWS_FILE) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return out


def _remove_stale(out: Path, numbers: Iterable[int], image_format: str, masked: set[int]) -> None:
    """Remove numbered files of an earlier export into the same folder that this export did not write.

    Only names of the layout's own patterns are touched; without this, an earlier, larger export
    would leave views behind that an import would pick up.
    """
    keep = set(numbers)
    patterns = {
        "images": (re.compile(r"^(\d{8})\.(jpg|png)$"), lambda n, m: n in keep and m.group(2) == image_format),
        "cams": (re.compile(r"^(\d{8})_cam\.txt$"), lambda n, m: n in keep),
        "masks": (re.compile(r"^(\d{8})\.png$"), lambda n, m: n in masked),
    }
    for sub, (pattern, wanted) in patterns.items():
        folder = out / sub
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            match = pattern.match(path.name)
            if match and not wanted(int(match.group(1)), match):
                log.info("removing %s, left by an earlier export", path)
                path.unlink()


_NUMBERED_IMAGE = re.compile(r"^(\d+)\.(jpg|jpeg|png)$", re.IGNORECASE)


def import_mvsnet(
    in_dir: str | os.PathLike,
    scene_path: str | os.PathLike,
    *,
    num_depth: int = DEFAULT_NUM_DEPTH,
    intrinsics_scale: float = 1.0,
    pixel_centre: str | None = None,
) -> Path:
    """Turn an MVSNet folder into a ``scene.h5`` (views streamed one at a time).

    Views are the numbered images that have a cam file; their image id is the number (or the
    COLMAP id from ``selfmvs_views.json`` when present), their sources come from ``pair.txt``.
    The scene has no sparse points.

    Args:
        num_depth: hypothesis count for cam files whose depth line has only min and interval.
        intrinsics_scale: multiply fx, fy, cx, cy by this (e.g. 4 for the MVSNet DTU training cams,
            which are given at a quarter of the image resolution).
        pixel_centre: the convention of the files' principal point (see the module doc); None
            takes the one recorded in ``selfmvs_views.json`` by our export, else ``"colmap"``.

    Raises:
        MVSNetFormatError: a missing or malformed file, naming it.
    """
    from PIL import Image as PILImage, UnidentifiedImageError

    from pipeline.formats.scene_file import SceneView, SceneWriter

    if not (intrinsics_scale > 0 and math.isfinite(intrinsics_scale)):
        raise ValueError(f"intrinsics_scale must be a positive number, got {intrinsics_scale}")
    folder = Path(in_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder (expected an MVSNet layout: images/, cams/, pair.txt)")
    image_dir, cam_dir, pair_path = _find_layout(folder)
    images = {}
    for path in sorted(image_dir.iterdir()):
        match = _NUMBERED_IMAGE.match(path.name)
        if match:
            number = int(match.group(1))
            if number in images:
                raise MVSNetFormatError(f"{image_dir}: two images numbered {number}: {images[number].name}, {path.name}")
            images[number] = path
    numbers = [n for n in sorted(images) if (cam_dir / f"{n:08d}_cam.txt").is_file()]
    if not numbers:
        raise MVSNetFormatError(f"{folder}: no numbered image in {image_dir.name}/ with a {cam_dir.name}/%08d_cam.txt")
    usable = set(numbers)
    pairs = read_pair_file(pair_path)
    for ref, (sources, _) in pairs.items():
        unknown = [int(s) for s in [ref, *sources] if int(s) not in usable]
        if unknown:
            raise MVSNetFormatError(f"{pair_path}: view {ref} refers to views {unknown[:10]} "
                                    "that have no image or no cam file")

    manifest = _read_manifest(folder / VIEWS_FILE)
    if pixel_centre is None:
        pixel_centre = str(manifest.get("pixel_centre", "colmap")) if manifest is not None else "colmap"
    offset = _pixel_offset(pixel_centre)
    ids = {n: n for n in numbers}
    names = {n: images[n].name for n in numbers}
    num_depths: dict[int, int] = {}
    attrs: dict[str, Any] = {"source": f"MVSNet layout {folder}"}
    if manifest is not None:
        by_number = {int(e["number"]): e for e in manifest["views"]}
        for n in numbers:
            if n in by_number:
                ids[n] = int(by_number[n]["image_id"])
                names[n] = str(by_number[n]["name"])
                num_depths[n] = int(by_number[n].get("num_depth", 0))
        attrs = {**manifest.get("scene_attrs", {}), **attrs} if manifest.get("scene_attrs") else attrs
        attrs = {k: v for k, v in attrs.items() if k not in ("format_version", "kind")}
        if len(set(ids.values())) != len(ids):
            raise MVSNetFormatError(f"{folder / VIEWS_FILE}: image ids are not unique")

    with SceneWriter(scene_path, attrs) as writer:
        for n in numbers:
            camera = read_cam_file(cam_dir / f"{n:08d}_cam.txt", num_depth=num_depth)
            try:
                with PILImage.open(images[n]) as handle:
                    pixels = np.asarray(handle.convert("RGB"), dtype=np.uint8)
            except (UnidentifiedImageError, OSError) as error:
                raise MVSNetFormatError(f"{images[n]}: cannot read the image ({error})") from None
            height, width = pixels.shape[:2]
            K = np.array(camera.K, dtype=np.float64)
            K[:2] *= intrinsics_scale
            K = _shift_principal_point(K, offset)
            if not (0 <= K[0, 2] <= width and 0 <= K[1, 2] <= height):
                log.warning("%s: principal point (%.1f, %.1f) lies outside the %dx%d image; wrong --intrinsics-scale?",
                            cam_dir / f"{n:08d}_cam.txt", K[0, 2], K[1, 2], width, height)
            mask = None
            mask_path = folder / "masks" / f"{n:08d}.png"
            if mask_path.is_file():
                with PILImage.open(mask_path) as handle:
                    mask = np.asarray(handle.convert("L")) > 127
                if mask.shape != (height, width):
                    raise MVSNetFormatError(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]}, image {width}x{height}")
            sources, scores = pairs.get(n, (np.zeros(0, np.int64), np.zeros(0)))
            writer.write_view(
                SceneView(
                    image_id=ids[n], name=names[n], image=pixels, K=K, cam_from_world=camera.cam_from_world,
                    depth_range=np.array([camera.depth_min, camera.depth_max]),
                    num_depth=num_depths.get(n) or camera.num_depth,
                    source_ids=np.array([ids[int(s)] for s in sources], dtype=np.int64), source_scores=scores,
                    mask=mask, point3D_ids=np.zeros(0, np.int64), width=width, height=height,
                )
            )
        writer.write_sparse(np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros((0, 3), np.uint8))
    return Path(scene_path)


def _find_layout(folder: Path) -> tuple[Path, Path, Path]:
    """(images folder, cams folder, pair file): MVSNet's layout, or BlendedMVS's variant with
    ``blended_images/`` and ``cams/pair.txt``."""
    image_dir = next((folder / n for n in ("images", "blended_images") if (folder / n).is_dir()), None)
    cam_dir = folder / "cams"
    pair_path = next((p for p in (folder / "pair.txt", cam_dir / "pair.txt") if p.is_file()), None)
    missing = [name for name, found in (("images/", image_dir), ("cams/", cam_dir.is_dir() or None),
                                        ("pair.txt", pair_path)) if found is None]
    if missing:
        raise MVSNetFormatError(f"{folder}: missing {', '.join(missing)} (expected an MVSNet layout: images/, "
                                "cams/, pair.txt; or BlendedMVS's blended_images/, cams/, cams/pair.txt)")
    return image_dir, cam_dir, pair_path


def _read_manifest(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MVSNetFormatError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != VIEWS_KIND or not isinstance(manifest.get("views"), list):
        raise MVSNetFormatError(f"{path}: not a {VIEWS_KIND} file")
    for entry in manifest["views"]:
        if not (isinstance(entry, dict) and isinstance(entry.get("number"), int) and isinstance(entry.get("image_id"), int)
                and isinstance(entry.get("name"), str)):
            raise MVSNetFormatError(f"{path}: each view needs integer 'number', 'image_id' and a string 'name', got {entry!r}"[:300])
    return manifest
