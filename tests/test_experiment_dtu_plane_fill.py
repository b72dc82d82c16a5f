"""experiments/dtu_plane_fill.py: sparse-point agreement of a depth file, views left out by infer included."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from conftest import load_experiment

plane_fill = load_experiment("dtu_plane_fill")

K = np.array([[20.0, 0.0, 10.0], [0.0, 20.0, 8.0], [0.0, 0.0, 1.0]])
H, W = 16, 20


def test_sparse_within_counts_the_points_of_a_view_without_depth_as_misses(tmp_path, monkeypatch):
    """View 1 sees four points on z = 2: one exact, two 5 % off, one without an estimate; view 2 (no source
    view, so selfmvs infer left it out of depth.h5) sees two of them: 1 of 6 pairs is within 1 %."""
    import pipeline.formats.scene_file as scene_file
    from pipeline.formats.depth_file import DepthView, write_depth_file

    pixels = np.array([[2, 3], [12, 3], [15, 12], [5, 10]], float)
    xyz = np.column_stack([(pixels[:, 0] + 0.5 - K[0, 2]) / K[0, 0] * 2, (pixels[:, 1] + 0.5 - K[1, 2]) / K[1, 1] * 2,
                           np.full(4, 2.0)])
    depth = np.full((H, W), 2.0, np.float32)
    depth[3, 12], depth[12, 15], depth[10, 5] = 1.9, 2.1, 0.0
    pose = np.hstack([np.eye(3), np.zeros((3, 1))])
    write_depth_file(tmp_path / "depth.h5", [DepthView(1, "a.png", depth, None, K, pose)], {"kind": "selfmvs.depth"})
    scene = SimpleNamespace(points3D_ids=np.array([10, 11, 12, 13]), points3D_xyz=xyz,
                            views={1: SimpleNamespace(point3D_ids=np.array([10, 11, 12, 13])),
                                   2: SimpleNamespace(point3D_ids=np.array([10, 11]))})
    monkeypatch.setattr(scene_file, "read_scene", lambda path, load_images=True: scene)
    assert plane_fill.sparse_within(tmp_path / "depth.h5", tmp_path / "scene.h5") == pytest.approx(1 / 6)
