"""``selfmvs report SCENE_H5 DEPTH_H5 FUSED_PLY EVAL_JSON OUT_DIR``: PNG figures and an HTML page.

Sections: depth / confidence maps, the fused cloud and the cameras in 3-D (``cloud.html``, plotly, shown
in a frame; ``plotly.min.js`` beside it, so the folder works offline), metrics table and precision / recall /
F-score curve; optional inputs add ``--scene-dir`` (error maps against ``gt/depth.h5``),
``--training-csv`` (training curves), ``--benchmarks`` (Snakemake benchmark TSVs: stage timings).
The page ``OUT_DIR/index.html`` references the PNGs and ``cloud.html`` beside it by relative names.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

from pipeline.config import ReportConfig
from pipeline.formats.paths import check_outputs_distinct

log = logging.getLogger(__name__)


def run_report(
    scene_h5: str | os.PathLike,
    depth_h5: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    fused_ply: str | os.PathLike | None = None,
    eval_json: str | os.PathLike | None = None,
    scene_dir: str | os.PathLike | None = None,
    training_csv: str | os.PathLike | None = None,
    benchmarks: Sequence[str | os.PathLike] = (),
    config: ReportConfig = ReportConfig(),
    title: str | None = None,
) -> Path:
    """Write the figures and ``index.html`` into ``out_dir``; returns the page's path."""
    # matplotlib, plotly, numpy and h5py are imported here, not at module level: ``selfmvs --help`` stays fast.
    from pipeline.report.page import write_page
    from pipeline.report.sections import (
        cloud_section,
        depth_maps_section,
        evaluation_section,
        timings_section,
        training_section,
    )

    scene_h5, depth_h5, out_dir = Path(scene_h5), Path(depth_h5), Path(out_dir)
    inputs = {"scene": scene_h5, "depth": depth_h5, "cloud": fused_ply, "scores": eval_json, "losses": training_csv}
    check_outputs_distinct({k: v for k, v in inputs.items() if v is not None}, {"report folder": out_dir})
    out_dir.mkdir(parents=True, exist_ok=True)
    title = title or f"selfmvs report: {Path(scene_dir).name if scene_dir else scene_h5.parent.name}"
    notes: list[str] = []
    sections = [depth_maps_section(scene_h5, depth_h5, out_dir, config, notes, fused_ply=fused_ply,
                                   scene_dir=scene_dir)]
    if fused_ply is not None:
        sections.append(cloud_section(scene_h5, Path(fused_ply), out_dir, config))
    if eval_json is not None:
        sections.append(evaluation_section(Path(eval_json), out_dir, config, notes))
    if training_csv is not None:
        sections.append(training_section(Path(training_csv), out_dir, config))
    timings = timings_section(benchmarks, out_dir, config, notes)
    if timings is not None:
        sections.append(timings)
    page = write_page(out_dir / "index.html", title, sections, notes)
    log.info("report written to %s", page)
    return page
