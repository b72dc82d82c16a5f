"""A readable summary of any selfmvs HDF5 file, of a network checkpoint (``.pt``), or of a COLMAP
model folder: what ``selfmvs inspect`` prints (:mod:`pipeline.tools.inspect`).

For files with a ``/views`` group (scene.h5, depth.h5, gt/depth.h5, fused masks, ...) it prints the
kind, the format version, the file attributes, what each view holds (units from the datasets'
attributes) and one line per view with sizes and value ranges (depth min / max and the fraction of
valid pixels, confidence mean, mask coverage, ...); other groups, and HDF5 files it does not know,
are shown as a generic tree of groups and datasets with shapes, types, ranges and attributes.

:func:`summarize` returns the same facts as plain data (for tests and scripts); :func:`describe`
formats them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

# Datasets larger than this many elements are listed but not read (a summary must stay quick).
MAX_ELEMENTS_READ = 64 * 1024 * 1024


class InspectError(ValueError):
    """A file that cannot be inspected (missing, not HDF5); the message names the file."""


# ------------------------------------------------------------------------------------------- facts


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "SO":
            return [_plain(v) for v in value.tolist()]
        return value
    return value


def _attrs(obj) -> dict[str, Any]:
    out = {}
    for key in obj.attrs:
        try:
            out[key] = _plain(obj.attrs[key])
        except (OSError, TypeError, ValueError) as error:  # an attribute h5py cannot decode
            out[key] = f"<unreadable: {error}>"
    return out


def array_stats(data: np.ndarray, zero_is_invalid: bool = False) -> dict[str, Any]:
    """Value summary of one array.

    Floats: ``valid`` = finite (and non-zero when ``zero_is_invalid``, as in depth maps where 0 means
    "no estimate"), the valid fraction, min / max / mean over valid values. Booleans: the fraction
    that is true. Integers: min / max (and the mean for uint8 images).
    """
    stats: dict[str, Any] = {"shape": tuple(data.shape), "dtype": str(data.dtype)}
    if data.size == 0:
        return stats
    if data.dtype == bool:
        stats["true_fraction"] = float(np.count_nonzero(data)) / data.size
    elif data.dtype.kind in "iu":
        stats["min"], stats["max"] = int(data.min()), int(data.max())
        if data.dtype == np.uint8:
            stats["mean"] = float(data.mean())
    elif data.dtype.kind == "f":
        valid = np.isfinite(data) & (data != 0) if zero_is_invalid else np.isfinite(data)
        count = int(np.count_nonzero(valid))
        stats["valid_fraction"] = count / data.size
        if count:
            values = data[valid]
            stats["min"], stats["max"], stats["mean"] = float(values.min()), float(values.max()), float(values.mean())
        stats["nonfinite"] = int(data.size - np.count_nonzero(np.isfinite(data)))
    return stats


def _dataset_facts(dataset, zero_is_invalid: bool = False, read: bool = True) -> dict[str, Any]:
    facts: dict[str, Any] = {"shape": tuple(dataset.shape), "dtype": str(dataset.dtype), "attrs": _attrs(dataset)}
    if not read:
        return facts
    if dataset.dtype.kind in "biuf" and dataset.size <= MAX_ELEMENTS_READ:
        facts.update(array_stats(dataset[()], zero_is_invalid))
    elif dataset.size > MAX_ELEMENTS_READ:
        facts["note"] = f"not read: {dataset.size} elements"
    return facts


def _tree(group, prefix: str) -> list[dict[str, Any]]:
    import h5py

    entries = []
    for key in group:
        try:
            item = group[key]
        except (KeyError, OSError) as error:  # dangling links, missing external files
            entries.append({"path": f"{prefix}/{key}", "type": "unreadable", "note": str(error)})
            continue
        path = f"{prefix}/{key}"
        if isinstance(item, h5py.Dataset):
            entries.append({"path": path, "type": "dataset", **_dataset_facts(item)})
        elif isinstance(item, h5py.Group):
            entries.append({"path": path, "type": "group", "attrs": _attrs(item)})
            entries.extend(_tree(item, path))
    return entries


def _open(path: Path):
    import h5py

    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise InspectError(f"{path}: is a folder; inspect takes one HDF5 file (scene.h5, depth.h5, ...)")
    if not h5py.is_hdf5(path):
        with open(path, "rb") as handle:
            head = handle.read(16)
        hint = ""
        if head.startswith(b"ply"):
            hint = " (it looks like a PLY point cloud)"
        elif head.lstrip()[:1] in (b"{", b"["):
            hint = " (it looks like JSON)"
        elif head.startswith(b"PK"):
            hint = " (it looks like a zip archive, e.g. a torch checkpoint)"
        raise InspectError(f"{path}: not an HDF5 file; it starts with {head!r}{hint}")
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise InspectError(f"{path}: HDF5 signature found but the file cannot be opened ({error})") from None


def summarize(path: str | os.PathLike, detail_views: int | None = None) -> dict[str, Any]:
    """Facts about an HDF5 file as plain data.

    Args:
        detail_views: read every dataset of the first this many views only (None: all); later views
            have their float maps (depth, confidence) read for the totals, the rest by shape only.

    Returns:
        ``{"path", "size_bytes", "kind", "format_version", "attrs", "views": {image_id: {"attrs",
        "datasets": {name: stats}}} or None, "tree": [entries of everything outside /views]}``.

    Raises:
        FileNotFoundError: no such file.
        InspectError: not an HDF5 file (the message says what it looks like instead).
    """
    import h5py

    path = Path(path)
    with _open(path) as handle:
        attrs = _attrs(handle)
        summary: dict[str, Any] = {
            "path": str(path),
            "size_bytes": path.stat().st_size,
            "kind": attrs.get("kind"),
            "format_version": attrs.get("format_version"),
            "attrs": {k: v for k, v in attrs.items() if k not in ("kind", "format_version")},
            "views": None,
            "tree": [],
        }
        views_group = handle.get("views")
        if isinstance(views_group, h5py.Group):
            order = _view_order(views_group)
            views = {}
            for position, key in enumerate(order):
                group = views_group[key]
                if not isinstance(group, h5py.Group):
                    continue
                view_attrs = _attrs(group)
                datasets = {
                    name: _dataset_facts(
                        item,
                        zero_is_invalid=_is_map(item.shape, view_attrs),
                        read=(detail_views is None or position < detail_views
                              or (item.dtype.kind == "f" and _is_map(item.shape, view_attrs))),
                    )
                    for name, item in group.items()
                    if isinstance(item, h5py.Dataset)
                }
                views[key] = {"attrs": view_attrs, "datasets": datasets}
            summary["views"] = views
            summary["views_attrs"] = _attrs(views_group)
        for key in handle:
            if key == "views" and summary["views"] is not None:
                continue
            item = handle[key]
            if isinstance(item, h5py.Dataset):
                summary["tree"].append({"path": f"/{key}", "type": "dataset", **_dataset_facts(item)})
            else:
                summary["tree"].append({"path": f"/{key}", "type": "group", "attrs": _attrs(item)})
                summary["tree"].extend(_tree(item, f"/{key}"))
    return summary


def _is_map(shape: tuple, view_attrs: dict[str, Any]) -> bool:
    """A per-pixel map (depth, confidence) where 0 means "no value", not a list such as points2D."""
    if "width" in view_attrs and "height" in view_attrs:
        return tuple(shape) == (int(view_attrs["height"]), int(view_attrs["width"]))
    return len(shape) == 2 and shape[1] > 4


def _view_order(views_group) -> list[str]:
    """File order: the ``image_ids`` attribute, else creation order when tracked, else by number."""
    keys = list(views_group.keys())
    if "image_ids" in views_group.attrs:
        listed = [str(int(i)) for i in np.asarray(views_group.attrs["image_ids"]).reshape(-1)]
        return [k for k in listed if k in views_group] + [k for k in keys if k not in set(listed)]
    import h5py

    if views_group.id.get_create_plist().get_link_creation_order() & h5py.h5p.CRT_ORDER_TRACKED:
        return keys  # h5py iterates in creation order
    return sorted(keys, key=lambda k: (0, int(k)) if k.lstrip("-").isdigit() else (1, k))


# ---------------------------------------------------------------------------------------- formatting


def _number(value: float) -> str:
    return f"{value:.4g}"


def _short(value: Any, limit: int = 100) -> str:
    if isinstance(value, np.ndarray):
        if value.size <= 12 and value.dtype.kind in "biuf":
            text = np.array2string(value, precision=4, separator=", ", suppress_small=True).replace("\n", "")
        else:
            text = f"array {value.dtype} {tuple(value.shape)}"
    else:
        text = str(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _stats_text(facts: dict[str, Any]) -> str:
    shape = facts["shape"]
    shape = "scalar" if not shape else f"({shape[0]},)" if len(shape) == 1 else "x".join(str(s) for s in shape)
    parts = [f"{shape} {facts['dtype']}"]
    if "true_fraction" in facts:
        parts.append(f"{100 * facts['true_fraction']:.1f}% true")
    if "valid_fraction" in facts:
        if "min" in facts:
            parts.append(f"[{_number(facts['min'])}, {_number(facts['max'])}] mean {_number(facts['mean'])}")
        parts.append(f"valid {100 * facts['valid_fraction']:.1f}%")
        if facts.get("nonfinite"):
            parts.append(f"{facts['nonfinite']} non-finite")
    elif "min" in facts:
        parts.append(f"[{facts['min']}, {facts['max']}]" + (f" mean {facts['mean']:.1f}" if "mean" in facts else ""))
    if "note" in facts:
        parts.append(f"({facts['note']})")
    return " ".join(parts)


def _units(attrs: dict[str, Any]) -> str:
    bits = [f"{key}: {_short(attrs[key], 90)}" for key in ("units", "frame", "description") if key in attrs]
    return "; ".join(bits)


def describe(path: str | os.PathLike, max_views: int | None = 20) -> str:
    """The readable summary that ``selfmvs inspect`` prints (``max_views=None`` lists all views).

    A folder holding a COLMAP model (a scene folder, ``sparse/`` or ``sparse/0/``) gets a summary of
    the model instead.
    """
    if Path(path).is_dir():
        return describe_colmap_model(path, max_views=max_views)
    if _is_zip(Path(path)):
        return describe_checkpoint(path)
    summary = summarize(path, detail_views=max_views)
    lines = [f"{summary['path']}  ({summary['size_bytes'] / 2**20:.2f} MiB, HDF5)"]
    kind = summary["kind"]
    lines.append(f"kind: {kind if kind is not None else '(none: not a selfmvs file; generic view)'}"
                 f"   format_version: {summary['format_version'] if summary['format_version'] is not None else '(none)'}")
    if summary["attrs"]:
        lines.append("file attributes:")
        attrs = summary["attrs"]
        for key, value in attrs.items():
            if key.endswith(("_units", "_frame", "_description")) and key.rsplit("_", 1)[0] in attrs:
                continue
            unit = next((attrs[f"{key}_{s}"] for s in ("units", "frame", "description") if f"{key}_{s}" in attrs), None)
            lines.append(f"  {key}: {_short(value)}" + (f"   [{_short(unit, 80)}]" if unit is not None else ""))
    views = summary["views"]
    if views is not None:
        lines += _describe_views(views, max_views)
    if summary["tree"]:
        lines.append("other contents:" if views is not None else "contents:")
        for entry in summary["tree"]:
            depth = entry["path"].count("/") - 1
            indent = "  " * (depth + 1)
            if entry["type"] == "group":
                lines.append(f"{indent}{entry['path']}/  (group)")
            elif entry["type"] == "dataset":
                lines.append(f"{indent}{entry['path']}  {_stats_text(entry)}")
            else:
                lines.append(f"{indent}{entry['path']}  ({entry['note']})")
            for key, value in entry.get("attrs", {}).items():
                lines.append(f"{indent}    @{key} = {_short(value)}")
    return "\n".join(lines)


def _describe_views(views: dict[str, Any], max_views: int | None) -> list[str]:
    lines = [f"views: {len(views)} (/views/<image_id>)"]
    if not views:
        return lines
    # What a view holds, with units, from the first view that has each dataset / attribute.
    dataset_units: dict[str, str] = {}
    attr_names: list[str] = []
    for view in views.values():
        for name, facts in view["datasets"].items():
            dataset_units.setdefault(name, _units(facts["attrs"]))
        for key in view["attrs"]:
            if key not in attr_names:
                attr_names.append(key)
    lines.append("  each view holds:")
    for name, units in dataset_units.items():
        count = sum(name in v["datasets"] for v in views.values())
        presence = "" if count == len(views) else f" (in {count} of {len(views)} views)"
        lines.append(f"    {name}{presence}" + (f": {units}" if units else ""))
    lines.append(f"    attributes: {', '.join(attr_names)}")
    # Totals over all views for the float maps (depth, confidence, ...).
    for name in dataset_units:
        totals = [v["datasets"][name] for v in views.values() if name in v["datasets"]]
        if totals and all("valid_fraction" in t for t in totals) and all(len(t["shape"]) == 2 for t in totals):
            pixels = sum(int(np.prod(t["shape"])) for t in totals)
            valid = sum(t["valid_fraction"] * int(np.prod(t["shape"])) for t in totals)
            ranged = [t for t in totals if "min" in t]
            text = f"  all views, {name}: valid {100 * valid / max(pixels, 1):.1f}% of {pixels} pixels"
            if ranged:
                text += f", range [{_number(min(t['min'] for t in ranged))}, {_number(max(t['max'] for t in ranged))}]"
            lines.append(text)
    shown = list(views.items()) if max_views is None else list(views.items())[:max_views]
    for key, view in shown:
        attrs = view["attrs"]
        head = f"  [{key}]"
        if "name" in attrs:
            head += f" {attrs['name']}"
        extras = []
        if "K" in attrs and np.shape(attrs["K"]) == (3, 3):
            K = np.asarray(attrs["K"], dtype=np.float64)
            extras.append(f"f=({_number(K[0, 0])}, {_number(K[1, 1])}) c=({_number(K[0, 2])}, {_number(K[1, 2])})")
        if "depth_range" in attrs:
            near, far = np.asarray(attrs["depth_range"], dtype=np.float64).reshape(-1)[:2]
            extras.append(f"depth_range=[{_number(near)}, {_number(far)}]")
        for key_name in ("num_depth",):
            if key_name in attrs:
                extras.append(f"{key_name}={attrs[key_name]}")
        lines.append(head + ("  " + "  ".join(extras) if extras else ""))
        for name, facts in view["datasets"].items():
            lines.append(f"      {name}: {_stats_text(facts)}")
    if len(shown) < len(views):
        lines.append(f"  ... {len(views) - len(shown)} more views (--all lists them)")
    return lines


def describe_colmap_model(path: str | os.PathLike, max_views: int | None = 20) -> str:
    """Cameras, images and points of a COLMAP model folder, with per-image observation counts."""
    from pipeline.colmap import detect_model_ext, find_model_dir, read_model

    try:
        folder = find_model_dir(path)
    except FileNotFoundError as error:
        raise InspectError(f"{path}: is a folder without a COLMAP model; inspect takes an HDF5 file "
                           f"(scene.h5, depth.h5, ...) or a COLMAP model folder ({error})") from None
    ext = detect_model_ext(folder)
    cameras, images, points3D = read_model(folder, ext=ext)
    lines = [f"{folder}  (COLMAP model, {ext})"]
    lines.append(f"cameras: {len(cameras)}")
    for camera in cameras.values():
        params = ", ".join(_number(v) for v in camera.params)
        lines.append(f"  [{camera.id}] {camera.model} {camera.width}x{camera.height}  params: {params}")
    track_lengths = np.array([len(p.image_ids) for p in points3D.values()], dtype=np.int64)
    errors = np.array([p.error for p in points3D.values()], dtype=np.float64)
    text = f"points3D: {len(points3D)}"
    if len(points3D):
        xyz = np.array([p.xyz for p in points3D.values()])
        text += (f", mean track length {track_lengths.mean():.2f}, mean reprojection error "
                 f"{np.nanmean(errors):.3g} px, bounding box {np.round(xyz.min(axis=0), 3).tolist()} .. "
                 f"{np.round(xyz.max(axis=0), 3).tolist()}")
    lines.append(text)
    observations = [int(np.count_nonzero(image.point3D_ids >= 0)) for image in images.values()]
    lines.append(f"images: {len(images)}" + (f", {np.mean(observations):.1f} observations per image on average"
                                               if images else ""))
    shown = list(images.values()) if max_views is None else list(images.values())[:max_views]
    for image, seen in zip(shown, observations):
        centre = np.round(image.projection_center(), 3).tolist()
        lines.append(f"  [{image.id}] {image.name}  camera {image.camera_id}  keypoints {len(image.point3D_ids)}"
                     f"  triangulated {seen}  centre {centre}")
    if len(shown) < len(images):
        lines.append(f"  ... {len(images) - len(shown)} more images (--all lists them)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- checkpoints


def _is_zip(path: Path) -> bool:
    """torch.save's format is a zip archive; anything else (or nothing) is not a checkpoint."""
    if not path.is_file():
        return False
    with open(path, "rb") as handle:
        return handle.read(4) == b"PK\x03\x04"


def describe_checkpoint(path: str | os.PathLike) -> str:
    """What a selfmvs checkpoint holds: training facts, the network's settings (those that differ
    from PatchmatchNet's defaults marked), the weights' size, and whether it can resume training.

    Raises:
        InspectError: a zip file that is not a selfmvs checkpoint, naming the file.
    """
    from pipeline.model import CheckpointError, ModelConfig
    from pipeline.model.checkpoint import read_checkpoint

    path = Path(path)
    try:
        payload = read_checkpoint(path)
    except CheckpointError as error:
        raise InspectError(str(error)) from None
    extra = dict(payload.get("extra") or {})
    lines = [f"{path}  ({path.stat().st_size / 2**20:.2f} MiB, network checkpoint)",
             f"kind: {payload['kind']}   format_version: {payload['format_version']}"]
    if "step" in extra:
        total = f" of {extra['total_steps']}" if "total_steps" in extra else ""
        lines.append(f"training: {extra.get('mode', '?')} run, step {extra['step']}{total}"
                     + (f", recipe {extra['recipe']}" if "recipe" in extra else "")
                     + (f", seed {extra['seed']}" if "seed" in extra else ""))
    if extra.get("scenes"):
        scenes = [Path(str(scene)).name for scene in extra["scenes"]]
        lines.append(f"  trained on {len(scenes)} scene(s): {_short(', '.join(scenes), 120)}")
    if extra.get("note"):
        lines.append(f"note: {extra['note']}")
    lines.append("resumable: yes (optimizer and schedule state inside)" if "optimizer" in extra
                 else "resumable: no (weights only, as shipped)")
    defaults = ModelConfig().to_dict()
    lines.append("network settings (* = differs from PatchmatchNet's default):")
    for key, value in payload["model_config"].items():
        default = defaults.get(key, "(unknown option)")
        changed = value != default
        lines.append(f"  {'*' if changed else ' '} {key}: {_short(value)}" + (f"   (default {_short(default)})" if changed else ""))
    if extra.get("model_overrides"):
        lines.append(f"  set at export: {_short(extra['model_overrides'], 200)}")
    state = payload["state_dict"]
    tensors = [value for value in state.values() if hasattr(value, "numel")]
    parameters = sum(int(value.numel()) for key, value in state.items()
                     if hasattr(value, "numel") and not key.endswith(("running_mean", "running_var", "num_batches_tracked")))
    dtypes = sorted({str(value.dtype).replace("torch.", "") for value in tensors})
    lines.append(f"weights: {len(tensors)} tensors, {parameters:,} parameters ({', '.join(dtypes)})")
    return "\n".join(lines)
