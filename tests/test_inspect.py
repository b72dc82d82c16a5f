"""``selfmvs inspect``: summaries of selfmvs files, a generic tree for other HDF5 files, clear errors."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from pipeline.cli import main as cli_main
from pipeline.formats.depth_file import DepthView, write_depth_file
from pipeline.formats.scene_file import Scene, SceneView, write_scene
from pipeline.tools.file_summary import InspectError, array_stats, describe, summarize


@pytest.fixture
def depth_file(tmp_path):
    rng = np.random.default_rng(0)
    depths = {}
    views = []
    for image_id, (height, width) in zip((9, 2, 5), ((12, 16), (12, 16), (10, 14))):
        depth = rng.uniform(1.5, 6.0, (height, width)).astype(np.float32)
        depth[: image_id % 4] = 0  # rows without an estimate
        depths[image_id] = depth
        views.append(DepthView(image_id, f"img_{image_id}.png", depth, rng.random((height, width)).astype(np.float32),
                               np.array([[20.0, 0, 8], [0, 21.0, 6], [0, 0, 1]]), np.eye(3, 4)))
    path = tmp_path / "depth.h5"
    write_depth_file(path, views, {"units": "metres", "checkpoint": "model.pt"})
    return path, depths


def test_depth_file_facts(depth_file):
    path, depths = depth_file
    summary = summarize(path)
    assert summary["kind"] == "selfmvs.depth" and summary["format_version"] == 1
    assert summary["attrs"]["checkpoint"] == "model.pt"
    assert list(summary["views"]) == ["2", "5", "9"]  # depth.h5 records no order: by number
    for image_id, depth in depths.items():
        facts = summary["views"][str(image_id)]["datasets"]["depth"]
        valid = depth[depth > 0]
        assert facts["shape"] == depth.shape
        assert facts["min"] == pytest.approx(float(valid.min()))
        assert facts["max"] == pytest.approx(float(valid.max()))
        assert facts["valid_fraction"] == pytest.approx(valid.size / depth.size)


def test_depth_file_text(depth_file):
    path, depths = depth_file
    text = describe(path)
    assert "kind: selfmvs.depth   format_version: 1" in text
    assert "checkpoint: model.pt" in text
    assert "views: 3" in text
    assert "units: scene units (z-depth along the optical axis)" in text
    depth = depths[5]
    valid = depth[depth > 0]
    assert f"depth: 10x14 float32 [{valid.min():.4g}, {valid.max():.4g}]" in text
    assert f"valid {100 * valid.size / depth.size:.1f}%" in text
    assert "[5] img_5.png  f=(20, 21) c=(8, 6)" in text
    total_valid = sum(int((d > 0).sum()) for d in depths.values())
    total = sum(d.size for d in depths.values())
    assert f"all views, depth: valid {100 * total_valid / total:.1f}% of {total} pixels" in text
    brief = summarize(path, detail_views=1)
    assert "min" in brief["views"]["2"]["datasets"]["depth"] and "min" in brief["views"]["9"]["datasets"]["depth"]
    short = describe(path, max_views=1)
    assert short.split("\n")[:12] == text.split("\n")[:12]  # the totals still cover every view
    assert "[2]" in short and "[9]" not in short and "... 2 more views (--all lists them)" in short


def test_scene_file(tmp_path):
    rng = np.random.default_rng(1)
    view = SceneView(
        image_id=4, name="a.jpg", image=rng.integers(0, 256, (6, 8, 3), dtype=np.uint8),
        K=np.array([[10.0, 0, 4], [0, 10.0, 3], [0, 0, 1]]), cam_from_world=np.eye(3, 4),
        depth_range=np.array([0.5, 4.0]), num_depth=48, source_ids=np.zeros(0, np.int64),
        source_scores=np.zeros(0), mask=np.ones((6, 8), bool), point3D_ids=np.arange(3), width=8, height=6,
    )
    other = SceneView(**{**view.__dict__, "image_id": 1, "name": "b.jpg"})
    write_scene(tmp_path / "scene.h5",
                Scene({4: view, 1: other}, np.arange(3), np.zeros((3, 3)), np.zeros((3, 3), np.uint8)))
    text = describe(tmp_path / "scene.h5")
    assert "kind: selfmvs.scene" in text
    assert "depth_range=[0.5, 4]  num_depth=48" in text
    assert "mask: 6x8 bool 100.0% true" in text
    assert "point3D_ids: (3,) int64 [0, 2]" in text
    assert list(summarize(tmp_path / "scene.h5")["views"]) == ["4", "1"]  # the scene's own order
    brief = summarize(tmp_path / "scene.h5", detail_views=1)["views"]
    assert "mean" in brief["4"]["datasets"]["image"] and "mean" not in brief["1"]["datasets"]["image"]
    assert brief["1"]["datasets"]["image"]["shape"] == (6, 8, 3)
    # The sparse points are outside /views: shown in the tree, zero coordinates counted as values.
    assert "/sparse/xyz  3x3 float64 [0, 0] mean 0 valid 100.0%" in text


def test_unknown_hdf5_file_gives_a_tree(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as handle:
        handle.attrs["creator"] = "someone"
        group = handle.create_group("a/b")
        group.attrs["scale"] = 2.5
        data = group.create_dataset("values", data=np.array([[1.0, np.nan], [3.0, 0.0]]))
        data.attrs["units"] = "mm"
        handle.create_dataset("flags", data=np.array([True, False, False, False]))
        handle.create_dataset("names", data=np.array([b"x", b"y"]))
    text = describe(path)
    assert "kind: (none: not a selfmvs file; generic view)" in text
    assert "creator: someone" in text
    assert "/a/b/values  2x2 float64 [0, 3] mean 1.333 valid 75.0% 1 non-finite" in text
    assert "@units = mm" in text and "@scale = 2.5" in text
    assert "/flags  (4,) bool 25.0% true" in text
    assert "/names  (2,) |S1" in text
    assert summarize(path)["views"] is None


def test_array_stats_zero_is_invalid_only_when_asked():
    data = np.array([[0.0, 2.0], [4.0, np.inf]])
    assert array_stats(data)["min"] == 0.0 and array_stats(data)["valid_fraction"] == 0.75
    assert array_stats(data, zero_is_invalid=True)["min"] == 2.0
    assert array_stats(data, zero_is_invalid=True)["valid_fraction"] == 0.5
    assert "min" not in array_stats(np.zeros((0, 3)))


def test_not_hdf5_errors(tmp_path):
    ply = tmp_path / "cloud.ply"
    ply.write_bytes(b"ply\nformat binary_little_endian 1.0\n")
    with pytest.raises(InspectError, match=r"cloud.ply: not an HDF5 file; it starts with b'ply\\n.*PLY point cloud"):
        summarize(ply)
    with pytest.raises(FileNotFoundError, match="nope.h5: no such file"):
        summarize(tmp_path / "nope.h5")
    with pytest.raises(InspectError, match="is a folder"):
        summarize(tmp_path)
    with pytest.raises(InspectError, match="is a folder without a COLMAP model"):
        describe(tmp_path)
    truncated = tmp_path / "broken.h5"
    good = tmp_path / "good.h5"
    with h5py.File(good, "w") as handle:
        handle.create_dataset("x", data=np.arange(1000.0))
    truncated.write_bytes(good.read_bytes()[:600])
    with pytest.raises(InspectError, match="broken.h5"):
        describe(truncated)


def test_cli(depth_file, tmp_path, capsys):
    path, _ = depth_file
    assert cli_main(["inspect", str(path), "--max-views", "0"]) == 0
    out = capsys.readouterr().out
    assert "views: 3" in out and "[2]" not in out and "... 3 more views" in out
    assert cli_main(["inspect", str(path), "--all"]) == 0
    assert "[5] img_5.png" in capsys.readouterr().out
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert cli_main(["inspect", str(text)]) == 1
    assert "selfmvs inspect: error: " in capsys.readouterr().err


def test_colmap_model_folder(tmp_path):
    from pipeline.colmap import Camera, Image, Point3D, write_model

    cameras = {1: Camera(1, "PINHOLE", 40, 30, np.array([30.0, 31.0, 20.0, 15.0]))}
    images = {
        i: Image(i, np.array([1.0, 0, 0, 0]), np.array([-float(i), 0, 0]), 1, f"im{i}.png",
                 np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([7, -1]))
        for i in (1, 2)
    }
    points = {7: Point3D(7, np.array([0.5, 1.0, 2.0]), np.array([9, 9, 9], np.uint8), 0.25, np.array([1, 2]), np.array([0, 0]))}
    write_model(cameras, images, points, tmp_path / "sparse" / "0")
    text = describe(tmp_path)
    assert "(COLMAP model, .bin)" in text
    assert "[1] PINHOLE 40x30  params: 30, 31, 20, 15" in text
    assert "points3D: 1, mean track length 2.00, mean reprojection error 0.25 px" in text
    assert "images: 2, 1.0 observations per image on average" in text
    assert "[2] im2.png  camera 1  keypoints 2  triangulated 1  centre [2.0, 0.0, 0.0]" in text


def test_checkpoint(tmp_path, capsys):
    import zipfile

    import torch

    from pipeline.model import ModelConfig, PatchmatchNet, save_checkpoint

    torch.manual_seed(0)
    model = PatchmatchNet(ModelConfig(iterations=(1, 2, 1), refinement=False))
    path = save_checkpoint(tmp_path / "net.pt", model, {"mode": "train", "step": 12, "total_steps": 40,
                                                          "recipe": "unsup_mvsnet", "note": "a test run",
                                                          "scenes": ["a/1000.h5", "a/1001.h5"]})
    text = describe(path)
    assert "network checkpoint" in text and "step 12 of 40, recipe unsup_mvsnet" in text
    assert "trained on 2 scene(s): 1000.h5, 1001.h5" in text and "note: a test run" in text
    assert "* iterations: [1, 2, 1]   (default [1, 2, 2])" in text
    assert "* refinement: False   (default True)" in text
    assert "    num_groups: [4, 8, 8]" in text  # a default: listed, not marked
    assert "resumable: no" in text
    parameters = sum(p.numel() for p in model.parameters())
    assert f"{parameters:,} parameters" in text
    save_checkpoint(tmp_path / "train.pt", model, {"step": 3, "optimizer": {"state": {}}})
    assert "resumable: yes" in describe(tmp_path / "train.pt")
    assert cli_main(["inspect", str(path)]) == 0
    assert "* refinement: False" in capsys.readouterr().out
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("x.txt", "not a network")
    with pytest.raises(InspectError, match="other.zip: not a readable torch checkpoint"):
        describe(other)
