"""experiments/cross_view_consensus.py: a view's depth repaired, or flagged, where its sources agree on another."""

from __future__ import annotations

import numpy as np
import torch
from conftest import load_experiment

from pipeline.formats.depth_file import DepthView

consensus = load_experiment("cross_view_consensus")

K = np.array([[20.0, 0.0, 12.0], [0.0, 20.0, 8.0], [0.0, 0.0, 1.0]])
H, W = 16, 24


def view(image_id: int, x: float, depth: np.ndarray) -> DepthView:
    # a camera at (x, 0, 0) looking along +z; the wall z = 2 lies at depth 2 in every view, and
    # a baseline of 0.1 shifts it by exactly one pixel (f 0.1 / 2)
    pose = np.hstack([np.eye(3), np.array([[-x], [0.0], [0.0]])])
    return DepthView(image_id, f"{image_id}.png", depth.astype(np.float32), np.ones((H, W), np.float32), K, pose)


def wall() -> np.ndarray:
    return np.full((H, W), 2.0)


def test_agreeing_counts_the_candidates_within_the_tolerance_of_each():
    stack = torch.tensor([[[2.0]], [[2.01]], [[2.5]], [[0.0]]], dtype=torch.float64)
    counts = torch.stack([consensus.agreeing(stack, candidate, 0.01) for candidate in stack])
    assert counts[:, 0, 0].tolist() == [2, 2, 1, 0]  # 2 and 2.01 agree; 2.5 alone; no depth: no support


def test_replace_takes_the_sources_depth_where_the_own_one_is_unsupported():
    bad = wall()
    bad[6:10, 8:14] = 1.8  # 10 % too near: no source agrees
    reference = view(1, 0.0, bad)
    sources = [view(i, 0.1 * (i - 1), wall()) for i in (2, 3, 4)]
    repaired, share = consensus.consensus(reference, sources, "replace", 0.01, keep_support=3, min_support=2, margin=1)
    assert np.allclose(repaired.depth[6:10, 8:14], 2.0, rtol=1e-6)
    untouched = np.ones((H, W), bool)
    untouched[6:10, 8:14] = False
    assert np.array_equal(repaired.depth[untouched], reference.depth[untouched])  # supported pixels keep their own
    assert share == 24 / (H * W)
    assert np.array_equal(repaired.confidence, reference.confidence)


def test_replace_needs_enough_agreeing_sources():
    bad = wall()
    bad[6:10, 8:14] = 1.8
    disagreeing = wall() * 1.05  # the two sources do not agree with each other
    sources = [view(2, 0.1, wall()), view(3, 0.2, disagreeing)]
    repaired, share = consensus.consensus(view(1, 0.0, bad), sources, "replace", 0.01, keep_support=3, min_support=3,
                                          margin=1)
    assert share == 0 and np.array_equal(repaired.depth, bad.astype(np.float32))


def test_filter_zeroes_the_confidence_of_contradicted_pixels_only():
    bad = wall()
    bad[6:10, 8:14] = 1.8
    sources = [view(i, 0.1 * (i - 1), wall()) for i in (2, 3, 4)]
    flagged, share = consensus.consensus(view(1, 0.0, bad), sources, "filter", 0.01, keep_support=3, min_support=2,
                                         margin=1)
    assert np.array_equal(flagged.depth, bad.astype(np.float32))
    assert np.all(flagged.confidence[6:10, 8:14] == 0)
    rest = np.ones((H, W), bool)
    rest[6:10, 8:14] = False
    assert np.all(flagged.confidence[rest] == 1) and share == 24 / (H * W)
