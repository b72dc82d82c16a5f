"""Indoor scene family: determinism, ground truth consistent with the geometry, the photometric
effects (present and switchable), a hand-held trajectory inside the room, options and the CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from pipeline.formats.depth_file import read_depth_file
from pipeline.synth import IndoorOptions, load_scene, random_indoor_options, render_scene
from pipeline.synth.cameras import arc_rig, pixel_rays, project
from pipeline.synth.geometry import Box
from pipeline.synth.indoor import build_indoor_scene
from pipeline.synth.render import depth_for_camera, render_radiance
from conftest import backproject_depth, interpolate_depth  # tests/ is on sys.path

SMALL = dict(num_views=6, width=96, height=72, num_gt_points=5000, num_sparse_points=300)
SEED = 3001  # a room with a window, a ceiling lamp and a floor lamp


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory) -> Path:
    return render_scene(tmp_path_factory.mktemp("indoor") / "scene", seed=SEED, family="indoor",
                        **random_indoor_options(SEED), **SMALL)


def _images(folder: Path) -> list[np.ndarray]:
    return [np.asarray(PILImage.open(p)) for p in sorted((folder / "images").iterdir())]


def _centres(cams_from_world: np.ndarray) -> np.ndarray:
    return -np.einsum("vji,vj->vi", cams_from_world[:, :, :3], cams_from_world[:, :, 3])


def _quiet(**changes) -> IndoorOptions:
    """Options with every camera effect off (and no exposure drift), changed by ``changes``."""
    base = dict(vignetting=0.0, noise_sigma=0.0, shot_noise=0.0, motion_blur_px=0.0, jpeg_quality=0,
                exposure_jitter=0.0, auto_exposure=False)
    return IndoorOptions(**{**base, **changes})


# --- the scene folder ---------------------------------------------------------------------------


def test_layout_and_meta(scene_dir):
    meta = json.loads((scene_dir / "gt" / "meta.json").read_text())
    assert meta["family"] == "indoor" and meta["seed"] == SEED and (meta["width"], meta["height"]) == (96, 72)
    assert sorted(p.name for p in (scene_dir / "images").iterdir()) == [f"{v:06d}.png" for v in range(6)]
    assert len(meta["lights"]) >= 1 and len(meta["room_size"]) == 3
    for image in _images(scene_dir):
        assert image.shape == (72, 96, 3) and image.dtype == np.uint8


def test_deterministic(scene_dir, tmp_path):
    again = render_scene(tmp_path / "again", seed=SEED, family="indoor", **random_indoor_options(SEED), **SMALL)
    for a, b in zip(_images(scene_dir), _images(again)):
        np.testing.assert_array_equal(a, b)
    first = read_depth_file(scene_dir / "gt" / "depth.h5")
    second = read_depth_file(again / "gt" / "depth.h5")
    assert sorted(first) == sorted(second)
    for a, b in zip(first.values(), second.values()):
        np.testing.assert_array_equal(a.depth, b.depth)
        np.testing.assert_array_equal(a.cam_from_world, b.cam_from_world)
    other = render_scene(tmp_path / "other", seed=SEED + 1, family="indoor", **SMALL)
    assert not np.array_equal(_images(scene_dir)[0], _images(other)[0])


def test_gt_depth_reprojects_to_the_same_points(scene_dir):
    """A pixel back-projected with view A's depth lands, in view B, at B's depth of that pixel."""
    views = [view for _, view in sorted(read_depth_file(scene_dir / "gt" / "depth.h5").items())]
    assert all((v.depth > 0).all() for v in views), "a closed room: every pixel has a depth"
    checked = 0
    for a, b in ((0, 1), (1, 3), (2, 5)):
        va, vb = views[a], views[b]
        points = backproject_depth(va.depth, va.K, va.cam_from_world)
        pixels, depth_in_b = project(points, vb.K, vb.cam_from_world)
        inside = (pixels[:, 0] > 1) & (pixels[:, 0] < 95) & (pixels[:, 1] > 1) & (pixels[:, 1] < 71) & (depth_in_b > 0)
        assert inside.mean() > 0.3, f"views {a} and {b} hardly overlap"
        relative = np.abs(interpolate_depth(vb.depth, pixels[inside]) - depth_in_b[inside]) / depth_in_b[inside]
        # Occluded pixels and depth edges disagree; the bulk must agree to rounding.
        assert np.mean(relative < 1e-3) > 0.85, np.mean(relative < 1e-3)
        assert np.median(relative) < 1e-4
        checked += int(inside.sum())
    assert checked > 3000


def test_rebuilt_scene_gives_the_same_depth(scene_dir):
    view = read_depth_file(scene_dir / "gt" / "depth.h5")[3]
    depth = depth_for_camera(scene_dir, view.K, view.cam_from_world, 96, 72)
    np.testing.assert_array_equal(depth, view.depth)
    assert type(load_scene(scene_dir)).__name__ == "IndoorScene"


# --- the trajectory -----------------------------------------------------------------------------


def _looks_like_an_arc(cams_from_world: np.ndarray) -> bool:
    """Whether the cameras sit on a circle (sphere) around one point they all look at.

    The point nearest to every optical axis: an arc rig has it metres in front of the cameras
    (mean depth > 1), its axes pass within 3 % of that depth from it, and the centres keep the
    same distance from it (spread under 6 %).
    """
    centres = _centres(cams_from_world)
    axes = cams_from_world[:, 2, :3]  # the camera z-axis in world coordinates
    projector = np.eye(3)[None] - axes[:, :, None] * axes[:, None, :]
    point = np.linalg.solve(projector.sum(axis=0), np.einsum("vij,vj->i", projector, centres))
    offsets = point - centres
    depth = float(np.mean(np.einsum("vi,vi->v", offsets, axes)))
    axis_distance = np.sqrt(np.mean(np.linalg.norm(np.einsum("vij,vj->vi", projector, offsets), axis=1) ** 2))
    radius = np.linalg.norm(offsets, axis=1)
    return depth > 1.0 and axis_distance < 0.03 * depth and radius.std() < 0.06 * radius.mean()


def test_trajectory_is_hand_held_not_an_arc():
    scene = build_indoor_scene(3000, 20, 64, 48, IndoorOptions())
    centres = _centres(scene.cams_from_world)
    baselines = np.linalg.norm(np.diff(centres, axis=0), axis=1)
    assert 0.03 < baselines.min() and baselines.max() < 0.3, baselines
    assert baselines.sum() > 1.0, "the camera walks"
    # Turning to look around, a little per frame.
    forward = scene.cams_from_world[:, 2, :3]
    turn = np.degrees(np.arccos(np.clip(np.einsum("vi,vi->v", forward[1:], forward[:-1]), -1, 1)))
    assert turn.max() < 12.0 and np.degrees(np.arccos(np.clip(forward[0] @ forward[-1], -1, 1))) > 25.0
    # Eye height with a bob, not a rig at fixed elevation steps; hand shake rolls the camera.
    assert 1.2 < centres[:, 2].min() and centres[:, 2].max() < 1.8 and np.ptp(centres[:, 2]) > 0.005
    roll = np.degrees(np.arcsin(np.clip(scene.cams_from_world[:, 0, 2], -1, 1)))
    assert np.std(roll) > 0.1
    # The axes do not converge on a target in front of the cameras as an arc rig's do.
    assert not _looks_like_an_arc(scene.cams_from_world)
    arc = arc_rig(np.random.default_rng(0), 20, np.array([0.0, 0.2, 0.35]), 4.5, 25.0, 8.0, 10, 8.0, 1.0)
    assert _looks_like_an_arc(arc), "the test would not tell the object family's rig apart"


@pytest.mark.parametrize("seed", [3000, 3002, 3003, 41])
def test_cameras_inside_the_room_and_outside_the_furniture(seed):
    scene = build_indoor_scene(seed, 20, 64, 48, IndoorOptions(**random_indoor_options(seed)))
    centres = _centres(scene.cams_from_world)
    assert np.all(centres > 0.5) and np.all(centres < scene.size - 0.5)
    for primitive in scene.geometry.primitives[1:]:
        if isinstance(primitive, Box):
            local = np.abs((centres - primitive.centre) @ primitive.rotation) - primitive.half
            assert np.all(local.max(axis=1) > 0.2), f"a camera inside or against {primitive}"
    # Nothing within 25 cm of any camera along a coarse grid of its rays.
    grid = np.stack(np.meshgrid(np.linspace(0, 64, 9), np.linspace(0, 48, 7)), -1).reshape(-1, 2)
    for view in range(len(centres)):
        origin, directions = pixel_rays(grid, scene.K, scene.cams_from_world[view])
        t, _ = scene.geometry.nearest_t(origin, directions)
        assert np.all(t * np.linalg.norm(directions, axis=1) > 0.25)


# --- the photometric effects --------------------------------------------------------------------


def test_exposure_follows_the_view_and_can_be_fixed():
    scene = build_indoor_scene(3002, 20, 64, 48, IndoorOptions(**random_indoor_options(3002)))
    gains = scene.gains.mean(axis=1)
    assert gains.max() / gains.min() > 1.2, "auto exposure reacts to windows and lamps in view"
    fixed = build_indoor_scene(3002, 20, 64, 48, _quiet())
    assert np.ptp(fixed.gains.mean(axis=1)) < 0.05


def test_windows_clip_to_white():
    options = random_indoor_options(SEED)
    scene = build_indoor_scene(SEED, 6, 96, 72, IndoorOptions(**options))
    radiance = [render_radiance(scene, view, None) for view in range(6)]
    assert max(r.max() for r in radiance) > 1.5, "windows and lamps are brighter than white"
    saturated = max(float(np.mean(scene.photo(r, v).min(axis=2) == 255)) for v, r in enumerate(radiance))
    assert saturated > 0.002
    dim = build_indoor_scene(SEED, 6, 96, 72, IndoorOptions(**{**options, "window_radiance": 0.3, "lamp_power": 0.2}))
    assert max(render_radiance(dim, v, None).max() for v in range(6)) < 1.0


def _floor_radiance_from(scene, centre: np.ndarray) -> np.ndarray:
    """Radiance of a grid of floor points seen from ``centre``. Shape: (N, 3)."""
    xs, ys = np.meshgrid(np.linspace(0.3, scene.size[0] - 0.3, 40), np.linspace(0.3, scene.size[1] - 0.3, 40))
    floor = np.stack([xs.ravel(), ys.ravel(), np.zeros(xs.size)], axis=1)
    colour, t = scene.radiance(centre, floor - centre)
    seen = np.abs(t - 1.0) < 1e-6  # not hidden by furniture
    return np.where(seen[:, None], colour, np.nan)


def test_specular_highlight_moves_with_the_camera():
    options = dict(num_lamps=1, num_windows=0, table=False, rug=False, specular=True)
    for seed in range(3100, 3130):  # a room whose floor is varnished wood
        scene = build_indoor_scene(seed, 20, 64, 48, IndoorOptions(**options))
        if scene.materials[scene.geometry.primitives[0].materials[5]].specular > 0.15:
            break
    centres = _centres(scene.cams_from_world)
    first, last = _floor_radiance_from(scene, centres[0]), _floor_radiance_from(scene, centres[-1])
    both = np.isfinite(first[:, 0]) & np.isfinite(last[:, 0])
    assert np.nanmax(np.abs(first - last)[both]) > 0.05, "the same floor point looks different from two views"
    assert np.nanargmax(first[:, 0]) != np.nanargmax(last[:, 0]), "the highlight moves"
    matte = dataclasses.replace(scene, options=dataclasses.replace(scene.options, specular=False))
    first, last = _floor_radiance_from(matte, centres[0]), _floor_radiance_from(matte, centres[-1])
    both = np.isfinite(first[:, 0]) & np.isfinite(last[:, 0])
    np.testing.assert_allclose(first[both], last[both], atol=1e-6)


def test_shadows_switch():
    scene = build_indoor_scene(SEED, 6, 96, 72, IndoorOptions(**random_indoor_options(SEED)))
    lit = dataclasses.replace(scene, options=dataclasses.replace(scene.options, shadows=False))
    shadowed = sum(float((render_radiance(lit, v, None) - render_radiance(scene, v, None)).max()) for v in (0, 3))
    assert shadowed > 0.05


def test_camera_effects_are_present_and_switchable():
    flat = np.full((72, 96, 3), 0.3, dtype=np.float32)
    quiet = build_indoor_scene(SEED, 6, 96, 72, _quiet())
    image = quiet.photo(flat, 0).astype(float)
    assert image.std(axis=(0, 1)).max() == 0, "no effect on: a flat radiance gives a flat photo"
    vignetted = build_indoor_scene(SEED, 6, 96, 72, _quiet(vignetting=0.4)).photo(flat, 0).astype(float)
    assert vignetted[36, 48].mean() - vignetted[0, 0].mean() > 20
    noisy = build_indoor_scene(SEED, 6, 96, 72, _quiet(noise_sigma=0.01, shot_noise=0.02)).photo(flat, 0).astype(float)
    assert noisy.std() > 1.0
    checker = np.kron((np.indices((9, 12)).sum(axis=0) % 2), np.ones((8, 8)))[:, :, None] * np.ones(3, np.float32)
    checker = (0.1 + 0.6 * checker).astype(np.float32)
    sharp = quiet.photo(checker, 0).astype(float)
    blurred_scene = build_indoor_scene(SEED, 6, 96, 72, _quiet(motion_blur_px=4.0))
    assert np.hypot(*blurred_scene.blur_vector(0)) > 1.0 and np.hypot(*quiet.blur_vector(0)) == 0
    blurred = blurred_scene.photo(checker, 0).astype(float)
    assert np.abs(np.diff(blurred, axis=1)).sum() + np.abs(np.diff(blurred, axis=0)).sum() < 0.95 * (
        np.abs(np.diff(sharp, axis=1)).sum() + np.abs(np.diff(sharp, axis=0)).sum())
    jpeg = build_indoor_scene(SEED, 6, 96, 72, _quiet(jpeg_quality=50)).photo(checker, 0).astype(float)
    assert 0 < np.abs(jpeg - sharp).mean() < 10


# --- options and the CLI ------------------------------------------------------------------------


def test_bad_options_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match=r"unknown option.*num_boxes.*indoor family"):
        render_scene(tmp_path / "a", family="indoor", num_boxes=3)
    with pytest.raises(ValueError, match="unknown family"):
        render_scene(tmp_path / "b", family="garden")
    with pytest.raises(ValueError, match="jpeg_quality"):
        render_scene(tmp_path / "c", family="indoor", jpeg_quality=120)


def test_cli_renders_indoor(tmp_path):
    from pipeline.cli import main

    out = tmp_path / "room"
    assert main(["render-scene", str(out), "--family", "indoor", "--varied", "--seed", "7", "--num-views", "3",
                 "--width", "48", "--height", "32"]) == 0
    meta = json.loads((out / "gt" / "meta.json").read_text())
    assert meta["family"] == "indoor" and meta["options"] == {
        **dataclasses.asdict(IndoorOptions(**random_indoor_options(7))),
        "distortion_params": list(IndoorOptions().distortion_params)}


def test_held_out_rooms_are_not_training_data():
    from pipeline.config import load_config
    from pipeline.synth.indoor import HELDOUT_SEEDS

    assert len(HELDOUT_SEEDS) >= 4
    configs = [None, *sorted(Path(__file__).resolve().parents[1].joinpath("config").glob("*.yaml"))]
    for path in configs:
        seeds = load_config(path)["training_data"]["seeds"]  # a workflow section, read by rules/ only
        assert not set(seeds) & set(HELDOUT_SEEDS), f"{path or 'default config'} trains on held-out rooms"
