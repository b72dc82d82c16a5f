"""Figures of a scene's results (matplotlib, Agg backend, PNG files).

Every function takes arrays (or file paths of small tables) and writes one PNG atomically; none
reads selfmvs HDF5 files itself (the report stage does), so each is testable with plain arrays.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.formats.atomic import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike, dpi: int) -> Path:
    plt = _pyplot()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return Path(path)


def shared_depth_range(depths: Sequence[np.ndarray]) -> tuple[float, float]:
    """The 2nd and 98th percentiles of all valid (> 0, finite) depths: one colour scale for all views."""
    values = [d[(d > 0) & np.isfinite(d)] for d in depths]
    values = np.concatenate([v[:: max(1, v.size // 200_000)] for v in values]) if values else np.zeros(0)
    if values.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(values, [2, 98])
    if high <= low:
        high = low + max(abs(low) * 1e-3, 1e-6)
    return float(low), float(high)


def view_figure(
    path: str | os.PathLike,
    title: str,
    depth: np.ndarray,
    depth_range: tuple[float, float],
    image: np.ndarray | None = None,
    confidence: np.ndarray | None = None,
    relative_error: np.ndarray | None = None,
    error_max: float = 0.05,
    mask: np.ndarray | None = None,
    filled: np.ndarray | None = None,
    dpi: int = 100,
) -> Path:
    """One view: image, depth, confidence, relative error vs GT, fusion mask and the pixels whose
    depth is a low-texture region's plane (``filled``, infer.plane_fill), side by side.

    Depths share ``depth_range`` across views; confidences use [0, 1]; errors [0, error_max]. Pixels
    without a value are drawn grey.

    Shape:
        depth, confidence, relative_error, mask, filled: (H, W); image: (H, W, 3) uint8.
    """
    plt = _pyplot()
    import matplotlib

    panels = []
    if image is not None:
        panels.append(("image", image, None))
    panels.append(("depth (scene units)", np.where(depth > 0, depth, np.nan), ("viridis", *depth_range)))
    if confidence is not None:
        panels.append(("confidence", confidence, ("magma", 0.0, 1.0)))
    if relative_error is not None:
        panels.append((f"|d - d_gt| / d_gt (clipped at {error_max:g})", relative_error, ("inferno", 0.0, error_max)))
    if mask is not None:
        panels.append(("kept by fusion", mask.astype(np.float32), ("gray", 0.0, 1.0)))
    if filled is not None:
        panels.append(("plane-filled (low texture)", filled.astype(np.float32), ("gray", 0.0, 1.0)))
    height, width = depth.shape
    panel_width = 3.2
    fig, axes = plt.subplots(
        1, len(panels), figsize=(panel_width * len(panels), panel_width * height / width + 0.9), squeeze=False
    )
    for axis, (name, data, scale) in zip(axes[0], panels):
        axis.set_title(name, fontsize=9)
        axis.set_xticks([])
        axis.set_yticks([])
        if scale is None:
            axis.imshow(data, interpolation="nearest")
            continue
        cmap_name, vmin, vmax = scale
        cmap = matplotlib.colormaps[cmap_name].with_extremes(bad="0.6")
        shown = axis.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        fig.colorbar(shown, ax=axis, fraction=0.046, pad=0.02).ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path, dpi)


def _read_table(path: str | os.PathLike, delimiter: str) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.reader(handle, delimiter=delimiter) if row]
    if not rows:
        raise ValueError(f"{path}: empty table")
    return rows[0], rows[1:]


def _numeric_columns(header: list[str], rows: list[list[str]]) -> dict[str, np.ndarray]:
    columns = {}
    for index, name in enumerate(header):
        values = []
        for row in rows:
            try:
                values.append(float(row[index]))
            except (ValueError, IndexError):
                values.append(np.nan)
        array = np.asarray(values)
        if np.isfinite(array).any():
            columns[name] = array
    return columns


def training_figure(path: str | os.PathLike, csv_path: str | os.PathLike, dpi: int = 100) -> Path:
    """Training curves of a ``losses.csv`` (:mod:`pipeline.formats.loss_log`, any format version).

    Raises:
        ValueError: naming the file when it is not a loss log (no numeric ``step`` column).
    """
    from pipeline.formats.loss_log import read_loss_log

    return loss_figure(path, read_loss_log(csv_path), dpi=dpi)


def loss_figure(path: str | os.PathLike, log, dpi: int = 100) -> Path:
    """The loss and each term against the step, one log-scale axis (the one plot of a loss log:
    ``losses.png`` of ``selfmvs train`` and the report's training figure).

    Args:
        log: a :class:`pipeline.formats.loss_log.LossLog`.
    """
    plt = _pyplot()
    steps = [row["step"] for row in log.rows]
    figure, axis = plt.subplots(figsize=(8, 4.5))
    for name in log.loss_columns:
        values = [row.get(name, float("nan")) for row in log.rows]
        if any(v > 0 for v in values):  # a log axis shows positive values only
            axis.plot(steps, values, label=name, linewidth=1.6 if name == "loss" else 1.0)
    axis.set_yscale("log")
    axis.set_xlabel("step")
    axis.set_ylabel("loss (terms unweighted)")
    axis.grid(True, which="both", alpha=0.3)
    if axis.lines:
        axis.legend(loc="upper right", fontsize="small")
    figure.tight_layout()
    return _save(figure, path, dpi)


def read_benchmarks(paths: Sequence[str | os.PathLike]) -> list[dict]:
    """Snakemake ``benchmark:`` TSV files -> [{"stage", "seconds", "max_rss_mib", ...}] (means over repeats)."""
    stages = []
    for path in paths:
        header, rows = _read_table(path, "\t")
        columns = _numeric_columns(header, rows)
        if "s" not in columns:
            raise ValueError(f"{path}: not a Snakemake benchmark file (no 's' column; header {header})")
        entry = {"stage": Path(path).stem, "seconds": float(np.nanmean(columns["s"]))}
        for name in ("max_rss", "cpu_time", "mean_load"):
            if name in columns:
                entry[name] = float(np.nanmean(columns[name]))
        stages.append(entry)
    return stages


def timings_figure(path: str | os.PathLike, stages: list[dict], dpi: int = 100) -> Path:
    """Bar chart of the wall time (and peak RSS where given) of each stage."""
    plt = _pyplot()
    names = [s["stage"] for s in stages]
    has_rss = all("max_rss" in s and np.isfinite(s["max_rss"]) for s in stages)
    fig, axes = plt.subplots(1, 2 if has_rss else 1, figsize=(9 if has_rss else 5, 0.45 * len(names) + 1.5), squeeze=False)
    axes[0, 0].barh(names, [s["seconds"] for s in stages], color="tab:blue")
    axes[0, 0].set_xlabel("wall time (s)")
    if has_rss:
        axes[0, 1].barh(names, [s["max_rss"] for s in stages], color="tab:orange")
        axes[0, 1].set_xlabel("peak RSS (MB, Snakemake max_rss)")
    for axis in axes[0]:
        axis.invert_yaxis()
        axis.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path, dpi)


def scores_figure(path: str | os.PathLike, metrics: dict, dpi: int = 100) -> Path | None:
    """Precision, recall and F-score against tau from eval.json metrics (None when there are none)."""
    rows = sorted(
        (entry["tau"], name.split("@")[0], entry["value"])
        for name, entry in metrics.items()
        if "@" in name and "tau" in entry and entry["value"] is not None
    )
    if not rows:
        return None
    plt = _pyplot()
    fig, axis = plt.subplots(figsize=(5, 3.2))
    for kind, style in (("precision", "o-"), ("recall", "s-"), ("fscore", "^-")):
        points = [(tau, value) for tau, name, value in rows if name == kind]
        if points:
            axis.plot(*zip(*points), style, label=kind)
    axis.set_xscale("log")
    from matplotlib.ticker import NullFormatter

    axis.xaxis.set_minor_formatter(NullFormatter())
    axis.set_ylim(0, 1.02)
    axis.set_xlabel("tau (scene units)")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path, dpi)
