"""Planar in-fill of low-texture regions (pipeline.scene.planar_fill) and its place in the infer stage."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.config import InferConfig, PlaneFillConfig
from pipeline.formats.depth_file import DepthView, read_depth_attrs, read_depth_file, write_depth_file
from pipeline.scene.planar_fill import fit_inverse_depth_plane, low_texture_mask, planar_fill
from pipeline.stages.infer import run_infer

HEIGHT, WIDTH = 60, 80
K = np.array([[70.0, 0.0, WIDTH / 2], [0.0, 70.0, HEIGHT / 2], [0.0, 0.0, 1.0]])


def plane_depth(normal, offset, height=HEIGHT, width=WIDTH) -> np.ndarray:
    """z-depth of the plane normal . X = offset seen by camera K at the origin (pixel centres j + 0.5)."""
    rows, cols = np.mgrid[0:height, 0:width] + 0.5
    rays = np.linalg.solve(K, np.stack([cols, rows, np.ones_like(cols)]).reshape(3, -1)).reshape(3, height, width)
    return (offset / np.tensordot(np.asarray(normal, float), rays, axes=1)).astype(np.float32)


def textured_image(rng, patch: tuple[slice, slice] | None) -> np.ndarray:
    """Random texture everywhere, one uniform grey patch."""
    image = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    if patch is not None:
        image[patch] = 128
    return image


PATCH = (slice(15, 45), slice(20, 60))


def test_low_texture_mask_finds_the_uniform_patch_only():
    image = textured_image(np.random.default_rng(0), PATCH)
    mask = low_texture_mask(image, texture_std=0.015, window=7)
    inner = (slice(18, 42), slice(23, 57))  # the patch less half a window
    assert mask[inner].all()
    assert mask.sum() <= 30 * 40  # nothing outside the patch
    with pytest.raises(ValueError, match="odd"):
        low_texture_mask(image, 0.015, 6)


def test_ransac_recovers_a_plane_despite_outliers():
    rng = np.random.default_rng(1)
    u, v = rng.uniform(0, 80, 400), rng.uniform(0, 60, 400)
    inverse = 0.002 * u - 0.001 * v + 0.3
    inverse[:120] *= rng.uniform(1.05, 1.5, 120)  # 30 % off the plane
    plane, fraction = fit_inverse_depth_plane(u, v, inverse, 0.01, 200, np.random.default_rng(0))
    np.testing.assert_allclose(plane, [0.002, -0.001, 0.3], rtol=1e-6)
    assert fraction == pytest.approx(0.7, abs=0.01)


def test_a_uniform_patch_of_a_slanted_plane_takes_the_plane_of_its_surroundings():
    """The network's depth is right wherever texture is within reach and 4 % off in the patch's
    inside, where the 7 x 7 window sees no texture; after the in-fill the inside is on the plane
    (exactly: a plane's inverse depth is affine in the pixel coordinates)."""
    rng = np.random.default_rng(2)
    truth = plane_depth([0.2, -0.5, 1.0], 4.0)
    estimate = truth.copy()
    inside = np.zeros(truth.shape, bool)
    inside[18:42, 23:57] = True  # the patch less half a window: the low-texture region
    estimate[inside] *= 1.04
    image = textured_image(rng, PATCH)
    result = planar_fill(estimate, image, (1.0, 20.0))
    assert result.planes == 1 and result.regions == 1
    assert not (result.filled & ~inside).any()
    assert result.filled.sum() == inside.sum() - 4  # the opening (3 x 3 cross) takes the 4 corners
    np.testing.assert_allclose(result.depth[result.filled], truth[result.filled], rtol=1e-5)
    np.testing.assert_array_equal(result.depth[~result.filled], estimate[~result.filled])
    # textured everywhere: nothing to fill
    plain = planar_fill(estimate, textured_image(rng, None), (1.0, 20.0))
    assert plain.regions == 0 and not plain.filled.any()
    np.testing.assert_array_equal(plain.depth, estimate)


@pytest.mark.parametrize("level, fill_all", [(255, PlaneFillConfig(max_brightness=1.0)),
                                             (5, PlaneFillConfig(min_brightness=0.0))])
def test_a_region_clipped_to_white_or_black_is_left_alone(level, fill_all):
    """A uniform patch at the sensor's white level (a lit backdrop, as behind the DTU objects) or nearly black
    (grey 0.02: an unlit background, as around them) is left alone by default (max_brightness 0.97,
    min_brightness 0.1) and filled with max_brightness 1 or min_brightness 0; a grey patch is filled either way."""
    rng = np.random.default_rng(2)
    estimate = plane_depth([0.2, -0.5, 1.0], 4.0)
    clipped_image = textured_image(rng, PATCH)
    clipped_image[PATCH] = level
    assert planar_fill(estimate, clipped_image, (1.0, 20.0), fill_all).planes == 1
    clipped = planar_fill(estimate, clipped_image, (1.0, 20.0))
    assert clipped.regions == 1 and clipped.planes == 0 and not clipped.filled.any()
    np.testing.assert_array_equal(clipped.depth, estimate)
    grey = planar_fill(estimate, textured_image(rng, PATCH), (1.0, 20.0))
    assert grey.planes == 1 and grey.filled.any()


def test_confident_within_zeroes_the_confidence_of_planes_far_from_the_network():
    """fill_low_texture: the patch's plane is 4 % from the network's depth in its left half and 1 % in its
    right half; with confident_within 0.02 the left half keeps the plane's depth with confidence 0, the right
    half keeps the network's confidence; without it (null) every filled pixel keeps it."""
    from pipeline.formats.scene_file import SceneView
    from pipeline.inference import fill_low_texture

    rng = np.random.default_rng(8)
    truth = plane_depth([0.2, -0.5, 1.0], 4.0)
    network = truth.copy()
    network[18:42, 23:40] *= 1.04
    network[18:42, 40:57] *= 1.01
    confidence = np.full(truth.shape, 0.9, np.float32)
    view = DepthView(3, "a.png", network, confidence, K, np.eye(4)[:3])
    ref = SceneView(image_id=3, name="a.png", image=textured_image(rng, PATCH), K=K, cam_from_world=np.eye(4)[:3],
                    depth_range=np.array([1.0, 20.0]), num_depth=32, source_ids=np.zeros(0, np.int64),
                    source_scores=np.zeros(0), mask=None, point3D_ids=np.zeros(0, np.int64), width=WIDTH,
                    height=HEIGHT)
    plain = fill_low_texture(view, ref, PlaneFillConfig(confident_within=None))
    assert plain.filled[19:41, 24:56].all()
    np.testing.assert_array_equal(plain.confidence, confidence)
    gated = fill_low_texture(view, ref, PlaneFillConfig(confident_within=0.02))
    np.testing.assert_array_equal(gated.depth, plain.depth)
    np.testing.assert_array_equal(gated.filled, plain.filled)
    assert (gated.confidence[plain.filled & (np.arange(WIDTH) < 40)] == 0).all()
    np.testing.assert_array_equal(gated.confidence[~plain.filled | (np.arange(WIDTH) >= 40)],
                                  confidence[~plain.filled | (np.arange(WIDTH) >= 40)])


def test_regions_left_alone_small_ones_split_rings_and_missing_depth():
    rng = np.random.default_rng(3)
    image = textured_image(rng, PATCH)
    # the ring is half on one plane and half on another twice as far: no plane is the surroundings'
    truth = plane_depth([0.0, 0.0, 1.0], 3.0)
    truth[:, WIDTH // 2 :] *= 2.0
    estimate = truth * 1.03
    result = planar_fill(estimate, image, (1.0, 20.0), PlaneFillConfig(min_inlier_fraction=0.6))
    assert result.regions == 1 and result.planes == 0
    np.testing.assert_array_equal(result.depth, estimate)
    # a region smaller than min_area is not considered
    small = planar_fill(plane_depth([0, 0, 1], 3.0), image, (1.0, 20.0), PlaneFillConfig(min_area=30 * 40 + 1))
    assert small.regions == 0
    # pixels without an estimate stay without one, and do not count as ring pixels
    holes = plane_depth([0.2, -0.5, 1.0], 4.0)
    holes[18:42, 23:40] = 0.0
    filled = planar_fill(holes, image, (1.0, 20.0))
    assert (filled.depth[18:42, 23:40] == 0).all() and not filled.filled[18:42, 23:40].any()
    assert filled.filled[19:41, 40:56].all()
    # a plane outside the view's depth range is not used
    far = planar_fill(plane_depth([0.2, -0.5, 1.0], 4.0) * 1.01, image, (0.5, 1.0))
    assert far.planes == 0


def test_a_region_across_two_surfaces_takes_each_ones_plane_with_max_planes():
    """One uniform region over two surfaces (the left half of the scene at depth 3, the right half
    at 6, as two walls meeting behind one coat of paint): one plane explains half the ring, so with
    max_planes 1 and min_inlier_fraction 0.6 the region is left alone; with max_planes 2 both planes
    are found and each pixel takes the one nearest the network's depth, which is 4 % off inside the
    region. max_disagreement 0.02 then keeps the network's depth (every plane 3.8 % from it)."""
    rng = np.random.default_rng(6)
    image = textured_image(rng, PATCH)
    truth = plane_depth([0.0, 0.0, 1.0], 3.0)
    truth[:, WIDTH // 2 :] *= 2.0
    inside = np.zeros(truth.shape, bool)
    inside[18:42, 23:57] = True
    estimate = truth.copy()
    estimate[inside] *= 1.04
    single = planar_fill(estimate, image, (1.0, 20.0), PlaneFillConfig(min_inlier_fraction=0.6))
    assert single.planes == 0
    two = planar_fill(estimate, image, (1.0, 20.0), PlaneFillConfig(min_inlier_fraction=0.6, max_planes=2))
    assert two.regions == 1 and two.planes == 2
    assert two.filled.sum() == inside.sum() - 4  # the opening (3 x 3 cross) takes the 4 corners
    np.testing.assert_allclose(two.depth[two.filled], truth[two.filled], rtol=1e-5)
    gated = PlaneFillConfig(min_inlier_fraction=0.6, max_planes=2, max_disagreement=0.05)
    np.testing.assert_array_equal(planar_fill(estimate, image, (1.0, 20.0), gated).filled, two.filled)
    strict = PlaneFillConfig(min_inlier_fraction=0.6, max_planes=2, max_disagreement=0.02)
    kept = planar_fill(estimate, image, (1.0, 20.0), strict)
    assert not kept.filled.any()
    np.testing.assert_array_equal(kept.depth, estimate)


def test_max_planes_one_is_the_single_plane_fill():
    """The defaults (max_planes 1, no max_disagreement) give the single-plane result: a plane 4 % from
    the network's depth still replaces it."""
    rng = np.random.default_rng(7)
    truth = plane_depth([0.2, -0.5, 1.0], 4.0)
    estimate = truth.copy()
    estimate[18:42, 23:57] *= 1.04
    image = textured_image(rng, PATCH)
    default = planar_fill(estimate, image, (1.0, 20.0), PlaneFillConfig(), np.random.default_rng(1))
    assert default.planes == 1
    np.testing.assert_allclose(default.depth[default.filled], truth[default.filled], rtol=1e-5)
    gated = planar_fill(estimate, image, (1.0, 20.0), PlaneFillConfig(max_disagreement=0.02), np.random.default_rng(1))
    assert not gated.filled.any()


def test_depth_file_keeps_the_filled_mask(tmp_path):
    filled = np.zeros((4, 5), bool)
    filled[1:3, 2:4] = True
    view = DepthView(7, "a.png", np.ones((4, 5)), np.ones((4, 5)), np.eye(3), np.eye(4)[:3], filled=filled)
    write_depth_file(tmp_path / "d.h5", [view, DepthView(8, "b.png", np.ones((4, 5)), None, np.eye(3), np.eye(4)[:3])])
    views = read_depth_file(tmp_path / "d.h5")
    np.testing.assert_array_equal(views[7].filled, filled)
    assert views[8].filled is None
    with pytest.raises(ValueError, match="view 9: filled"):
        DepthView(9, "c.png", np.ones((4, 5)), None, np.eye(3), np.eye(4)[:3], filled=np.zeros((5, 4), bool))


def test_infer_fills_low_texture_regions_and_records_the_setting(tmp_path):
    """run_infer on a scene whose reference has a uniform patch: with plane_fill the written depth
    equals planar_fill of the network's own map (seeded by the image id) and the view says which
    pixels were filled; without, no mask and attribute "off"; a partial file of the other setting is
    not resumed."""
    from test_infer import make_scene

    from pipeline.formats.scene_file import read_scene, write_scene
    from pipeline.model import ModelConfig, PatchmatchNet, save_checkpoint

    scene = make_scene(tmp_path / "scene.h5", sizes=((48, 64), (48, 64), (48, 64)), with_mask=False, seed=4)
    scene = read_scene(tmp_path / "scene.h5")
    scene.views[10].image[8:40, 8:56] = 100  # a uniform region in the first view
    write_scene(tmp_path / "scene.h5", scene)
    checkpoint = tmp_path / "model.pt"
    save_checkpoint(checkpoint, PatchmatchNet(ModelConfig(iterations=(1, 1, 1), num_initial_hypotheses=16)))
    off = InferConfig(num_sources=2, device="cpu", flip_average=False, plane_fill=PlaneFillConfig(enabled=False))
    on = InferConfig(num_sources=2, device="cpu", flip_average=False, plane_fill=PlaneFillConfig(min_area=100))
    raw = read_depth_file(run_infer(tmp_path / "scene.h5", checkpoint, tmp_path / "off.h5", off))
    filled = read_depth_file(run_infer(tmp_path / "scene.h5", checkpoint, tmp_path / "on.h5", on))
    assert read_depth_attrs(tmp_path / "off.h5")["plane_fill"] == "off"
    setting = json.loads(read_depth_attrs(tmp_path / "on.h5")["plane_fill"])
    assert setting["min_area"] == 100 and "enabled" not in setting
    assert all(view.filled is None for view in raw.values())
    expected = planar_fill(
        raw[10].depth, scene.views[10].image, tuple(scene.views[10].depth_range),
        PlaneFillConfig(min_area=100), np.random.default_rng(10),
    )
    assert expected.planes == 1  # the test exercises a fill
    np.testing.assert_array_equal(filled[10].depth, expected.depth)
    np.testing.assert_array_equal(filled[10].filled, expected.filled)
    assert not filled[11].filled.any()  # textured views are left as they are
    # a partial file written without the in-fill is not resumed by a run with it
    (tmp_path / "off.h5").rename(tmp_path / "on2.h5.partial")
    run_infer(tmp_path / "scene.h5", checkpoint, tmp_path / "on2.h5", on)
    np.testing.assert_array_equal(read_depth_file(tmp_path / "on2.h5")[10].filled, expected.filled)
    with pytest.raises(ValueError, match="plane_fill.window must be odd"):
        run_infer(tmp_path / "scene.h5", checkpoint, tmp_path / "x.h5", InferConfig(plane_fill=PlaneFillConfig(window=4)))



def test_infer_fills_at_the_depth_maps_resolution_when_max_size_shrinks_it(tmp_path):
    """With infer.max_size below the images' size the depth map is smaller than the stored image: the
    in-fill reads the image area-averaged to the map's size and in [0, 1], so the faint patch is found
    at the map's pixels (halved here) and nothing outside it is filled."""
    from test_infer import make_scene

    from pipeline.formats.scene_file import read_scene, write_scene
    from pipeline.model import ModelConfig, PatchmatchNet, save_checkpoint

    make_scene(tmp_path / "scene.h5", sizes=((96, 128), (96, 128), (96, 128)), with_mask=False, seed=5)
    scene = read_scene(tmp_path / "scene.h5")
    # a patch of faint stripes (90 / 92 in 2-pixel columns: grey std ~0.004 in [0, 1] at half size, low
    # texture only if the resized image is scaled to [0, 1] as the stored one is): rows 8-40, cols 8-56
    stripes = 90 + 2 * ((np.arange(16, 112) // 2) % 2)
    scene.views[10].image[16:80, 16:112] = stripes[None, :, None]
    write_scene(tmp_path / "scene.h5", scene)
    checkpoint = tmp_path / "model.pt"
    save_checkpoint(checkpoint, PatchmatchNet(ModelConfig(iterations=(1, 1, 1), num_initial_hypotheses=16)))
    config = InferConfig(num_sources=2, device="cpu", flip_average=False, max_size=64,
                         plane_fill=PlaneFillConfig(min_area=100))
    view = read_depth_file(run_infer(tmp_path / "scene.h5", checkpoint, tmp_path / "depth.h5", config))[10]
    assert view.depth.shape == view.filled.shape == (48, 64)
    # low texture = the patch less the 3 pixels whose 7 x 7 window reaches its textured border
    inner = np.zeros((48, 64), bool)
    inner[11:37, 11:53] = True
    assert not (view.filled & ~inner).any()
    assert view.filled.sum() == inner.sum() - 4  # the opening (3 x 3 cross) takes the 4 corners
