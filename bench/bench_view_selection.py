"""Source-view selection on a large synthetic model: 1,000 views, 500,000 points, tracks of 3-8.

    .venv/bin/python -m pytest bench/bench_view_selection.py --benchmark-only -p no:cacheprovider

Cases run side by side so that ratios survive a noisy machine: a tenth-size model (how the time
scales), and the sparse accumulation path (used above 2,000 views) on the full-size model.
"""

from __future__ import annotations

import numpy as np
import pytest

import pipeline.scene.view_selection as view_selection
from pipeline.config import PrepareConfig
from pipeline.scene.view_selection import select_views


def synthetic_model(num_views: int, num_points: int, seed: int = 0):
    """Cameras on a ring looking inwards; each point seen by 3-8 neighbouring views."""
    rng = np.random.default_rng(seed)
    azimuth = np.linspace(0, 2 * np.pi, num_views, endpoint=False)
    centers = np.stack([10 * np.cos(azimuth), 10 * np.sin(azimuth), rng.normal(0, 0.5, num_views)], axis=1)
    points = rng.normal(size=(num_points, 3))
    lengths = rng.integers(3, 9, size=num_points)
    first = rng.integers(0, num_views, size=num_points)
    # The track of a point: views first, first + 1, ... (neighbours on the ring), as a real rig gives.
    obs_points = np.repeat(np.arange(num_points), lengths)
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    obs_images = (np.repeat(first, lengths) + offsets) % num_views
    image_ids = rng.permutation(np.arange(1, 3 * num_views, 3))  # non-contiguous, shuffled
    return image_ids, centers, points, obs_points, obs_images


@pytest.mark.parametrize(
    "num_views,num_points,path",
    [(1000, 500_000, "dense"), (1000, 500_000, "sparse"), (100, 50_000, "dense")],
    ids=["1000x500k-dense", "1000x500k-sparse", "100x50k-dense"],
)
def test_select_views(benchmark, monkeypatch, num_views, num_points, path):
    if path == "sparse":
        monkeypatch.setattr(view_selection, "_DENSE_LIMIT", 0)
    model = synthetic_model(num_views, num_points)
    benchmark.pedantic(select_views, args=model, kwargs={"options": PrepareConfig()}, rounds=3, iterations=1)
