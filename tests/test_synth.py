"""Synthetic scene renderer: determinism, multi-view consistency of the ground truth, the COLMAP
model's tracks, the distortion twin, exposure changes, atomic output, options and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from pipeline.colmap import qvec_to_rotmat, read_model
from pipeline.formats.depth_file import read_depth_attrs, read_depth_file
from pipeline.formats.ply import read_ply
from pipeline.synth import random_scene_options, render_scene
from pipeline.synth.cameras import distort_normalized, project, undistort_normalized
from conftest import backproject_depth, interpolate_depth  # tests/ is on sys.path

SMALL = dict(num_views=4, width=64, height=48, num_gt_points=5000, num_sparse_points=300)
SEED = 3


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory) -> Path:
    return render_scene(tmp_path_factory.mktemp("synth") / "scene", seed=SEED, **SMALL)


@pytest.fixture(scope="module")
def twin_dir(tmp_path_factory) -> Path:
    return render_scene(tmp_path_factory.mktemp("synth") / "twin", seed=SEED, distortion=True, **SMALL)


def _images(folder: Path) -> list[np.ndarray]:
    return [np.asarray(PILImage.open(p)) for p in sorted((folder / "images").iterdir())]


def _cam_from_world(image) -> np.ndarray:
    return np.concatenate([qvec_to_rotmat(image.qvec), image.tvec[:, None]], axis=1)


def _lookup(depth: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """Depth at the pixels containing the (x, y) positions (nearest pixel), nan outside."""
    cols, rows = np.floor(pixels[:, 0]).astype(int), np.floor(pixels[:, 1]).astype(int)
    inside = (cols >= 0) & (cols < depth.shape[1]) & (rows >= 0) & (rows < depth.shape[0])
    out = np.full(len(pixels), np.nan)
    out[inside] = depth[rows[inside], cols[inside]]
    return out


def test_layout_and_meta(scene_dir):
    names = sorted(p.name for p in (scene_dir / "images").iterdir())
    assert names == ["000000.png", "000001.png", "000002.png", "000003.png"]
    meta = json.loads((scene_dir / "gt" / "meta.json").read_text())
    assert meta["seed"] == SEED and meta["num_views"] == 4 and (meta["width"], meta["height"]) == (64, 48)
    assert meta["generator"] == "selfmvs.synth" and meta["units"]
    assert not any(p.name.startswith(".") for p in scene_dir.parent.iterdir()), "temporary folder left behind"
    assert read_depth_attrs(scene_dir / "gt" / "depth.h5")["kind"] == "selfmvs.gt_depth"
    for image in _images(scene_dir):
        assert image.shape == (48, 64, 3) and image.dtype == np.uint8


def test_deterministic_by_seed(scene_dir, tmp_path):
    again = render_scene(tmp_path / "again", seed=SEED, **SMALL)
    for a, b in zip(sorted((scene_dir / "images").iterdir()), sorted((again / "images").iterdir())):
        assert a.read_bytes() == b.read_bytes()
    depth_a, depth_b = read_depth_file(scene_dir / "gt" / "depth.h5"), read_depth_file(again / "gt" / "depth.h5")
    assert all(np.array_equal(depth_a[i].depth, depth_b[i].depth) for i in depth_a)
    other = render_scene(tmp_path / "other", seed=SEED + 1, **SMALL)
    assert not np.array_equal(_images(scene_dir)[0], _images(other)[0])


def test_gt_depth_is_multiview_consistent(scene_dir):
    views = read_depth_file(scene_dir / "gt" / "depth.h5")
    assert sorted(views) == [1, 2, 3, 4]
    for ref, src in ((1, 2), (2, 4)):
        depth_ref, depth_src = views[ref].depth, views[src].depth
        assert np.all(depth_ref > 0), "the room should give every pixel a depth"
        points = backproject_depth(depth_ref, views[ref].K, views[ref].cam_from_world)
        pixels, z = project(points, views[src].K, views[src].cam_from_world)
        seen = _lookup(depth_src, pixels)
        inside = ~np.isnan(seen)
        assert inside.mean() > 0.5
        relative = np.abs(seen[inside] - z[inside]) / z[inside]
        # Where view src sees the same surface the depths agree; occluded pixels see nearer surfaces.
        assert np.mean(relative < 0.01) > 0.75
        assert np.mean(seen[inside] > z[inside] * 1.02) < 0.05, "a surface behind the back-projected point"
        # The check has teeth: with another view's pose the depths no longer agree.
        wrong_pixels, wrong_z = project(points, views[src].K, views[1 if src != 1 else 3].cam_from_world)
        wrong_seen = _lookup(depth_src, wrong_pixels)
        wrong_inside = ~np.isnan(wrong_seen)
        wrong = np.abs(wrong_seen[wrong_inside] - wrong_z[wrong_inside]) / wrong_z[wrong_inside]
        assert np.mean(wrong < 0.01) < 0.5


def test_sparse_points_project_to_keypoints_and_lie_on_depth(scene_dir):
    cameras, images, points3D = read_model(scene_dir / "sparse")
    assert len(cameras) == 1 and cameras[1].model == "PINHOLE"
    assert len(images) == 4 and 200 <= len(points3D) <= 300
    depth = read_depth_file(scene_dir / "gt" / "depth.h5")
    fx, fy, cx, cy = cameras[1].params
    K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]])
    residuals, depth_errors, on_image = [], [], 0
    for point in points3D.values():
        assert len(point.image_ids) >= 2 and len(set(point.image_ids.tolist())) == len(point.image_ids)
        for image_id, index in zip(point.image_ids, point.point2D_idxs):
            image = images[int(image_id)]
            assert image.point3D_ids[index] == point.id
            pixel, z = project(point.xyz[None], K, _cam_from_world(image))
            residuals.append(np.linalg.norm(pixel[0] - image.xys[index]))
            gt = interpolate_depth(depth[int(image_id)].depth, pixel)[0]
            depth_errors.append(abs(gt - z[0]) / z[0])
            on_image += 0.5 <= pixel[0, 0] <= 63.5 and 0.5 <= pixel[0, 1] <= 47.5
    residuals, depth_errors = np.array(residuals), np.array(depth_errors)
    assert on_image == len(residuals)
    assert 0.2 < np.sqrt(np.mean(residuals**2) / 2) < 0.45, "keypoint noise should be about 0.3 px"
    assert residuals.max() < 2.5
    assert np.median(depth_errors) < 1e-4 and np.mean(depth_errors < 0.01) > 0.9
    # Unmatched keypoints exist, and every triangulated keypoint is listed in its point's track.
    for image in images.values():
        assert np.any(image.point3D_ids == -1)
        for index in np.flatnonzero(image.point3D_ids >= 0):
            point = points3D[int(image.point3D_ids[index])]
            assert image.id in point.image_ids.tolist()


def test_sparse_tracks_are_complete(scene_dir):
    """A point that a view sees (on the image, not occluded per its GT depth) is in its track."""
    cameras, images, points3D = read_model(scene_dir / "sparse")
    depth = read_depth_file(scene_dir / "gt" / "depth.h5")
    fx, fy, cx, cy = cameras[1].params
    K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]])
    missing = checked = 0
    for image in images.values():
        xyz = np.array([p.xyz for p in points3D.values()])
        pixel, z = project(xyz, K, _cam_from_world(image))
        gt = _lookup(depth[image.id].depth, pixel)
        margin = (pixel[:, 0] > 4) & (pixel[:, 0] < 60) & (pixel[:, 1] > 4) & (pixel[:, 1] < 44)
        visible = margin & (np.abs(gt - z) < 0.002 * z)
        in_track = np.array([image.id in p.image_ids.tolist() for p in points3D.values()])
        checked += visible.sum()
        missing += (visible & ~in_track).sum()
    assert checked > 100
    # A few may be left out for grazing viewing angles.
    assert missing / checked < 0.1


def test_images_have_texture_and_exposure_changes(scene_dir):
    images = _images(scene_dir)
    for image in images:
        gray = image.astype(np.float64).mean(axis=2)
        assert gray.std() > 10
        assert np.abs(np.diff(gray, axis=1)).mean() > 2, "no fine texture"
    # Estimate each view's gain from the sparse points' colours (rendered at gain 1) and the
    # pixel values at their keypoints; it must follow the gains of meta.json and vary.
    meta = json.loads((scene_dir / "gt" / "meta.json").read_text())
    gains = np.array(meta["exposure_gains"]).mean(axis=1)
    _, colmap_images, points3D = read_model(scene_dir / "sparse")
    estimated = []
    for view, image in enumerate(images):
        entry = colmap_images[view + 1]
        seen = np.flatnonzero(entry.point3D_ids >= 0)
        rgb = np.array([points3D[int(i)].rgb for i in entry.point3D_ids[seen]], dtype=np.float64)
        xy = np.floor(entry.xys[seen]).astype(int)
        observed = image[xy[:, 1], xy[:, 0]].astype(np.float64)
        bright = rgb.sum(axis=1) > 150
        estimated.append(np.median(observed[bright].sum(axis=1) / rgb[bright].sum(axis=1)))
    estimated = np.array(estimated)
    assert np.ptp(gains) > 0.05
    np.testing.assert_allclose(estimated, gains, rtol=0.06)


def test_distortion_twin(scene_dir, twin_dir):
    cams_a, images_a, points_a = read_model(scene_dir / "sparse")
    cams_b, images_b, points_b = read_model(twin_dir / "sparse")
    assert cams_b[1].model == "OPENCV" and len(cams_b[1].params) == 8
    np.testing.assert_array_equal(cams_a[1].params, cams_b[1].params[:4])
    dist = cams_b[1].params[4:]
    assert abs(dist[0]) > 0.05, "distortion should be noticeable"
    for image_id in images_a:
        np.testing.assert_array_equal(images_a[image_id].qvec, images_b[image_id].qvec)
        np.testing.assert_array_equal(images_a[image_id].tvec, images_b[image_id].tvec)
    assert points_a.keys() == points_b.keys()
    for point_id in points_a:
        np.testing.assert_array_equal(points_a[point_id].xyz, points_b[point_id].xyz)
        np.testing.assert_array_equal(points_a[point_id].image_ids, points_b[point_id].image_ids)
    # Keypoints of the twin are the lens-distorted keypoints of the pinhole model.
    fx, fy, cx, cy = cams_a[1].params
    for image_id in images_a:
        a, b = images_a[image_id], images_b[image_id]
        matched = a.point3D_ids >= 0
        undistorted = undistort_normalized((b.xys[matched] - [cx, cy]) / [fx, fy], dist) * [fx, fy] + [cx, cy]
        np.testing.assert_allclose(undistorted, a.xys[matched], atol=0.15)
    depth_a = read_depth_file(scene_dir / "gt" / "depth.h5")
    depth_b = read_depth_file(twin_dir / "gt" / "depth.h5")
    assert all(np.array_equal(depth_a[i].depth, depth_b[i].depth) for i in depth_a)


def test_distorted_pixel_shows_the_undistorted_ray(tmp_path):
    """Sampling the pinhole image at undistort(p) reproduces the distorted image at p."""
    from scipy.ndimage import map_coordinates

    # Noise-free, and large enough for the lens to move pixels by several pixels at the borders.
    size = dict(num_views=2, width=128, height=96, noise_sigma=0.0, num_gt_points=100, num_sparse_points=50)
    pinhole_dir = render_scene(tmp_path / "pinhole", seed=SEED, **size)
    lens_dir = render_scene(tmp_path / "lens", seed=SEED, distortion=True, **size)
    cameras, _, _ = read_model(lens_dir / "sparse")
    fx, fy, cx, cy, *dist = cameras[1].params
    pinhole, distorted = _images(pinhole_dir)[0].astype(np.float64), _images(lens_dir)[0].astype(np.float64)
    rows, cols = np.indices(pinhole.shape[:2])
    xy = np.stack([(cols.ravel() + 0.5 - cx) / fx, (rows.ravel() + 0.5 - cy) / fy], axis=1)
    source = undistort_normalized(xy, np.array(dist)) * [fx, fy] + [cx, cy] - 0.5
    interior = (source[:, 0] > 1) & (source[:, 0] < 126) & (source[:, 1] > 1) & (source[:, 1] < 94)
    resampled = np.stack(
        [map_coordinates(pinhole[..., c], [source[:, 1], source[:, 0]], order=1) for c in range(3)], axis=1
    )
    flat = distorted.reshape(-1, 3)
    error = np.abs(resampled - flat)[interior].mean()
    baseline = np.abs(pinhole.reshape(-1, 3) - flat)[interior].mean()
    assert error < 0.5 * baseline


def test_lens_model_round_trip():
    rng = np.random.default_rng(0)
    xy = rng.uniform(-0.7, 0.7, size=(1000, 2))
    dist = np.array([-0.12, 0.03, 0.0012, -0.0008])
    np.testing.assert_allclose(undistort_normalized(distort_normalized(xy, dist), dist), xy, atol=1e-10)


def test_gt_points_on_visible_surfaces(scene_dir):
    cloud = read_ply(scene_dir / "gt" / "points.ply")
    assert len(cloud) == 5000 and cloud.normals is not None and cloud.rgb is not None
    np.testing.assert_allclose(np.linalg.norm(cloud.normals, axis=1), 1.0, atol=1e-5)
    views = read_depth_file(scene_dir / "gt" / "depth.h5")
    on_surface = np.zeros(len(cloud), dtype=bool)
    for view in views.values():
        pixels, z = project(cloud.xyz.astype(np.float64), view.K, view.cam_from_world)
        inside = (z > 0) & np.all((pixels >= 0) & (pixels <= [64, 48]), axis=1)
        gt = interpolate_depth(view.depth, pixels)
        on_surface |= inside & (np.abs(gt - z) < 0.01 * z)
    # Each sample is on a surface some view sees (a few at depth edges fail the interpolation).
    assert on_surface.mean() > 0.95


def test_pycolmap_reads_the_model(scene_dir, twin_dir):
    pycolmap = pytest.importorskip("pycolmap")
    _, images, points3D = read_model(scene_dir / "sparse")
    for folder, model in ((scene_dir, "PINHOLE"), (twin_dir, "OPENCV")):
        reconstruction = pycolmap.Reconstruction(str(folder / "sparse"))
        assert reconstruction.num_images() == 4
        assert reconstruction.num_points3D() == len(points3D)
        assert reconstruction.cameras[1].model.name == model
        for image_id, image in images.items():
            matrix = reconstruction.images[image_id].cam_from_world().matrix()
            np.testing.assert_allclose(matrix, _cam_from_world(image), atol=1e-9)


def test_random_scene_options_vary_and_render(tmp_path):
    options = [random_scene_options(seed) for seed in range(6)]
    assert options[0] == random_scene_options(0)
    assert len({json.dumps(o, sort_keys=True) for o in options}) == 6
    assert len({o["num_boxes"] for o in options}) > 1
    size = dict(num_views=3, width=48, height=32, num_gt_points=2000)
    out = render_scene(tmp_path / "random", seed=11, **size, **random_scene_options(11))
    assert len(list((out / "images").iterdir())) == 3


def test_bad_options_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown option"):
        render_scene(tmp_path / "a", num_boxs=3)
    with pytest.raises(ValueError, match="num_views"):
        render_scene(tmp_path / "a", num_views=1)
    with pytest.raises(ValueError, match="camera_radius"):
        render_scene(tmp_path / "a", camera_radius=100.0)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    with pytest.raises(ValueError, match="not a synthetic scene"):
        render_scene(tmp_path / "mine", num_views=2, width=16, height=16)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "precious"


def test_interrupted_render_leaves_nothing(tmp_path, monkeypatch):
    import pipeline.formats.ply

    def broken(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline.formats.ply, "write_ply", broken)
    with pytest.raises(KeyboardInterrupt):
        render_scene(tmp_path / "scene", num_views=2, width=16, height=16, num_gt_points=100)
    assert list(tmp_path.iterdir()) == []


def test_rerender_replaces_an_earlier_render(tmp_path):
    out = render_scene(tmp_path / "scene", seed=1, num_views=2, width=16, height=16, num_gt_points=100)
    render_scene(out, seed=2, num_views=3, width=16, height=16, num_gt_points=100)
    assert json.loads((out / "gt" / "meta.json").read_text())["seed"] == 2
    assert len(list((out / "images").iterdir())) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["scene"]


def test_cli_render_scene(tmp_path):
    from pipeline.cli import main

    config = tmp_path / "config.yaml"
    config.write_text("demo:\n  seed: 5\n  num_views: 3\n  width: 40\n  height: 32\n")
    assert main(["render-scene", str(tmp_path / "cli"), "--config", str(config), "--width", "48"]) == 0
    meta = json.loads((tmp_path / "cli" / "gt" / "meta.json").read_text())
    assert (meta["seed"], meta["num_views"], meta["width"], meta["height"], meta["distortion"]) == (5, 3, 48, 32, False)
    assert main(["render-scene", str(tmp_path / "bad"), "--width", "8"]) == 1
    assert not (tmp_path / "bad").exists()


def test_primitives_hit_where_geometry_says():
    from pipeline.synth.geometry import Box, Cylinder, Room, SceneGeometry, Sphere, rotation_zyx

    room = Room(np.array([-10.0, -10.0, 0.0]), np.array([10.0, 10.0, 5.0]), np.arange(6))
    sphere = Sphere(np.array([0.0, 5.0, 1.0]), 1.0, np.array([6]))
    box = Box(np.array([3.0, 5.0, 1.0]), np.array([0.5, 0.5, 1.0]), rotation_zyx(np.pi / 4), np.full(6, 7))
    cylinder = Cylinder(np.array([-3.0, 5.0, 0.0]), 0.5, 2.0, np.array([8, 9, 10]))
    geometry = SceneGeometry([room, sphere, box, cylinder])
    origins = np.array([[0.0, 0.0, 1.0], [3.1, 0.0, 1.0], [-3.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    directions = np.array([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, -1.0], [0.0, -1.0, 0.0]])
    hits = geometry.cast(origins, directions)
    # Sphere: straight ahead at distance 5 - 1 = 4, normal towards the camera.
    np.testing.assert_allclose(hits.points[0], [0.0, 4.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(hits.normals[0], [0.0, -1.0, 0.0], atol=1e-12)
    # Box rotated 45 degrees about z: along x = 3.1 its slanted face is at y = 5 - sqrt(2)/2 + 0.1.
    assert hits.material[1] == 7
    np.testing.assert_allclose(hits.points[1], [3.1, 5.0 - np.sqrt(0.5) + 0.1, 1.0], atol=1e-12)
    np.testing.assert_allclose(hits.normals[1], [np.sqrt(0.5), -np.sqrt(0.5), 0.0], atol=1e-12)
    # Cylinder side (material 8) at y = 4.5; t is in units of the direction's length (2).
    assert hits.material[2] == 8 and hits.t[2] == pytest.approx(2.25)
    np.testing.assert_allclose(hits.normals[2], [0.0, -1.0, 0.0], atol=1e-12)
    # Straight down: the ground (room face -z); backwards: the room's -y wall, normal inwards.
    assert hits.material[3] == 5 and hits.t[3] == pytest.approx(1.0)
    np.testing.assert_allclose(hits.normals[3], [0.0, 0.0, 1.0])
    assert hits.material[4] == 3 and hits.t[4] == pytest.approx(10.0)
    np.testing.assert_allclose(hits.normals[4], [0.0, 1.0, 0.0])
    # Area-uniform samples lie on the surfaces they were drawn from.
    rng = np.random.default_rng(0)
    for primitive in (sphere, box, cylinder):
        points, normals = primitive.sample(rng, 200)
        outward, _ = primitive.normal_and_face(points.T)
        np.testing.assert_allclose(outward.T, normals, atol=1e-9)
        t = primitive.intersect((points + 1e-3 * normals).T, -normals.T)
        np.testing.assert_allclose(t, 1e-3, atol=1e-9)


def test_depth_for_any_camera(scene_dir, tmp_path):
    from pipeline.synth import depth_for_camera

    views = read_depth_file(scene_dir / "gt" / "depth.h5")
    view = views[2]
    np.testing.assert_array_equal(depth_for_camera(scene_dir, view.K, view.cam_from_world, 64, 48), view.depth)
    # At twice the resolution (K scaled by 2), each pixel centre of the low-resolution map lies
    # between four high-resolution centres; inverse depth interpolates exactly on planes.
    K2 = view.K.copy()
    K2[:2] *= 2
    fine = depth_for_camera(scene_dir, K2, view.cam_from_world, 128, 96)
    rows, cols = np.indices((48, 64))
    pixels = np.stack([2 * (cols.ravel() + 0.5), 2 * (rows.ravel() + 0.5)], axis=1)
    relative = np.abs(interpolate_depth(fine, pixels) - view.depth.ravel()) / view.depth.ravel()
    assert np.median(relative) < 1e-5 and np.mean(relative < 1e-3) > 0.9
    (tmp_path / "gt").mkdir()
    (tmp_path / "gt" / "meta.json").write_text(json.dumps({"generator": "other", "generator_version": 1}))
    with pytest.raises(ValueError, match="cannot rebuild"):
        depth_for_camera(tmp_path, view.K, view.cam_from_world, 64, 48)
