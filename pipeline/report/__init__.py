"""Report pictures (matplotlib PNGs, the interactive plotly cloud) and the HTML page that shows them."""

from pipeline.report.cloud import CameraPose, cloud_page, subsample
from pipeline.report.figures import (
    read_benchmarks,
    scores_figure,
    shared_depth_range,
    timings_figure,
    training_figure,
    view_figure,
)
from pipeline.report.page import Embedded, Figure, Section, table, write_page

__all__ = [
    "CameraPose",
    "Embedded",
    "Figure",
    "Section",
    "cloud_page",
    "read_benchmarks",
    "scores_figure",
    "shared_depth_range",
    "subsample",
    "table",
    "timings_figure",
    "training_figure",
    "view_figure",
    "write_page",
]
