"""Report pictures (matplotlib PNGs) and the HTML page that shows them."""

from pipeline.report.figures import (
    cloud_figure,
    read_benchmarks,
    scores_figure,
    shared_depth_range,
    timings_figure,
    training_figure,
    view_figure,
)
from pipeline.report.page import Figure, Section, table, write_page

__all__ = [
    "Figure",
    "Section",
    "cloud_figure",
    "read_benchmarks",
    "scores_figure",
    "shared_depth_range",
    "table",
    "timings_figure",
    "training_figure",
    "view_figure",
    "write_page",
]
