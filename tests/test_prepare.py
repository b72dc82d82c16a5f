"""The prepare stage on rendered synthetic scenes (with their distortion-free twins) and on DTU."""

from __future__ import annotations

import dataclasses
import shutil
import time

import numpy as np
import pytest

from pipeline.config import PrepareConfig, load_config, load_schema, section
from pipeline.formats.scene_file import read_scene
from pipeline.stages.prepare import PrepareError, run_prepare

FAST = dict(num_views=4, width=96, height=72, supersampling=1, shadows=False, noise_sigma=0.0, keypoint_noise_px=0.0)


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """The same synthetic scene rendered through a pinhole and through an OPENCV lens."""
    from pipeline.synth import render_scene

    root = tmp_path_factory.mktemp("twins")
    plain = render_scene(root / "plain", seed=3, distortion=False, **FAST)
    lens = render_scene(root / "lens", seed=3, distortion=True, **FAST)
    return plain, lens


def _project(view, xyz):
    camera = xyz @ view.cam_from_world[:, :3].T + view.cam_from_world[:, 3]
    pixels = camera @ view.K.T
    return pixels[:, :2] / pixels[:, 2:]


def _check_scene(scene, multiple=8):
    row = {int(i): k for k, i in enumerate(scene.points3D_ids)}
    for view in scene.views.values():
        assert view.width % multiple == 0 and view.height % multiple == 0
        assert view.image.shape == (view.height, view.width, 3)
        assert view.source_ids.size >= 1 and view.image_id not in view.source_ids
        assert np.all(np.diff(view.source_scores) <= 0)
        xyz = scene.points3D_xyz[[row[i] for i in view.point3D_ids]]
        depth = xyz @ view.cam_from_world[2, :3] + view.cam_from_world[2, 3]
        near, far = view.depth_range
        assert np.all((depth >= near) & (depth <= far)), (view.image_id, depth.min(), depth.max(), near, far)
        # Sparse observations stay consistent with poses, points and the new intrinsics.
        np.testing.assert_allclose(view.points2D, _project(view, xyz), atol=1e-5)
        assert view.num_depth >= PrepareConfig().num_depth_min


def test_config_dataclass_matches_schema():
    schema = load_schema()["properties"]["prepare"]["properties"]
    defaults = PrepareConfig()
    assert set(schema) == {f.name for f in dataclasses.fields(PrepareConfig)}
    for name, spec in schema.items():
        value = getattr(defaults, name)
        assert (list(value) if isinstance(value, tuple) else value) == spec["default"], name
    assert section(load_config(), "prepare", PrepareConfig) == defaults


def test_prepare_synthetic_pinhole(twins, tmp_path):
    plain, _ = twins
    out = run_prepare(plain, tmp_path / "scene.h5")
    scene = read_scene(out)
    assert list(scene.views) == [1, 2, 3, 4]
    _check_scene(scene)
    view = scene.views[1]
    assert view.mask is None and (view.width, view.height) == (96, 72)
    assert scene.attrs["created_by"] == "selfmvs prepare"


@pytest.mark.parametrize(
    "mode,max_image_size,multiple",
    [("valid", 800, 8), ("full", 800, 1), ("full", 64, 8), ("keep_size", 800, 8), ("keep_size", 64, 1)],
)
def test_prepare_synthetic_lens(twins, tmp_path, mode, max_image_size, multiple):
    _, lens = twins
    config = PrepareConfig(undistort_mode=mode, max_image_size=max_image_size, size_multiple=multiple)
    scene = read_scene(run_prepare(lens, tmp_path / "scene.h5", config))
    _check_scene(scene, multiple)
    if mode == "full" and multiple == 1:
        # Barrel distortion: the whole original image shows, with blank corners.
        assert all(v.mask is not None and 0.8 < v.mask.mean() < 1 for v in scene.views.values())
    for view in scene.views.values():
        if mode == "valid":
            assert view.mask is None  # every pixel saw the scene
        elif view.mask is not None:
            assert not view.image[~view.mask].any()


def test_undistorted_images_match_the_distortion_free_twin(twins, tmp_path):
    from PIL import Image

    from pipeline.colmap import read_model
    from pipeline.scene.undistort import make_undistorter

    plain, lens = twins
    config = PrepareConfig(undistort_mode="keep_size")
    reference = read_scene(run_prepare(plain, tmp_path / "plain.h5", config))
    undistorted = read_scene(run_prepare(lens, tmp_path / "lens.h5", config))
    cameras, images, _ = read_model(lens)
    for image_id, ref_view in reference.views.items():
        view = undistorted.views[image_id]
        np.testing.assert_allclose(view.K, ref_view.K)
        mask = np.ones((view.height, view.width), bool) if view.mask is None else view.mask
        expected = ref_view.image.astype(float)
        error = np.abs(view.image - expected)[mask].mean()
        raw = np.asarray(Image.open(lens / "images" / view.name).convert("RGB"), dtype=float)
        # Bilinear resampling blurs the (aliased) texture a little; the distorted image is far off.
        assert error < 0.6 * np.abs(raw - expected)[mask].mean()
        # A half-pixel error in the pixel convention would show: resampling into a camera whose
        # principal point is half a pixel off does clearly worse.
        camera = cameras[images[image_id].camera_id]
        for shift in ([0.5, 0], [0, 0.5], [-0.5, 0], [0, -0.5]):
            K = view.K.copy()
            K[:2, 2] += shift
            shifted = make_undistorter(camera.model, camera.width, camera.height, camera.params,
                                       target=(K, camera.width, camera.height))
            assert error < 0.7 * np.abs(shifted.image(raw) - expected)[mask].mean()


def test_resizing_keeps_projections(twins, tmp_path):
    _, lens = twins
    scene = read_scene(run_prepare(lens, tmp_path / "small.h5", PrepareConfig(max_image_size=48)))
    _check_scene(scene)
    assert {(v.width, v.height) for v in scene.views.values()} <= {(48, 32), (48, 40)}


def _copy(scene_dir, tmp_path):
    return shutil.copytree(scene_dir, tmp_path / "copy")


def test_bad_images_are_named(twins, tmp_path):
    plain, _ = twins
    scene_dir = _copy(plain, tmp_path)
    target = scene_dir / "images" / "000001.png"
    target.unlink()
    with pytest.raises(PrepareError, match=r"000001\.png: image not found"):
        run_prepare(scene_dir, tmp_path / "scene.h5")
    target.write_bytes(b"not a png")
    with pytest.raises(PrepareError, match=r"000001\.png: cannot read the image"):
        run_prepare(scene_dir, tmp_path / "scene.h5")
    from PIL import Image

    Image.new("RGB", (50, 40)).save(target)
    with pytest.raises(PrepareError, match=r"000001\.png: image is 50x40 pixels but its COLMAP camera says 96x72"):
        run_prepare(scene_dir, tmp_path / "scene.h5")
    assert not (tmp_path / "scene.h5").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".scene.h5")]


def test_cli_verb(twins, tmp_path):
    from pipeline.cli import main

    plain, _ = twins
    config = tmp_path / "config.yaml"
    config.write_text("prepare:\n  max_image_size: 64\n  num_sources: 2\n")
    assert main(["prepare", str(plain), str(tmp_path / "scene.h5"), "--config", str(config)]) == 0
    scene = read_scene(tmp_path / "scene.h5")
    assert all(v.width <= 64 and v.source_ids.size <= 2 for v in scene.views.values())
    assert main(["prepare", str(tmp_path / "nowhere"), str(tmp_path / "x.h5")]) == 1


@pytest.mark.shared_data
def test_prepare_dtu(shared_data, tmp_path):
    scene_dir = shared_data / "dtu_scan24"
    started = time.perf_counter()
    # Downscaled: the test checks geometry, not pixels (the full 800x600 run is in the report).
    out = run_prepare(scene_dir, tmp_path / "scene.h5", PrepareConfig(max_image_size=200))
    elapsed = time.perf_counter() - started
    scene = read_scene(out)
    assert len(scene.views) == 49
    row = {int(i): k for k, i in enumerate(scene.points3D_ids)}
    for view in scene.views.values():
        assert (view.width, view.height) == (200, 144)
        assert view.source_ids.size >= 4
        xyz = scene.points3D_xyz[[row[i] for i in view.point3D_ids]]
        depth = xyz @ view.cam_from_world[2, :3] + view.cam_from_world[2, 3]
        assert np.all((depth >= view.depth_range[0]) & (depth <= view.depth_range[1]))
        np.testing.assert_allclose(view.points2D, _project(view, xyz), atol=3.0)  # COLMAP reprojection error
    assert elapsed < 30


def test_view_without_shared_points_gets_fallbacks(twins, tmp_path, caplog):
    from pipeline.colmap import read_model, write_model

    plain, _ = twins
    scene_dir = _copy(plain, tmp_path)
    cameras, images, points3D = read_model(scene_dir)
    lonely = 4
    images[lonely].point3D_ids = np.full_like(images[lonely].point3D_ids, -1)
    for point in points3D.values():
        keep = point.image_ids != lonely
        point.image_ids, point.point2D_idxs = point.image_ids[keep], point.point2D_idxs[keep]
    model_dir = next(p.parent for p in scene_dir.rglob("images.bin"))
    write_model(cameras, images, points3D, model_dir, ext=".bin")
    with caplog.at_level("WARNING"):
        scene = read_scene(run_prepare(scene_dir, tmp_path / "scene.h5"))
    view = scene.views[lonely]
    assert view.source_ids.size == 0 and view.point3D_ids.size == 0
    assert view.num_depth == PrepareConfig().num_depth_min
    assert lonely not in np.concatenate([v.source_ids for v in scene.views.values()])
    # Fallback depth range: from all sparse points in front of the view.
    depth = scene.points3D_xyz @ view.cam_from_world[2, :3] + view.cam_from_world[2, 3]
    front = depth[depth > 0]
    np.testing.assert_allclose(view.depth_range, np.percentile(front, [1, 99]) * [0.75, 1.25])
    assert "view 4 (000003.png) observes fewer than" in caplog.text


@pytest.mark.parametrize("depth_kind", ["grey16", "rgb48"])
def test_16_bit_photos_give_the_images_of_their_8_bit_source(twins, tmp_path, depth_kind):
    """A 16-bit copy of a scene stores what the 8-bit scene stores (not the all-white clip)."""
    from PIL import Image

    from test_photo import write_png16

    plain, _ = twins
    eight, sixteen = shutil.copytree(plain, tmp_path / "eight"), shutil.copytree(plain, tmp_path / "sixteen")
    for path in sorted((eight / "images").iterdir()):
        rgb = np.asarray(Image.open(path).convert("RGB"))
        if depth_kind == "grey16":
            rgb = np.asarray(Image.fromarray(rgb).convert("L"))
            Image.fromarray(rgb).save(path)  # the 8-bit reference is grey too
        write_png16(sixteen / "images" / path.name, rgb.astype(np.uint16) * 257)
    reference = read_scene(run_prepare(eight, tmp_path / "eight.h5"))
    scene = read_scene(run_prepare(sixteen, tmp_path / "sixteen.h5"))
    for image_id, view in reference.views.items():
        assert view.image.max() < 255  # the comparison would not see a clip to white otherwise
        # x * 257 scales back to x exactly: the stored scenes are the same, so is any depth inferred from them.
        np.testing.assert_array_equal(scene.views[image_id].image, view.image, err_msg=str(image_id))


def _rewrite_model(scene_dir, change):
    from pipeline.colmap import read_model, write_model

    model = read_model(scene_dir)
    model_dir = next(p.parent for p in scene_dir.rglob("images.bin"))
    write_model(*change(*model), model_dir, ext=".bin")


def test_photos_from_one_position_are_refused_naming_the_views(twins, tmp_path):
    """No parallax: today's network would return a constant depth and fusion an empty cloud."""
    scene_dir = _copy(twins[0], tmp_path)

    def one_spot(cameras, images, points3D):
        first = images[min(images)].projection_center()
        for image in images.values():
            rotation = image.cam_from_world()[:, :3]
            image.tvec = -rotation @ first  # turned in place around the first camera's centre
        return cameras, images, points3D

    _rewrite_model(scene_dir, one_spot)
    with pytest.raises(PrepareError, match=r"copy: no view has a source view with a triangulation angle of at least "
                       r"1 degrees .*1 \(000000\.png\): 0 deg, 2 \(000001\.png\)"):
        run_prepare(scene_dir, tmp_path / "scene.h5")
    assert not (tmp_path / "scene.h5").exists()


def test_a_single_image_is_refused(twins, tmp_path):
    scene_dir = _copy(twins[0], tmp_path)

    def only_first(cameras, images, points3D):
        keep = min(images)
        for point in points3D.values():
            seen = point.image_ids == keep
            point.image_ids, point.point2D_idxs = point.image_ids[seen], point.point2D_idxs[seen]
        points3D = {i: p for i, p in points3D.items() if len(p.image_ids)}
        return cameras, {keep: images[keep]}, points3D

    _rewrite_model(scene_dir, only_first)
    with pytest.raises(PrepareError, match=r"copy: only one registered image, 1 \(000000\.png\)"):
        run_prepare(scene_dir, tmp_path / "scene.h5")


def test_view_parallax_is_the_triangulation_angle():
    from pipeline.scene.parallax import view_parallax

    points = np.array([[0.0, 0.0, 10.0], [0.0, 0.0, 20.0], [0.0, 0.0, 1e6]])
    sources = np.array([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0]])  # the first is the reference's own spot
    expected = np.degrees(np.arctan2(2.0, 20.0))  # the median point: 20 away, 2 off the axis
    assert view_parallax(np.zeros(3), sources, points) == pytest.approx(expected)
    assert view_parallax(np.zeros(3), sources[:1], points) == 0.0
    assert view_parallax(np.zeros(3), np.zeros((0, 3)), points) == 0.0


def test_an_image_name_outside_the_scene_is_refused(twins, tmp_path, capsys):
    from pipeline.cli import main

    scene_dir = _copy(twins[0], tmp_path)
    (tmp_path / "secret.png").write_bytes((scene_dir / "images" / "000001.png").read_bytes())

    def escape(cameras, images, points3D):
        images[2].name = "../../secret.png"
        return cameras, images, points3D

    _rewrite_model(scene_dir, escape)
    assert main(["prepare", str(scene_dir), str(tmp_path / "scene.h5")]) == 1
    err = capsys.readouterr().err
    assert "images.bin: byte" in err and "'../../secret.png', which leaves the images folder" in err
    assert not (tmp_path / "scene.h5").exists()


def test_exif_orientation_is_named_in_a_warning_and_not_applied(twins, tmp_path, caplog):
    from PIL import Image

    scene_dir = _copy(twins[0], tmp_path)
    target = scene_dir / "images" / "000001.png"
    pixels = np.asarray(Image.open(target).convert("RGB"))
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.fromarray(pixels).save(target, format="JPEG", exif=exif, quality=100, subsampling=0)  # the model keeps the name
    with caplog.at_level("WARNING"):
        scene = read_scene(run_prepare(scene_dir, tmp_path / "scene.h5"))
    assert "000001.png: EXIF orientation 8 ignored" in caplog.text
    assert scene.views[2].image.shape == (72, 96, 3)  # the raw grid: turned it would be 96 high
    assert np.abs(scene.views[2].image.astype(int) - pixels).mean() < 3  # JPEG, not rotated
