"""`selfmvs pseudo-labels`: the depth fusion kept becomes the self-training labels."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

import torch

from pipeline.formats.depth_file import DepthView, read_depth_attrs, read_depth_file, write_depth_file
from pipeline.fusion.transfer import transfer_depth, transfer_labels, zbuffer
from pipeline.stages.labels import LabelsInputError, run_pseudo_labels

K = np.array([[50.0, 0, 16], [0, 50.0, 12], [0, 0, 1]])
POSE = np.hstack([np.eye(3), np.zeros((3, 1))])


def _depth(tmp_path, kind="selfmvs.depth"):
    rng = np.random.default_rng(0)
    views = [DepthView(i, f"{i}.png", 1 + rng.random((24, 32)), rng.random((24, 32)), K, POSE) for i in (3, 7)]
    views[1].depth[0, 0] = np.nan
    path = tmp_path / "depth.h5"
    write_depth_file(path, views, {"kind": kind, "checkpoint": "model.pt"})
    return path, {v.image_id: v.depth for v in views}


def _masks(tmp_path, masks, kind="selfmvs.fused_masks", format_version=1):
    path = tmp_path / "fused_masks.h5"
    with h5py.File(path, "w") as handle:
        handle.attrs["kind"] = kind
        handle.attrs["format_version"] = format_version
        for image_id, mask in masks.items():
            handle.create_dataset(f"views/{image_id}/mask", data=mask.astype(np.uint8))
    return path


def test_labels_are_the_kept_depth(tmp_path):
    depth_h5, depths = _depth(tmp_path)
    rng = np.random.default_rng(1)
    masks = {i: rng.random((24, 32)) < 0.6 for i in depths}
    masks[7][0, 0] = True  # a kept pixel without a finite depth gets no label
    summary = run_pseudo_labels(depth_h5, _masks(tmp_path, masks), tmp_path / "labels.h5")
    labels = read_depth_file(tmp_path / "labels.h5")
    assert sorted(labels) == [3, 7]
    for image_id, depth in depths.items():
        keep = masks[image_id] & np.isfinite(depth)
        np.testing.assert_array_equal(labels[image_id].depth, np.where(keep, depth, 0).astype(np.float32))
        assert labels[image_id].confidence is None and labels[image_id].name == f"{image_id}.png"
        np.testing.assert_array_equal(labels[image_id].K, K)
    attrs = read_depth_attrs(tmp_path / "labels.h5")
    assert attrs["kind"] == "selfmvs.depth_labels" and attrs["checkpoint"] == "model.pt"
    expected = sum(int((masks[i] & np.isfinite(depths[i])).sum()) for i in depths) / (2 * 24 * 32)
    assert summary == {"views": 2, "labelled": pytest.approx(expected), "own": pytest.approx(expected)}
    assert attrs["labelled_fraction"] == pytest.approx(expected) and not attrs["transfer"]


def test_almost_no_labels_is_said(tmp_path, caplog):
    depth_h5, depths = _depth(tmp_path)
    with caplog.at_level("WARNING"):
        summary = run_pseudo_labels(depth_h5, _masks(tmp_path, {i: np.zeros((24, 32), bool) for i in depths}),
                                    tmp_path / "labels.h5", transfer=True)
    assert summary["labelled"] == 0 and "only 0.00 % of the pixels have a label" in caplog.text


def test_cli_and_bad_input(tmp_path, capsys):
    from pipeline.cli import main

    depth_h5, depths = _depth(tmp_path)
    good = {i: np.ones((24, 32), bool) for i in depths}
    assert main(["pseudo-labels", str(depth_h5), str(_masks(tmp_path, good)), str(tmp_path / "l.h5")]) == 0
    assert (tmp_path / "l.h5").is_file() and not list(tmp_path.glob("*.partial"))
    with pytest.raises(LabelsInputError, match=r"fused_masks\.h5: no mask of view 7"):
        run_pseudo_labels(depth_h5, _masks(tmp_path, {3: good[3]}), tmp_path / "x.h5")
    with pytest.raises(LabelsInputError, match=r"view 3: mask \(12, 16\) but depth \(24, 32\)"):
        run_pseudo_labels(depth_h5, _masks(tmp_path, {3: np.ones((12, 16)), 7: good[7]}), tmp_path / "x.h5")
    with pytest.raises(LabelsInputError, match="not a fused_masks.h5"):
        run_pseudo_labels(depth_h5, _masks(tmp_path, good, kind="other"), tmp_path / "x.h5")
    with pytest.raises(LabelsInputError, match=r"fused_masks\.h5: format_version 2; this selfmvs reads fused masks of version 1"):
        run_pseudo_labels(depth_h5, _masks(tmp_path, good, format_version=2), tmp_path / "x.h5")
    gt_h5, _ = _depth(tmp_path, kind="selfmvs.gt_depth")
    code = main(["pseudo-labels", str(gt_h5), str(_masks(tmp_path, good)), str(tmp_path / "x.h5")])
    assert code == 1 and "labels are made from a depth.h5 of selfmvs infer" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="nothing.h5"):
        run_pseudo_labels(depth_h5, tmp_path / "nothing.h5", tmp_path / "x.h5")
    assert not (tmp_path / "x.h5").exists()


def test_transfer_takes_the_depth_most_views_agree_on():
    # Three other views' z-buffered candidates at three pixels (0: none).
    candidates = torch.tensor([[[5.0, 3.0, 0.0]], [[5.02, 8.0, 4.0]], [[9.0, 8.01, 0.0]]], dtype=torch.float64)
    two = transfer_depth(candidates, support=2)
    # 5.0 and 5.02 agree within 1 %; the lone 3.0 (background through a gap, say) is not taken; 4.0 alone neither.
    np.testing.assert_allclose(two.numpy(), [[5.0, 8.0, 0.0]])
    # One view suffices at support 1, but where others agree on another depth, theirs wins.
    np.testing.assert_allclose(transfer_depth(candidates, support=1).numpy(), [[5.0, 8.0, 4.0]])
    assert transfer_depth(candidates, support=4).eq(0).all()
    with pytest.raises(ValueError, match="support"):
        transfer_depth(candidates, support=0)
    # Two views agree on a nearer surface, three on a farther one: the three win.
    column = torch.tensor([2.0, 2.01, 6.0, 6.02, 6.03, 0.0], dtype=torch.float64).view(6, 1, 1)
    assert float(transfer_depth(column, support=2)) == 6.0
    assert float(transfer_depth(column[[0, 1, 2, 3, 5]], support=2)) == 2.0  # a tie: the nearer


def test_zbuffer_keeps_the_nearest_point_of_a_pixel():
    K33 = np.array([[10.0, 0, 2], [0, 10.0, 2], [0, 0, 1]])
    # Two points on the ray of pixel (row 2, col 2) (centre at 2.5, 2.5), one behind the other; one behind the camera.
    ray = np.array([0.05, 0.05, 1.0])
    points = torch.tensor(np.stack([10 * ray, 4 * ray, -3 * ray]), dtype=torch.float64)
    depth = zbuffer(points, K33, POSE, (4, 4)).numpy()
    assert depth[2, 2] == pytest.approx(4.0) and (np.delete(depth.ravel(), 10) == 0).all()


def _plane_views():
    """Views 1 and 2 of a fronto-parallel plane 10 units away, 2 shifted by 0.5 along x (2.5 px)."""
    shifted = np.hstack([np.eye(3), np.array([[-0.5], [0.0], [0.0]])])
    cameras = {1: (K, POSE), 2: (K, shifted)}
    own = np.full((24, 32), 10.0, np.float32)
    own[:, 16:] = 0  # view 1's own fusion kept only its left half
    return {1: own, 2: np.full((24, 32), 10.0, np.float32)}, cameras


def test_transfer_labels_fill_what_a_view_dropped_from_the_others():
    depths, cameras = _plane_views()
    labels = transfer_labels(depths, cameras, support=1)
    np.testing.assert_allclose(labels[1], 10.0, rtol=1e-6)  # the right half comes from view 2's points
    np.testing.assert_array_equal(labels[2], depths[2])  # a view's own labels stay as they are
    # Asking two views to agree when only one other exists carries nothing.
    np.testing.assert_array_equal(transfer_labels(depths, cameras, support=2)[1], depths[1])


def test_pseudo_labels_transfer_through_the_cli(tmp_path):
    from pipeline.cli import main

    depths, cameras = _plane_views()
    views = [DepthView(i, f"{i}.png", np.full((24, 32), 10.0, np.float32), np.ones((24, 32), np.float32), *cameras[i])
             for i in (1, 2)]
    write_depth_file(tmp_path / "depth.h5", views, {"kind": "selfmvs.depth", "checkpoint": "model.pt"})
    masks = _masks(tmp_path, {i: depths[i] > 0 for i in depths})
    assert main(["pseudo-labels", str(tmp_path / "depth.h5"), str(masks), str(tmp_path / "l.h5"),
                 "--transfer", "--support", "1"]) == 0
    labels = read_depth_file(tmp_path / "l.h5")
    np.testing.assert_allclose(labels[1].depth, 10.0, rtol=1e-6)
    attrs = read_depth_attrs(tmp_path / "l.h5")
    assert attrs["transfer"] and attrs["own_fraction"] == pytest.approx(0.75) and attrs["labelled_fraction"] == 1.0
    assert main(["pseudo-labels", str(tmp_path / "depth.h5"), str(masks), str(tmp_path / "x.h5"), "--support", "0"]) == 1


def test_labels_file_round_trip_and_checks_against_the_scene(tmp_path):
    from types import SimpleNamespace

    from pipeline.formats.depth_file import read_depth_attrs
    from pipeline.formats.labels_file import read_labels_file, write_labels_file

    depth = np.where(np.arange(24 * 32).reshape(24, 32) % 3, 2.0, 0.0).astype(np.float32)
    path = tmp_path / "labels.h5"
    write_labels_file(path, [DepthView(5, "5.png", depth, None, K, POSE)], {"checkpoint": "m.pt"})
    assert read_depth_attrs(path)["kind"] == "selfmvs.depth_labels"
    scene = SimpleNamespace(views={5: SimpleNamespace(name="5.png", height=24, width=32)})
    np.testing.assert_array_equal(read_labels_file(path, scene, "scene.h5")[5], depth)
    scene.views[5].width = 30
    with pytest.raises(ValueError, match=r"labels.h5: view 5 is 32x24, but scene.h5 stores it at 30x24"):
        read_labels_file(path, scene, "scene.h5")
    scene.views[6] = SimpleNamespace(name="6.png", height=24, width=32)
    scene.views[5].width = 32
    with pytest.raises(ValueError, match=r"labels.h5: no labels for view 6 \(6.png\) of scene.h5"):
        read_labels_file(path, scene, "scene.h5")
