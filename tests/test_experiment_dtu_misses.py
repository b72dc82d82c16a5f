"""experiments/dtu_sparse_misses.py: which (view, sparse point) pairs a depth map misses, and its edge measure."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from conftest import load_experiment

misses = load_experiment("dtu_sparse_misses")

K = np.array([[20.0, 0.0, 10.0], [0.0, 20.0, 8.0], [0.0, 0.0, 1.0]])
H, W = 16, 20


def test_local_jump_marks_a_depth_step_and_nothing_on_a_plane():
    depth = np.full((H, W), 2.0)
    assert np.all(misses.local_jump(depth) == 0)
    depth[:, 10:] = 3.0
    jump = misses.local_jump(depth)
    assert np.allclose(jump[:, 8:10], 0.5) and np.allclose(jump[:, 10:12], 1 / 3)  # (3 - 2) / own depth
    assert np.all(jump[:, :8] == 0) and np.all(jump[:, 12:] == 0)


def test_view_pairs_signs_each_points_error(tmp_path):
    from pipeline.formats.depth_file import DepthView, write_depth_file

    # a camera at the origin looking along +z; points on z = 2 at pixel centres (col, row)
    pixels = np.array([[2, 3], [12, 3], [15, 12], [5, 10]], float)
    xyz = np.column_stack([(pixels[:, 0] + 0.5 - K[0, 2]) / K[0, 0] * 2, (pixels[:, 1] + 0.5 - K[1, 2]) / K[1, 1] * 2,
                           np.full(4, 2.0)])
    depth = np.full((H, W), 2.0, np.float32)
    depth[3, 12] = 1.9  # 5 % too near
    depth[12, 15] = 2.1  # 5 % too far
    depth[10, 5] = 0.0  # no estimate
    pose = np.hstack([np.eye(3), np.zeros((3, 1))])
    write_depth_file(tmp_path / "depth.h5", [DepthView(1, "a.png", depth, None, K, pose)], {"kind": "selfmvs.depth"})
    scene = SimpleNamespace(points3D_ids=np.array([10, 11, 12, 13]), points3D_xyz=xyz,
                            views={1: SimpleNamespace(name="a.png", point3D_ids=np.array([10, 11, 12, 13]))})
    ((image_id, name, cols, rows, signed, tracks, jump, size),) = list(misses.view_pairs(scene, tmp_path / "depth.h5"))
    assert (image_id, name, size) == (1, "a.png", (H, W))
    assert list(cols) == [2, 12, 15, 5] and list(rows) == [3, 3, 12, 10] and list(tracks) == [1, 1, 1, 1]
    assert np.allclose(signed[:3], [0.0, -0.05, 0.05], atol=1e-6) and signed[3] == -np.inf
