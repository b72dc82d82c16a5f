"""Undistortion: analytic twin images, COLMAP's size rule, masks and keypoints."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.scene.camera_models import Intrinsics
from pipeline.scene.undistort import make_undistorter

BARREL = ("OPENCV", [150.0, 155.0, 80.0, 60.0, -0.12, 0.03, 0.0012, -0.0008])
PINCUSHION = ("OPENCV", [150.0, 155.0, 75.0, 62.5, 0.15, 0.02, 0.001, -0.002])
FISHEYE = ("OPENCV_FISHEYE", [120.0, 120.0, 80.0, 60.0, 0.05, -0.01, 0.002, -0.001])
WIDTH, HEIGHT = 160, 120


def _pattern(normalized: np.ndarray) -> np.ndarray:
    """A smooth scene texture on the normalised image plane, 2 channels."""
    u, v = normalized[..., 0], normalized[..., 1]
    return np.stack([np.sin(7 * u) * np.cos(5 * v), np.cos(4 * u + 3 * v)], axis=-1)


def _pixel_centres(width: int, height: int) -> np.ndarray:
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    return np.stack([cols, rows], axis=-1)


def _distorted_image(model, params) -> np.ndarray:
    intrinsics = Intrinsics.from_params(model, params)
    return _pattern(intrinsics.cam_from_img(_pixel_centres(WIDTH, HEIGHT)))


@pytest.mark.parametrize("camera", [BARREL, PINCUSHION, FISHEYE], ids=["barrel", "pincushion", "fisheye"])
@pytest.mark.parametrize("mode", ["valid", "full", "keep_size"])
def test_undistorted_image_is_the_pinhole_twin(camera, mode):
    model, params = camera
    undistorter = make_undistorter(model, WIDTH, HEIGHT, params, mode)
    image = undistorter.image(_distorted_image(model, params))
    assert image.shape == (undistorter.height, undistorter.width, 2)
    K = undistorter.K
    centres = _pixel_centres(undistorter.width, undistorter.height)
    expected = _pattern((centres - K[:2, 2]) / [K[0, 0], K[1, 1]])
    mask = undistorter.mask
    # Bilinear resampling of a smooth pattern: error well below its amplitude (1).
    assert np.abs(image - expected)[mask].max() < 0.02
    assert np.abs(image[~mask]).max(initial=0) == 0
    if mode == "valid":
        assert mask.all()
    else:
        assert mask.mean() > 0.8
    if mode == "full":
        # Every original pixel lands inside the undistorted image.
        border = np.concatenate([_pixel_centres(WIDTH, HEIGHT)[[0, -1]].reshape(-1, 2),
                                 _pixel_centres(WIDTH, HEIGHT)[:, [0, -1]].reshape(-1, 2)])
        moved = undistorter.points(border)
        assert np.all((moved >= -0.5) & (moved <= [undistorter.width + 0.5, undistorter.height + 0.5]))
        assert not mask.all()


@pytest.mark.parametrize("camera", [BARREL, PINCUSHION], ids=["barrel", "pincushion"])
@pytest.mark.parametrize("blank_pixels,mode", [(0.0, "valid"), (1.0, "full")])
def test_size_rule_matches_colmap(camera, blank_pixels, mode):
    pycolmap = pytest.importorskip("pycolmap")
    model, params = camera
    options = pycolmap.UndistortCameraOptions()
    options.blank_pixels = blank_pixels
    expected = pycolmap.undistort_camera(options, pycolmap.Camera(model=model, width=WIDTH, height=HEIGHT, params=params))
    undistorter = make_undistorter(model, WIDTH, HEIGHT, params, mode)
    # COLMAP's border rule differs from ours by half a pixel in where it puts the border.
    assert abs(undistorter.width - expected.width) <= 2 and abs(undistorter.height - expected.height) <= 2
    np.testing.assert_allclose(undistorter.K[[0, 1], [0, 1]], np.asarray(expected.params)[:2])
    np.testing.assert_allclose(undistorter.K[:2, 2], np.asarray(expected.params)[2:4], atol=1.5)


def test_keypoints_follow_the_image():
    model, params = BARREL
    undistorter = make_undistorter(model, WIDTH, HEIGHT, params, "valid")
    intrinsics = Intrinsics.from_params(model, params)
    rng = np.random.default_rng(0)
    normalized = rng.uniform([-0.3, -0.25], [0.3, 0.25], (50, 2))
    observed = intrinsics.img_from_cam(normalized)  # where a lens puts the points
    moved = undistorter.points(observed)
    K = undistorter.K
    np.testing.assert_allclose(moved, normalized * [K[0, 0], K[1, 1]] + K[:2, 2], atol=1e-8)


def test_pinhole_cameras_pass_through():
    undistorter = make_undistorter("SIMPLE_PINHOLE", 40, 30, [50.0, 20.0, 15.0], "valid")
    assert undistorter.is_identity and undistorter.mask is None
    image = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    np.testing.assert_array_equal(undistorter.image(image), image)
    np.testing.assert_allclose(undistorter.K, [[50, 0, 20], [0, 50, 15], [0, 0, 1]])


def test_uint8_images_round_and_keep_dtype():
    model, params = BARREL
    undistorter = make_undistorter(model, WIDTH, HEIGHT, params, "keep_size")
    image = np.full((HEIGHT, WIDTH, 3), 200, dtype=np.uint8)
    out = undistorter.image(image)
    assert out.dtype == np.uint8
    assert np.all(out[undistorter.mask] == 200)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="mode must be one of"):
        make_undistorter(*BARREL[:1], WIDTH, HEIGHT, BARREL[1], "blank")
    undistorter = make_undistorter(BARREL[0], WIDTH, HEIGHT, BARREL[1])
    with pytest.raises(ValueError, match="expected an image of 160x120 pixels, got 100x120"):
        undistorter.image(np.zeros((120, 100, 3), np.uint8))
    with pytest.raises(ValueError, match="not supported"):
        make_undistorter("EQUIRECTANGULAR", WIDTH, HEIGHT, [1.0, 2.0])


@pytest.mark.parametrize("mode", ["valid", "keep_size"])
def test_prescaled_undistortion_is_exact(mode):
    model, params = BARREL
    undistorter = make_undistorter(model, WIDTH, HEIGHT, params, mode, scale=0.5)
    assert undistorter.input_size == (WIDTH, HEIGHT)
    assert (undistorter.source_width, undistorter.source_height) == (80, 60)
    full = make_undistorter(model, WIDTH, HEIGHT, params, mode)
    # Same camera, half the size: K halves (up to COLMAP's rounding of the image size).
    np.testing.assert_allclose(undistorter.K[[0, 1], [0, 1]], full.K[[0, 1], [0, 1]] / 2)
    assert abs(undistorter.width - full.width / 2) <= 1 and abs(undistorter.height - full.height / 2) <= 1
    image = undistorter.image(_distorted_image(model, params))
    K = undistorter.K
    centres = _pixel_centres(undistorter.width, undistorter.height)
    expected = _pattern((centres - K[:2, 2]) / [K[0, 0], K[1, 1]])
    inner = (slice(2, -2), slice(2, -2))
    assert np.abs(image - expected)[inner][undistorter.mask[inner]].max() < 0.05
    # Keypoints of the full-size photo land where the scene point shows in the small image.
    normalized = np.array([[0.1, -0.2], [-0.3, 0.25], [0.0, 0.0]])
    observed = Intrinsics.from_params(model, params).img_from_cam(normalized)
    np.testing.assert_allclose(undistorter.points(observed), normalized * [K[0, 0], K[1, 1]] + K[:2, 2], atol=1e-8)
    with pytest.raises(ValueError, match=r"scale must be in \(0, 1\]"):
        make_undistorter(model, WIDTH, HEIGHT, params, mode, scale=2.0)
