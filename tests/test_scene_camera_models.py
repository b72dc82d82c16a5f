"""COLMAP lens models: distortion formulas against pycolmap, and the Newton inverse."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.scene.camera_models import (
    LENS_MODELS,
    Intrinsics,
    UnsupportedCameraModelError,
    distort_normalized,
    undistort_normalized,
)

# Realistic parameters per model (a wide-ish lens on a 320x240 image).
PARAMS = {
    "SIMPLE_PINHOLE": [300, 160, 120],
    "PINHOLE": [300, 310, 160, 120],
    "SIMPLE_RADIAL": [300, 160, 120, -0.1],
    "RADIAL": [300, 160, 120, -0.1, 0.02],
    "OPENCV": [300, 310, 160, 120, -0.1, 0.02, 0.001, -0.002],
    "FULL_OPENCV": [300, 310, 160, 120, -0.1, 0.02, 0.001, -0.002, 0.003, 0.01, -0.005, 0.002],
    "OPENCV_FISHEYE": [300, 310, 160, 120, 0.05, -0.01, 0.002, -0.001],
    "SIMPLE_RADIAL_FISHEYE": [300, 160, 120, 0.05],
    "RADIAL_FISHEYE": [300, 160, 120, 0.05, -0.01],
    "THIN_PRISM_FISHEYE": [300, 310, 160, 120, 0.05, -0.01, 0.001, -0.002, 0.002, -0.001, 0.001, 0.0005],
    "FOV": [300, 310, 160, 120, 0.9],
}


def test_every_supported_model_has_test_parameters():
    assert set(PARAMS) == set(LENS_MODELS)


@pytest.mark.parametrize("model", sorted(PARAMS))
def test_round_trip_on_a_grid(model):
    intrinsics = Intrinsics.from_params(model, PARAMS[model])
    u, v = np.meshgrid(np.linspace(-0.6, 0.6, 41), np.linspace(-0.45, 0.45, 31))
    normalized = np.stack([u, v], axis=-1)  # (31, 41, 2): any leading shape works
    distorted = distort_normalized(model, intrinsics.extra, normalized)
    back = undistort_normalized(model, intrinsics.extra, distorted)
    np.testing.assert_allclose(back, normalized, atol=1e-10)
    pixels = intrinsics.img_from_cam(normalized)
    np.testing.assert_allclose(intrinsics.cam_from_img(pixels), normalized, atol=1e-10)
    if model not in ("SIMPLE_PINHOLE", "PINHOLE"):
        assert np.abs(distorted - normalized).max() > 1e-3  # the lens does something


@pytest.mark.parametrize("model", sorted(PARAMS))
def test_matches_pycolmap(model):
    pycolmap = pytest.importorskip("pycolmap")
    camera = pycolmap.Camera(model=model, width=320, height=240, params=PARAMS[model])
    intrinsics = Intrinsics.from_params(model, PARAMS[model])
    rng = np.random.default_rng(0)
    normalized = rng.uniform([-0.6, -0.45], [0.6, 0.45], (500, 2))
    expected = camera.img_from_cam(np.hstack([normalized, np.ones((500, 1))]))
    np.testing.assert_allclose(intrinsics.img_from_cam(normalized), expected, atol=1e-9)
    pixels = rng.uniform([0, 0], [320, 240], (500, 2))
    expected_normalized = np.asarray(camera.cam_from_img(pixels))[:, :2]
    np.testing.assert_allclose(intrinsics.cam_from_img(pixels), expected_normalized, atol=1e-8)


def test_fov_small_omega_and_centre_use_the_series():
    # omega ~ 0 and r ~ 0 are 0/0 in the closed form: the series must be finite and continuous.
    centre = np.array([[0.0, 0.0], [1e-4, 0.0], [0.3, 0.2]])
    for omega in (1e-3, 0.9):
        out = distort_normalized("FOV", [omega], centre)
        assert np.all(np.isfinite(out))
        np.testing.assert_allclose(out[0], 0.0)
    tiny = distort_normalized("FOV", [1e-3], centre)
    np.testing.assert_allclose(tiny, centre, rtol=1e-5)


def test_points_without_inverse_are_nan():
    # theta_d = theta (1 - 0.3 theta^2) on [0, pi/2) never exceeds ~0.70: radius 2 has no preimage.
    extra = [-0.3, 0.0, 0.0, 0.0]
    far = np.array([[2.0, 0.0], [0.1, 0.05]])
    out = undistort_normalized("OPENCV_FISHEYE", extra, far)
    assert np.isnan(out[0]).all()
    np.testing.assert_allclose(distort_normalized("OPENCV_FISHEYE", extra, out[1:]), far[1:], atol=1e-12)


def test_bad_models_and_parameters_are_reported():
    with pytest.raises(UnsupportedCameraModelError, match="'EQUIRECTANGULAR' is not supported"):
        Intrinsics.from_params("EQUIRECTANGULAR", [1, 2])
    with pytest.raises(ValueError, match="OPENCV takes 8 parameters, got 4"):
        Intrinsics.from_params("OPENCV", [1, 2, 3, 4])
    with pytest.raises(ValueError, match="focal lengths must be positive"):
        Intrinsics.from_params("PINHOLE", [0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"expected \(\.\.\., 2\)"):
        distort_normalized("OPENCV", [0.1, 0, 0, 0], np.zeros((4, 3)))
