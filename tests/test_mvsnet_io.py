"""MVSNet layout: scene.h5 -> images/, cams/, pair.txt -> scene.h5 round trip, files as the MVSNet
family reads them, and clear errors on bad files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image as PILImage

from pipeline.cli import main as cli_main
from pipeline.colmap import qvec_to_rotmat
from pipeline.formats.mvsnet import (
    MVSNetCamera,
    MVSNetFormatError,
    export_mvsnet,
    format_cam_file,
    format_pair_file,
    import_mvsnet,
    read_cam_file,
    read_pair_file,
)
from pipeline.formats.scene_file import Scene, SceneView, read_scene, write_scene


def make_scene(path, ids=(12, 3, 7, 40), height=20, width=28, with_mask=True):
    rng = np.random.default_rng(5)
    views = {}
    for k, image_id in enumerate(ids):
        R = qvec_to_rotmat(rng.normal(size=4))
        others = [i for i in ids if i != image_id]
        views[image_id] = SceneView(
            image_id=image_id, name=f"photos/IMG_{image_id:04d}.JPG",
            image=rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
            K=np.array([[30.0 + k, 0.0, width / 2 + 0.25], [0.0, 31.0, height / 2 - 0.5], [0.0, 0.0, 1.0]]),
            cam_from_world=np.hstack([R, rng.normal(size=(3, 1))]),
            depth_range=np.array([0.5 + k, 9.75 + k / 3]), num_depth=64 + k,
            source_ids=np.array(others[: 2 + k % 2], dtype=np.int64),
            source_scores=np.sort(rng.uniform(0, 10, size=len(others[: 2 + k % 2])))[::-1].copy(),
            mask=(rng.random((height, width)) > 0.2) if (with_mask and k != 1) else None,
            point3D_ids=np.arange(k, dtype=np.int64), width=width, height=height,
        )
    scene = Scene(views=views, points3D_ids=np.arange(3), points3D_xyz=rng.normal(size=(3, 3)),
                  points3D_rgb=np.zeros((3, 3), np.uint8), attrs={"units": "metres", "note": "test"})
    write_scene(path, scene)
    return scene


def assert_views_equal(a: SceneView, b: SceneView, exact_image=True):
    assert (a.image_id, a.name, a.width, a.height, a.num_depth) == (b.image_id, b.name, b.width, b.height, b.num_depth)
    for field in ("K", "cam_from_world", "source_ids", "source_scores"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
    np.testing.assert_allclose(a.depth_range, b.depth_range, rtol=1e-15)
    if exact_image:
        np.testing.assert_array_equal(a.image, b.image)
    else:
        assert np.abs(a.image.astype(int) - b.image.astype(int)).mean() < 8  # JPEG of noise, quality 95
    if a.mask is None:
        assert b.mask is None
    else:
        np.testing.assert_array_equal(a.mask, b.mask)


def test_export_import_round_trip_png(tmp_path):
    scene = make_scene(tmp_path / "scene.h5")
    out = export_mvsnet(tmp_path / "scene.h5", tmp_path / "mvs", image_format="png")
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{k:08d}.png" for k in range(4)]
    assert sorted(p.name for p in (out / "cams").iterdir()) == [f"{k:08d}_cam.txt" for k in range(4)]
    import_mvsnet(out, tmp_path / "back.h5")
    back = read_scene(tmp_path / "back.h5")
    assert list(back.views) == list(scene.views)
    for image_id in scene.views:
        assert_views_equal(scene.views[image_id], back.views[image_id])
    assert back.attrs["units"] == "metres" and back.attrs["note"] == "test"
    assert back.points3D_ids.size == 0  # the layout carries no sparse points


def test_export_import_round_trip_jpg_and_integer_pixel_centre(tmp_path):
    scene = make_scene(tmp_path / "scene.h5", with_mask=False)
    export_mvsnet(tmp_path / "scene.h5", tmp_path / "mvs", pixel_centre="integer")
    view0 = scene.views[12]
    cam = read_cam_file(tmp_path / "mvs" / "cams" / "00000000_cam.txt")
    np.testing.assert_array_equal(cam.K[:2, 2], view0.K[:2, 2] - 0.5)
    import_mvsnet(tmp_path / "mvs", tmp_path / "back.h5", pixel_centre="integer")
    back = read_scene(tmp_path / "back.h5")
    for image_id in scene.views:
        assert_views_equal(scene.views[image_id], back.views[image_id], exact_image=False)
    # Without the argument the convention recorded by the export is used; forcing "colmap" shifts by 0.5.
    import_mvsnet(tmp_path / "mvs", tmp_path / "recorded.h5")
    np.testing.assert_array_equal(read_scene(tmp_path / "recorded.h5", load_images=False).views[12].K, view0.K)
    import_mvsnet(tmp_path / "mvs", tmp_path / "forced.h5", pixel_centre="colmap")
    np.testing.assert_array_equal(read_scene(tmp_path / "forced.h5", load_images=False).views[12].K[:2, 2],
                                  view0.K[:2, 2] - 0.5)


def test_cam_file_lines_are_where_patchmatchnet_reads_them(tmp_path):
    """PatchmatchNet / CasMVSNet read lines 1-4, 7-9 and 11 by index; mimic that reader here."""
    make_scene(tmp_path / "scene.h5")
    export_mvsnet(tmp_path / "scene.h5", tmp_path / "mvs", image_format="png")
    scene = read_scene(tmp_path / "scene.h5", load_images=False)
    view = scene.views[3]  # second view -> number 1
    lines = [line.rstrip() for line in (tmp_path / "mvs" / "cams" / "00000001_cam.txt").read_text().splitlines()]
    assert lines[0] == "extrinsic" and lines[6] == "intrinsic"
    extrinsic = np.array(" ".join(lines[1:5]).split(), dtype=np.float64).reshape(4, 4)
    intrinsic = np.array(" ".join(lines[7:10]).split(), dtype=np.float64).reshape(3, 3)
    depth_min, depth_interval, num_depth, depth_max = (float(v) for v in lines[11].split())
    np.testing.assert_array_equal(extrinsic[:3], view.cam_from_world)
    np.testing.assert_array_equal(extrinsic[3], [0, 0, 0, 1])
    np.testing.assert_array_equal(intrinsic, view.K)
    assert (depth_min, depth_max, num_depth) == (view.depth_range[0], view.depth_range[1], view.num_depth)
    assert depth_min + depth_interval * (num_depth - 1) == pytest.approx(depth_max, rel=1e-12)
    # pair.txt: numbers are positions in file order, best source first.
    pairs = (tmp_path / "mvs" / "pair.txt").read_text().split("\n")
    assert pairs[0] == "4" and pairs[3] == "1"
    fields = pairs[4].split()
    number_of = {image_id: k for k, image_id in enumerate(scene.views)}
    assert int(fields[0]) == len(view.source_ids)
    assert [int(v) for v in fields[1::2]] == [number_of[int(s)] for s in view.source_ids]
    manifest = json.loads((tmp_path / "mvs" / "selfmvs_views.json").read_text())
    assert [v["image_id"] for v in manifest["views"]] == [12, 3, 7, 40]


def test_import_foreign_layout_without_manifest(tmp_path):
    """A DTU-style folder as other tools ship it: 2-number depth line, %f numbers, no selfmvs files."""
    folder = tmp_path / "scan1"
    (folder / "images").mkdir(parents=True)
    (folder / "cams").mkdir()
    rng = np.random.default_rng(0)
    for k in range(3):
        PILImage.fromarray(rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)).save(folder / "images" / f"{k:08d}.jpg")
        (folder / "cams" / f"{k:08d}_cam.txt").write_text(
            "extrinsic\n1.000000 0.000000 0.000000 %f\n0.000000 1.000000 0.000000 0.000000\n"
            "0.000000 0.000000 1.000000 0.000000\n0.0 0.0 0.0 1.0\n\nintrinsic\n"
            "2.5 0.0 2.5\n0.0 2.5 2.0\n0.0 0.0 1.0\n\n425.0 2.5\n" % (k * 0.1)
        )
    (folder / "pair.txt").write_text("3\n0\n2 1 10.5 2 3.25\n1\n1 0 10.5\n2\n1 0 3.25\n")
    import_mvsnet(folder, tmp_path / "scene.h5", intrinsics_scale=4.0)
    scene = read_scene(tmp_path / "scene.h5")
    assert list(scene.views) == [0, 1, 2]
    view = scene.views[0]
    assert view.name == "00000000.jpg" and (view.width, view.height) == (20, 16)
    np.testing.assert_array_equal(view.K, [[10, 0, 10], [0, 10, 8], [0, 0, 1]])
    assert view.num_depth == 192
    np.testing.assert_allclose(view.depth_range, [425.0, 425.0 + 2.5 * 191])
    assert view.source_ids.tolist() == [1, 2] and view.source_scores.tolist() == [10.5, 3.25]
    np.testing.assert_allclose(scene.views[2].cam_from_world[0, 3], 0.2)


def test_import_blendedmvs_variant(tmp_path):
    """BlendedMVS keeps images in blended_images/ and pair.txt in cams/."""
    make_scene(tmp_path / "scene.h5")
    export_mvsnet(tmp_path / "scene.h5", tmp_path / "mvs", image_format="png")
    (tmp_path / "mvs" / "images").rename(tmp_path / "mvs" / "blended_images")
    (tmp_path / "mvs" / "pair.txt").rename(tmp_path / "mvs" / "cams" / "pair.txt")
    import_mvsnet(tmp_path / "mvs", tmp_path / "back.h5")
    assert list(read_scene(tmp_path / "back.h5", load_images=False).views) == [12, 3, 7, 40]
    (tmp_path / "mvs" / "cams" / "pair.txt").unlink()
    with pytest.raises(MVSNetFormatError, match="missing pair.txt"):
        import_mvsnet(tmp_path / "mvs", tmp_path / "x.h5")


def test_cam_and_pair_text_round_trip(tmp_path):
    camera = MVSNetCamera(np.hstack([qvec_to_rotmat(np.array([0.9, 0.1, -0.3, 0.2])), [[1.0], [2.0], [3.0]]]),
                          np.array([[100.0, 0, 50.1], [0, 101.0, 40.2], [0, 0, 1]]), 1.0, 0.1, 11, 2.0)
    (tmp_path / "c.txt").write_text(format_cam_file(camera))
    back = read_cam_file(tmp_path / "c.txt")
    np.testing.assert_array_equal(back.cam_from_world, camera.cam_from_world)
    np.testing.assert_array_equal(back.K, camera.K)
    assert (back.depth_min, back.depth_interval, back.num_depth, back.depth_max) == (1.0, 0.1, 11, 2.0)
    pairs = {0: ([1, 2], [3.5, 1.0]), 1: ([0], [3.5]), 2: ([], [])}
    (tmp_path / "pair.txt").write_text(format_pair_file(pairs))
    read = read_pair_file(tmp_path / "pair.txt")
    assert {k: (v[0].tolist(), v[1].tolist()) for k, v in read.items()} == pairs


GOOD_CAM = ("extrinsic\n1 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n\nintrinsic\n10 0 5\n0 10 4\n0 0 1\n\n1.0 0.5 3 2.0\n")


@pytest.mark.parametrize(
    "text, message",
    [
        (GOOD_CAM.replace("extrinsic", "extr"), "no 'extrinsic' line"),
        (GOOD_CAM.replace("0 1 0 0\n", "0 x 0 0\n"), "line 3: extrinsic row 2: expected a number, got 'x'"),
        (GOOD_CAM.replace("0 0 0 1\n", "0 0 1 1\n"), "extrinsic last row must be 0 0 0 1"),
        (GOOD_CAM.replace("1 0 0 0\n", "2 0 0 0\n"), "line 2: extrinsic rotation is not a rotation"),
        (GOOD_CAM.replace("10 0 5\n", "-10 0 5\n"), "line 8: intrinsic must be"),
        (GOOD_CAM.replace("1.0 0.5 3 2.0\n", ""), "no depth line"),
        (GOOD_CAM.replace("1.0 0.5 3 2.0\n", "1.0\n"), "line 12: expected 'depth_min depth_interval"),
        (GOOD_CAM.replace("1.0 0.5 3 2.0\n", "1.0 0.5 2.5 2.0\n"), "num_depth must be an integer >= 2"),
        (GOOD_CAM.replace("1.0 0.5 3 2.0\n", "2.0 0.5 3 1.0\n"), "need 0 < depth_min < depth_max"),
        (GOOD_CAM.replace("1.0 0.5 3 2.0\n", "1.0 nan 3 2.0\n"), "non-finite value 'nan'"),
        (GOOD_CAM.replace("0 0 1\n\n1.0", "0 0\n\n1.0"), "line 10: intrinsic row 3 needs 3 numbers, got 2"),
        (GOOD_CAM.split("0 10 4")[0], "intrinsic needs 3 lines of 3 numbers; the file ends first"),
        (b"extrinsic\n\xff", "not UTF-8"),
    ],
    ids=lambda value: "file" if isinstance(value, bytes) or "\n" in value or not value else value[:40],
)
def test_bad_cam_files(tmp_path, text, message):
    path = tmp_path / "00000000_cam.txt"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(MVSNetFormatError) as info:
        read_cam_file(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty pair file"),
        ("2\n0\n1 1 3.0\n", "2 views need 5 non-empty lines, got 3"),
        ("1\n0\n2 1 3.0\n", "line 3: 2 sources need 5 fields, got 3"),
        ("1\n0\n1 x 3.0\n", "line 3: a source number must be an integer, got 'x'"),
        ("1\n0\n1 1 y\n", "line 3: scores must be numbers"),
        ("2\n0\n0\n0\n0\n", "line 4: view 0 listed twice"),
        ("1 2\n", "line 1: expected the number of views alone"),
    ],
    ids=lambda value: "file" if isinstance(value, bytes) or "\n" in value or not value else value[:40],
)
def test_bad_pair_files(tmp_path, text, message):
    path = tmp_path / "pair.txt"
    path.write_text(text)
    with pytest.raises(MVSNetFormatError) as info:
        read_pair_file(path)
    assert str(info.value).startswith(f"{path}") and message in str(info.value)


def test_import_errors_name_the_file(tmp_path):
    make_scene(tmp_path / "scene.h5")
    export_mvsnet(tmp_path / "scene.h5", tmp_path / "mvs", image_format="png")
    (tmp_path / "mvs" / "pair.txt").write_text("1\n0\n1 9 1.0\n")
    with pytest.raises(MVSNetFormatError, match=r"pair.txt: view 0 refers to views \[9\]"):
        import_mvsnet(tmp_path / "mvs", tmp_path / "x.h5")
    (tmp_path / "mvs" / "pair.txt").unlink()
    with pytest.raises(MVSNetFormatError, match="missing pair.txt"):
        import_mvsnet(tmp_path / "mvs", tmp_path / "x.h5")
    with pytest.raises(FileNotFoundError):
        import_mvsnet(tmp_path / "nothing", tmp_path / "x.h5")
    assert not (tmp_path / "x.h5").exists()


def test_cli_verbs(tmp_path, capsys):
    make_scene(tmp_path / "scene.h5")
    assert cli_main(["export-mvsnet", str(tmp_path / "scene.h5"), str(tmp_path / "mvs"), "--image-format", "png"]) == 0
    assert cli_main(["import-mvsnet", str(tmp_path / "mvs"), str(tmp_path / "back.h5")]) == 0
    assert list(read_scene(tmp_path / "back.h5", load_images=False).views) == [12, 3, 7, 40]
    assert cli_main(["import-mvsnet", str(tmp_path / "nope"), str(tmp_path / "x.h5")]) == 1
    assert "import-mvsnet: error: " in capsys.readouterr().err


def test_export_over_an_earlier_export_leaves_no_stale_views(tmp_path):
    make_scene(tmp_path / "big.h5")
    export_mvsnet(tmp_path / "big.h5", tmp_path / "mvs", image_format="png")
    make_scene(tmp_path / "small.h5", ids=(5, 6), with_mask=False)
    (tmp_path / "mvs" / "images" / "notes.txt").write_text("mine")  # not a layout name: kept
    export_mvsnet(tmp_path / "small.h5", tmp_path / "mvs")
    assert sorted(p.name for p in (tmp_path / "mvs" / "images").iterdir()) == ["00000000.jpg", "00000001.jpg", "notes.txt"]
    assert sorted(p.name for p in (tmp_path / "mvs" / "cams").iterdir()) == ["00000000_cam.txt", "00000001_cam.txt"]
    assert not any((tmp_path / "mvs" / "masks").iterdir())
    import_mvsnet(tmp_path / "mvs", tmp_path / "back.h5")
    assert list(read_scene(tmp_path / "back.h5", load_images=False).views) == [5, 6]


def test_cam_file_fuzz_raises_only_format_errors(tmp_path):
    """Random edits of a valid cam file: MVSNetFormatError naming the file, or a successful read."""
    rng = np.random.default_rng(7)
    path = tmp_path / "00000000_cam.txt"
    replacements = ["x", "nan", "", "1e999", "-1", "0", "extrinsic", "intrinsic", "\n", "3.5 7"]
    failures = 0
    for _ in range(300):
        tokens = GOOD_CAM.replace("\n", " \n ").split(" ")
        for _ in range(int(rng.integers(1, 3))):
            tokens[int(rng.integers(0, len(tokens)))] = replacements[int(rng.integers(0, len(replacements)))]
        path.write_text(" ".join(tokens))
        try:
            camera = read_cam_file(path)
        except MVSNetFormatError as error:
            assert str(error).startswith(f"{path}: ")
            failures += 1
        else:
            assert 0 < camera.depth_min < camera.depth_max and camera.num_depth >= 2
    assert failures > 100
