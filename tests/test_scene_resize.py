"""Resizing keeps projections consistent: a 3-D point lands where the resized image shows it."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.scene.resize import plan_resize


@pytest.mark.parametrize(
    "size,max_size,multiple,fit,expected",
    [
        ((1600, 1200), 800, 8, "crop", (800, 600)),
        ((800, 600), 800, 8, "crop", (800, 600)),
        ((1000, 750), 640, 8, "crop", (640, 480)),
        ((333, 251), 0, 8, "crop", (328, 248)),
        ((333, 251), 0, 8, "resize", (328, 248)),
        ((4000, 2250), 1000, 32, "crop", (992, 544)),
        ((100, 60), 800, 1, "crop", (100, 60)),
    ],
)
def test_output_sizes(size, max_size, multiple, fit, expected):
    plan = plan_resize(*size, max_image_size=max_size, size_multiple=multiple, fit=fit)
    assert (plan.out_width, plan.out_height) == expected
    assert max(plan.scaled_width, plan.scaled_height) <= max(max(size) if max_size <= 0 else max_size, 1)


@pytest.mark.parametrize("fit", ["crop", "resize"])
def test_projection_with_new_K_matches_moved_pixels(fit):
    plan = plan_resize(1003, 751, max_image_size=640, size_multiple=8, fit=fit)
    K = np.array([[900.0, 0, 497.3], [0, 905.0, 380.1], [0, 0, 1]])
    points = np.random.default_rng(0).normal(size=(20, 3)) + [0, 0, 6]

    def project(K_):
        uvw = points @ K_.T
        return uvw[:, :2] / uvw[:, 2:]

    np.testing.assert_allclose(project(plan.K(K)), plan.points(project(K)), atol=1e-9)


def test_image_follows_the_plan():
    # A linear ramp in x and y survives bilinear resampling exactly (away from the border), so the
    # value at each output pixel tells where it came from.
    width, height = 200, 150
    plan = plan_resize(width, height, max_image_size=101, size_multiple=8, fit="crop")
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    ramp = np.stack([cols, rows, np.zeros_like(cols)], axis=-1).astype(np.float32)
    out = np.stack([plan.image(ramp[..., c].astype(np.float32)) for c in range(2)], axis=-1)
    assert out.shape[:2] == (plan.out_height, plan.out_width) == (72, 96)
    out_cols, out_rows = np.meshgrid(np.arange(plan.out_width) + 0.5, np.arange(plan.out_height) + 0.5)
    # Input position of each output pixel centre: invert the plan's affine map.
    back = (np.stack([out_cols, out_rows], -1) + [plan.crop_x, plan.crop_y]) / [plan.scale_x, plan.scale_y]
    inner = (slice(3, -3), slice(3, -3))
    np.testing.assert_allclose(out[inner], back[inner], atol=0.02)


def test_mask_shrinks_at_invalid_pixels():
    plan = plan_resize(64, 48, max_image_size=32, size_multiple=8)
    mask = np.ones((48, 64), bool)
    mask[:, :5] = False
    out = plan.mask(mask)
    assert out.shape == (plan.out_height, plan.out_width)
    assert not out[:, :2].any() and out[:, 4:].all()


def test_uint8_rgb_image():
    plan = plan_resize(640, 480, max_image_size=320)
    image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    out = plan.image(image)
    assert out.dtype == np.uint8 and out.shape == (240, 320, 3)


def test_errors():
    with pytest.raises(ValueError, match="smaller than size_multiple=8"):
        plan_resize(5, 40)
    with pytest.raises(ValueError, match="fit must be one of"):
        plan_resize(50, 40, fit="pad")
    with pytest.raises(ValueError, match="expected an image of 64x48, got 48x64"):
        plan_resize(64, 48).image(np.zeros((64, 48, 3), np.uint8))
