"""`selfmvs pseudo-labels`: the depth fusion kept becomes the self-training labels."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from pipeline.formats.depth_file import DepthView, read_depth_attrs, read_depth_file, write_depth_file
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


def _masks(tmp_path, masks, kind="selfmvs.fused_masks"):
    path = tmp_path / "fused_masks.h5"
    with h5py.File(path, "w") as handle:
        handle.attrs["kind"] = kind
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
    assert summary == {"views": 2, "labelled": pytest.approx(expected)} and attrs["labelled_fraction"] == pytest.approx(expected)


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
    gt_h5, _ = _depth(tmp_path, kind="selfmvs.gt_depth")
    code = main(["pseudo-labels", str(gt_h5), str(_masks(tmp_path, good)), str(tmp_path / "x.h5")])
    assert code == 1 and "labels are made from a depth.h5 of selfmvs infer" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="nothing.h5"):
        run_pseudo_labels(depth_h5, tmp_path / "nothing.h5", tmp_path / "x.h5")
    assert not (tmp_path / "x.h5").exists()
