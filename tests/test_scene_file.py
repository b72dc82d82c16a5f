"""scene.h5: round trip, file order, partial loads, and clear errors on bad files."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from pipeline.formats.scene_file import (
    Scene,
    SceneFormatError,
    SceneView,
    SceneWriter,
    cap_num_sources,
    list_scene_views,
    read_scene,
    read_view,
    write_scene,
)


def _view(image_id: int, rng: np.random.Generator, height=6, width=9, with_mask=True, num_sources=2):
    num_points = int(rng.integers(0, 5))
    return SceneView(
        image_id=image_id,
        name=f"img_{image_id}.png",
        image=rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
        K=np.array([[10.0, 0, width / 2], [0, 11.0, height / 2], [0, 0, 1]]),
        cam_from_world=np.hstack([np.eye(3), rng.normal(size=(3, 1))]),
        depth_range=np.array([0.5, 7.25]),
        num_depth=64 + image_id,
        source_ids=np.arange(num_sources, dtype=np.int64) + 100,
        source_scores=np.linspace(3.0, 1.0, num_sources),
        mask=rng.random((height, width)) > 0.3 if with_mask else None,
        point3D_ids=np.arange(num_points, dtype=np.int64) * 3,
        width=width,
        height=height,
        points2D=rng.random((num_points, 2)) * 5,
    )


def _scene(ids=(7, 2, 40)) -> Scene:
    rng = np.random.default_rng(0)
    views = {i: _view(i, rng, with_mask=(i != 2), num_sources=(0 if i == 40 else 2)) for i in ids}
    return Scene(
        views=views,
        points3D_ids=np.array([0, 3, 6, 9]),
        points3D_xyz=rng.normal(size=(4, 3)),
        points3D_rgb=rng.integers(0, 256, (4, 3), dtype=np.uint8),
        attrs={"source": "somewhere", "config": "{}"},
    )


def _assert_view_equal(a: SceneView, b: SceneView, with_image=True):
    assert (a.image_id, a.name, a.width, a.height, a.num_depth) == (b.image_id, b.name, b.width, b.height, b.num_depth)
    for field in ("K", "cam_from_world", "depth_range", "source_ids", "source_scores", "point3D_ids", "points2D"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
    if with_image:
        np.testing.assert_array_equal(a.image, b.image)
        if a.mask is None:
            assert b.mask is None
        else:
            np.testing.assert_array_equal(a.mask, b.mask)


def test_round_trip_keeps_everything_and_file_order(tmp_path):
    scene = _scene()
    path = tmp_path / "scene.h5"
    write_scene(path, scene)
    back = read_scene(path)
    assert list(back.views) == [7, 2, 40]
    assert list_scene_views(path) == [7, 2, 40]
    for image_id in scene.views:
        _assert_view_equal(scene.views[image_id], back.views[image_id])
    np.testing.assert_array_equal(back.points3D_ids, scene.points3D_ids)
    np.testing.assert_array_equal(back.points3D_xyz, scene.points3D_xyz)
    np.testing.assert_array_equal(back.points3D_rgb, scene.points3D_rgb)
    assert back.attrs["format_version"] == 1
    assert back.attrs["kind"] == "selfmvs.scene"
    assert back.attrs["source"] == "somewhere"
    assert back.views[40].source_ids.shape == (0,)


def test_lazy_read_and_single_view(tmp_path):
    path = tmp_path / "scene.h5"
    scene = _scene()
    write_scene(path, scene)
    lazy = read_scene(path, load_images=False)
    assert all(v.image is None and v.mask is None for v in lazy.views.values())
    _assert_view_equal(scene.views[2], lazy.views[2], with_image=False)
    _assert_view_equal(scene.views[7], read_view(path, 7))


def test_layout_is_self_describing(tmp_path):
    path = tmp_path / "scene.h5"
    write_scene(path, _scene())
    with h5py.File(path, "r") as handle:
        image = handle["views/7/image"]
        assert image.chunks == image.shape and image.compression == "lzf"
        for name in ("image", "mask", "source_ids", "point3D_ids", "points2D"):
            assert "units" in handle[f"views/7/{name}"].attrs, name
        assert "K_frame" in handle["views/7"].attrs and "cam_from_world_frame" in handle["views/7"].attrs
        assert handle["sparse/xyz"].attrs["frame"] == "world"


def test_missing_view_names_the_file(tmp_path):
    path = tmp_path / "scene.h5"
    write_scene(path, _scene())
    with pytest.raises(SceneFormatError, match=r"scene\.h5.*view 5 missing"):
        read_view(path, 5)


def test_bad_layouts_are_reported(tmp_path):
    path = tmp_path / "scene.h5"
    write_scene(path, _scene())
    with h5py.File(path, "a") as handle:
        del handle["views/2/source_ids"]
    with pytest.raises(SceneFormatError, match=r"scene\.h5: view 2: missing"):
        read_scene(path)

    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as handle:
        handle.attrs["kind"] = "selfmvs.depth"
    with pytest.raises(SceneFormatError, match=r"other\.h5: not a selfmvs scene file"):
        read_scene(other)

    with h5py.File(other, "w") as handle:
        handle.attrs["kind"] = "selfmvs.scene"
        handle.attrs["format_version"] = 99
    with pytest.raises(SceneFormatError, match="format_version 99"):
        read_scene(other)

    not_hdf5 = tmp_path / "text.h5"
    not_hdf5.write_text("hello")
    with pytest.raises(SceneFormatError, match="not an HDF5 file"):
        read_scene(not_hdf5)
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        read_scene(tmp_path / "nope.h5")


def test_invalid_views_are_rejected_at_construction():
    rng = np.random.default_rng(1)
    view = _view(1, rng)
    with pytest.raises(SceneFormatError, match=r"expected uint8 image \(6, 9, 3\)"):
        SceneView(**{**view.__dict__, "image": np.zeros((6, 8, 3), np.uint8)})
    with pytest.raises(SceneFormatError, match="source ids"):
        SceneView(**{**view.__dict__, "source_scores": np.zeros(5)})


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "scene.h5"
    write_scene(path, _scene())
    broken = _scene()
    broken.views[2].image = None
    with pytest.raises(SceneFormatError, match="has no image"):
        write_scene(path, broken)
    assert list_scene_views(path) == [7, 2, 40]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.h5"]


def test_streaming_writer_requires_sparse_points(tmp_path):
    from pipeline.formats.scene_file import SceneWriter

    path = tmp_path / "scene.h5"
    scene = _scene()
    with pytest.raises(SceneFormatError, match="write_sparse was never called"):
        with SceneWriter(path) as writer:
            writer.write_view(scene.views[7])
    assert list(tmp_path.iterdir()) == []
    with SceneWriter(path, {"note": "streamed"}) as writer:
        for view in scene.views.values():
            writer.write_view(view)
        with pytest.raises(SceneFormatError, match="view 7 written twice"):
            writer.write_view(scene.views[7])
        writer.write_sparse(scene.points3D_ids, scene.points3D_xyz, scene.points3D_rgb)
    back = read_scene(path)
    assert list(back.views) == [7, 2, 40] and back.attrs["note"] == "streamed"


def test_num_sources_is_stored_and_derived_for_older_files(tmp_path):
    """The source lists' length limit is a file attribute; files without it derive it from the lists."""
    scene = _scene()  # source lists of 2, 2 and 0 views
    scene.attrs["num_sources"] = 5  # prepare.num_sources
    write_scene(tmp_path / "given.h5", scene)
    assert read_scene(tmp_path / "given.h5", load_images=False).num_sources == 5
    del scene.attrs["num_sources"]
    write_scene(tmp_path / "longest.h5", scene)
    with h5py.File(tmp_path / "longest.h5", "r") as handle:
        assert handle.attrs["num_sources"] == 2 and "num_sources_description" in handle.attrs
    with h5py.File(tmp_path / "given.h5", "a") as handle:  # as written before the attribute existed
        del handle.attrs["num_sources"]
    assert read_scene(tmp_path / "given.h5", load_images=False).num_sources == 2


def test_a_source_list_longer_than_num_sources_is_refused(tmp_path):
    rng = np.random.default_rng(1)
    with pytest.raises(SceneFormatError, match=r"view 3 has 4 source views, more than num_sources=2"):
        with SceneWriter(tmp_path / "s.h5", {"num_sources": 2}) as writer:
            writer.write_view(_view(3, rng, num_sources=4))
    with pytest.raises(SceneFormatError, match=r"num_sources must be an integer >= 0, got -1"):
        SceneWriter(tmp_path / "s.h5", {"num_sources": -1})
    assert not (tmp_path / "s.h5").exists()


def test_cap_num_sources_logs_both_numbers_once(caplog):
    with caplog.at_level("INFO", logger="pipeline.formats.scene_file"):
        assert cap_num_sources(6, 10, "infer.num_sources", "a/scene.h5") == 6
        assert not caplog.records  # within the stored lists: nothing to say
        assert cap_num_sources(12, 10, "infer.num_sources", "a/scene.h5") == 10
    (record,) = caplog.records
    assert record.levelname == "WARNING"
    assert "a/scene.h5: infer.num_sources is 12" in record.getMessage()
    assert "at most 10 source views per view" in record.getMessage()



def test_same_pose_accepts_float32_round_off_and_refuses_a_moved_camera():
    """One pose check for fusion and evaluation: float32 storage passes, a millimetre at 1 m does not."""
    import numpy as np

    from pipeline.formats.scene_file import same_pose

    pose = np.hstack([np.eye(3), [[0.3], [-2.0], [50.0]]])
    assert same_pose(pose, pose.astype(np.float32).astype(np.float64))
    assert same_pose(pose, np.vstack([pose, [0, 0, 0, 1]]))  # 3x4 against 4x4
    moved = pose.copy()
    moved[0, 3] += 1e-3 * 50.0
    assert not same_pose(pose, moved)
    turned = pose.copy()
    turned[0, 1] = 1e-3
    assert not same_pose(pose, turned)
