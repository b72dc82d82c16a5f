"""Self-supervised loss terms on an analytically rendered textured plane seen by three cameras.

The scene: a plane (fronto-parallel or slanted) with a smooth colour texture defined on it; each
camera's image is rendered exactly (ray-plane intersection, texture evaluated there), so the true
depth is known and the photometric terms are minimal there. Depth is scanned by scale factors
0.8..1.2 around the truth.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import pytest
import torch

import kernels

from pipeline.config import AugmentationConfig
from pipeline.losses import (
    RECIPES,
    CoSegmentation,
    FeatureExtractor,
    SelfSupervisedLoss,
    VGG16Features,
    augment_images,
    augmentation_loss,
    augmentation_weight,
    best_k_mean,
    cosegmentation_loss,
    cross_view_loss,
    depth_normal_loss,
    get_recipe,
    make_cosegmentation,
    nmf,
    photometric_error_maps,
    photometric_loss,
    pseudo_label_loss,
    smoothness_loss,
    ssim_loss,
    warp_sources,
)
from pipeline.losses.cosegmentation import resize_segmentation

HEIGHT, WIDTH = 48, 64
SCALES = (0.8, 0.9, 1.0, 1.1, 1.2)


def rotation_y(angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], dtype=torch.float64)


def camera(centre, yaw: float = 0.0) -> torch.Tensor:
    """4x4 cam_from_world of a camera at ``centre`` turned by ``yaw`` about the y axis."""
    rotation = rotation_y(yaw)
    pose = torch.eye(4, dtype=torch.float64)
    pose[:3, :3] = rotation
    pose[:3, 3] = -rotation @ torch.tensor(centre, dtype=torch.float64)
    return pose


def texture(points: torch.Tensor) -> torch.Tensor:
    """Smooth colour texture of world points (3, ...) -> (3, ...) in [0.1, 0.9] (wavelengths 12-30 px)."""
    x, y = points[0], points[1]
    red = 0.5 + 0.2 * torch.sin(7.0 * x + 3.0 * y) + 0.15 * torch.cos(11.0 * y - 5.0 * x + 0.3)
    green = 0.5 + 0.2 * torch.sin(9.0 * y + 1.0) + 0.15 * torch.sin(6.0 * x - 8.0 * y)
    blue = 0.5 + 0.2 * torch.cos(8.0 * x + 0.7) + 0.15 * torch.sin(5.0 * x + 10.0 * y + 2.0)
    return torch.stack([red, green, blue])


def render_plane(K, cam_from_world, normal, offset, height=HEIGHT, width=WIDTH, occluder=None):
    """Image (3, H, W) and z-depth (1, H, W) of the plane ``normal . X = offset`` (world frame)."""
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float64) + 0.5, torch.arange(width, dtype=torch.float64) + 0.5, indexing="ij"
    )
    pixels = torch.stack([xs, ys, torch.ones_like(xs)]).reshape(3, -1)
    rays = torch.linalg.inv(K) @ pixels  # camera frame, z = 1
    rotation, translation = cam_from_world[:3, :3], cam_from_world[:3, 3]
    centre = -rotation.T @ translation
    directions = rotation.T @ rays
    normal = torch.tensor(normal, dtype=torch.float64)
    distance = (offset - normal @ centre) / (normal @ directions)  # = z-depth since rays have z = 1
    points = centre[:, None] + directions * distance
    image = texture(points).reshape(3, height, width)
    if occluder is not None:  # (row slice, col slice): an object in front, of another colour
        image[:, occluder[0], occluder[1]] = torch.tensor([0.05, 0.95, 0.05], dtype=torch.float64)[:, None, None]
    return image, distance.reshape(1, height, width)


FRONTO = ((0.0, 0.0, 1.0), 2.0)
_n = torch.tensor([0.25, -0.1, 1.0], dtype=torch.float64)
_n = _n / _n.norm()
SLANTED = (tuple(_n.tolist()), float(_n[2] * 2.0))  # through (0, 0, 2)


def make_scene(plane=FRONTO, occluders=(None, None, None), dtype=torch.float64, device="cpu"):
    """Reference + three sources of a textured plane; everything batched with B = 1."""
    K = torch.tensor([[60.0, 0.0, WIDTH / 2], [0.0, 60.0, HEIGHT / 2], [0.0, 0.0, 1.0]], dtype=torch.float64)
    poses = [camera((0.0, 0.0, 0.0)), camera((-0.2, 0.0, 0.0), 0.05), camera((0.2, 0.05, 0.0), -0.05), camera((0.0, -0.2, 0.05))]
    images, depths = [], []
    for index, pose in enumerate(poses):
        occluder = None if index == 0 else occluders[index - 1]
        image, depth = render_plane(K, pose, *plane, occluder=occluder)
        images.append(image)
        depths.append(depth)
    convert = dict(dtype=dtype, device=device)
    src_from_ref = torch.stack([pose @ torch.linalg.inv(poses[0]) for pose in poses[1:]])
    return {
        "images": torch.stack(images)[None].to(**convert),  # (1, 4, 3, H, W)
        "depths": torch.stack(depths)[None].to(**convert),  # (1, 4, 1, H, W)
        "K": K[None].to(**convert),
        "Ks": K.expand(4, 3, 3)[None].to(**convert),
        "cam_from_world": torch.stack(poses)[None].to(**convert),
        "src_from_ref": src_from_ref[None].to(**convert),
    }


def warp_at(scene, depth):
    images = scene["images"]
    return warp_sources(images[:, 1:], depth, scene["K"], scene["Ks"][:, 1:], scene["src_from_ref"])


def scan(scene, term):
    """``term(scene, depth)`` for the true reference depth scaled by each of SCALES."""
    true = scene["depths"][:, 0]
    return [float(term(scene, true * s)) for s in SCALES]


def is_v_shaped(values) -> bool:
    middle = SCALES.index(1.0)
    left, right = values[: middle + 1], values[middle:]
    return all(a > b for a, b in zip(left, left[1:])) and all(a < b for a, b in zip(right, right[1:]))


def _photometric(scene, depth):
    warped, valid = warp_at(scene, depth)
    return photometric_loss(scene["images"][:, 0], warped, valid, top_k=3)


def _ssim(scene, depth):
    warped, valid = warp_at(scene, depth)
    return ssim_loss(scene["images"][:, 0], warped, valid, top_k=3)


# ------------------------------------------------------------------------------------------------
# photometric and SSIM


@pytest.mark.parametrize("plane", [FRONTO, SLANTED], ids=["fronto", "slanted"])
@pytest.mark.parametrize("term", [_photometric, _ssim], ids=["photometric", "ssim"])
def test_photometric_terms_are_minimal_at_true_depth(plane, term, device, dtype):
    values = scan(make_scene(plane, dtype=dtype, device=device), term)
    assert is_v_shaped(values), values
    assert values[SCALES.index(1.0)] < 0.25 * min(values[0], values[-1])


def test_photometric_huber_and_gradient_weight_options():
    scene = make_scene()
    warped, valid = warp_at(scene, scene["depths"][:, 0] * 1.1)
    ref = scene["images"][:, 0]
    l1 = photometric_loss(ref, warped, valid, gradient_weight=0.0)
    with_gradient = photometric_loss(ref, warped, valid, gradient_weight=1.0)
    huber = photometric_loss(ref, warped, valid, gradient_weight=0.0, robust="huber", huber_delta=0.05)
    assert with_gradient > l1 > huber > 0
    with pytest.raises(ValueError, match="robust"):
        photometric_loss(ref, warped, valid, robust="l2")


def test_best_k_mean_per_pixel():
    errors = torch.tensor([[[[1.0, 5.0]], [[2.0, 1.0]], [[9.0, 3.0]]]])  # (B=1, V=3, H=1, W=2)
    valid = torch.tensor([[[[True, True]], [[False, True]], [[True, True]]]])
    loss, per_pixel, pixel_valid = best_k_mean(errors, valid, top_k=2)
    # pixel 0: valid views {1.0, 9.0} -> mean 5; pixel 1: best two of {5, 1, 3} -> 2
    torch.testing.assert_close(per_pixel, torch.tensor([[[[5.0, 2.0]]]]))
    assert pixel_valid.all()
    assert float(loss) == pytest.approx(3.5)
    none_valid = torch.zeros_like(valid)
    loss, per_pixel, pixel_valid = best_k_mean(errors, none_valid, top_k=2)
    assert float(loss) == 0.0 and not pixel_valid.any()


def test_per_pixel_best_k_handles_partial_occlusions():
    """Sources 1 and 2 each have an object in front of the plane, covering different parts of the
    reference (left and right of the centre, away from where other views leave the image); source 3
    is clear.

    Per pixel, the best two views are always two unoccluded ones, so the loss at the true depth is
    as low as without occluders. Reducing each view to one number first and then keeping the best
    two views must keep one partly occluded view, and its error stays large.
    """
    occluders = ((slice(8, 36), slice(20, 34)), (slice(8, 36), slice(30, 44)), None)
    clear, occluded = make_scene(), make_scene(occluders=occluders)
    true = clear["depths"][:, 0]

    def losses(scene):
        warped, valid = warp_at(scene, true)
        ref = scene["images"][:, 0]
        per_pixel = photometric_loss(ref, warped, valid, top_k=2)
        errors, valid_views = photometric_error_maps(ref, warped, valid)
        w = valid_views.to(errors.dtype)
        per_view = (errors * w).sum((2, 3)) / w.sum((2, 3))  # (B, V): one number per view
        per_view_best2 = per_view.sort(1).values[:, :2].mean()
        return float(per_pixel), float(per_view_best2)

    clear_pixel, clear_view = losses(clear)
    occluded_pixel, occluded_view = losses(occluded)
    assert occluded_pixel < 1.5 * clear_pixel + 1e-3
    assert occluded_view > 5 * occluded_pixel
    assert occluded_view > 5 * clear_view
    # and the per-pixel loss still finds the true depth despite the occluders
    assert is_v_shaped(scan(occluded, lambda s, d: photometric_loss(s["images"][:, 0], *warp_at(s, d), top_k=2)))


@pytest.mark.parametrize("term", [_photometric, _ssim], ids=["photometric", "ssim"])
def test_photometric_terms_gradient_reaches_depth(term):
    scene = make_scene(dtype=torch.float32)
    depth = (scene["depths"][:, 0] * 1.1).requires_grad_(True)
    term(scene, depth).backward()
    assert torch.isfinite(depth.grad).all() and depth.grad.abs().sum() > 0


def test_mask_excludes_pixels():
    scene = make_scene()
    warped, valid = warp_at(scene, scene["depths"][:, 0] * 1.1)
    ref = scene["images"][:, 0]
    mask = torch.zeros(1, 1, HEIGHT, WIDTH, dtype=torch.bool)
    assert float(photometric_loss(ref, warped, valid, mask=mask)) == 0.0
    mask[..., :, : WIDTH // 2] = True
    assert float(photometric_loss(ref, warped, valid, mask=mask)) > 0


def test_bad_shapes_raise():
    scene = make_scene()
    warped, valid = warp_at(scene, scene["depths"][:, 0])
    with pytest.raises(ValueError, match="warped"):
        photometric_loss(scene["images"][:, 0, :2], warped, valid)
    with pytest.raises(ValueError, match="src_images"):
        warp_sources(scene["images"][:, 1], scene["depths"][:, 0], scene["K"], scene["Ks"][:, 1:], scene["src_from_ref"])


# ------------------------------------------------------------------------------------------------
# smoothness and depth-normal consistency


@pytest.mark.parametrize("order", [1, 2])
def test_smoothness_zero_for_constant_and_lower_for_smooth(order, dtype):
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, HEIGHT, WIDTH, generator=generator, dtype=dtype)
    constant = torch.full((1, 1, HEIGHT, WIDTH), 2.0, dtype=dtype)
    assert float(smoothness_loss(constant, image, order=order)) == 0.0
    scene = make_scene(SLANTED, dtype=dtype)
    true = scene["depths"][:, 0]
    noise = torch.randn(true.shape, generator=generator, dtype=dtype) * 0.05
    values = [float(smoothness_loss(true + a * noise, scene["images"][:, 0], order=order)) for a in (1.0, 0.5, 0.0)]
    assert values[0] > values[1] > values[2]
    assert float(smoothness_loss(true + noise, image, order=order, inverse=True)) > float(
        smoothness_loss(true, image, order=order, inverse=True)
    )


def test_second_order_smoothness_of_inverse_depth_is_zero_on_a_slanted_plane():
    # A plane's inverse depth is affine in the pixel coordinates: its second differences vanish.
    # Its depth is not (1 / affine), so the depth form penalises the true slanted plane.
    scene = make_scene(SLANTED, dtype=torch.float64)
    true, image = scene["depths"][:, 0], scene["images"][:, 0]
    on_inverse = float(smoothness_loss(true, image, order=2, inverse=True))
    on_depth = float(smoothness_loss(true, image, order=2, inverse=False))
    assert on_inverse < 1e-12 < 1e-6 < on_depth


def test_smoothness_edge_aware_and_masked():
    depth = torch.ones(1, 1, 8, 8)
    depth[..., 4:] = 2.0  # a depth edge between columns 3 and 4
    flat = torch.zeros(1, 3, 8, 8)
    edge = flat.clone()
    edge[..., 4:] = 1.0  # an image edge at the same place lowers the penalty
    assert float(smoothness_loss(depth, edge, order=1)) < float(smoothness_loss(depth, flat, order=1))
    mask = torch.ones(1, 1, 8, 8, dtype=torch.bool)
    mask[..., 4:] = False
    assert float(smoothness_loss(depth, flat, order=1, mask=mask)) == 0.0
    with pytest.raises(ValueError, match="order"):
        smoothness_loss(depth, flat, order=3)


def test_smoothness_gradient_reaches_depth():
    generator = torch.Generator().manual_seed(1)
    depth = (2.0 + 0.1 * torch.rand(1, 1, 16, 16, generator=generator)).requires_grad_(True)
    smoothness_loss(depth, torch.rand(1, 3, 16, 16, generator=generator)).backward()
    assert torch.isfinite(depth.grad).all() and depth.grad.abs().sum() > 0


@pytest.mark.parametrize("plane", [FRONTO, SLANTED], ids=["fronto", "slanted"])
def test_depth_normal_zero_on_planes_and_decreasing_toward_truth(plane, dtype, tolerance):
    scene = make_scene(plane, dtype=dtype)
    true, K = scene["depths"][:, 0], scene["K"]
    assert float(depth_normal_loss(true, K)) < 1e3 * tolerance[0] + 1e-9
    generator = torch.Generator().manual_seed(2)
    noise = torch.randn(true.shape, generator=generator, dtype=dtype) * 0.02
    values = [float(depth_normal_loss(true + a * noise, K, scene["images"][:, 0])) for a in (1.0, 0.5, 0.1)]
    assert values[0] > values[1] > values[2] > 0
    depth = (true + noise).requires_grad_(True)
    depth_normal_loss(depth, K).backward()
    assert torch.isfinite(depth.grad).all() and depth.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------
# cross-view consistency


def test_cross_view_minimal_at_true_depths():
    scene = make_scene(SLANTED)
    true_ref, true_src = scene["depths"][:, 0], scene["depths"][:, 1]
    K = scene["K"]
    values = [
        float(cross_view_loss(true_ref * s, true_src, K, K, scene["src_from_ref"][:, 0], max_relative_error=0.5))
        for s in SCALES
    ]
    assert is_v_shaped(values), values
    assert values[SCALES.index(1.0)] < 1e-3
    depth = (true_ref * 1.05).requires_grad_(True)
    cross_view_loss(depth, true_src, K, K, scene["src_from_ref"][:, 0]).backward()
    assert torch.isfinite(depth.grad).all() and depth.grad.abs().sum() > 0


def test_cross_view_batches_are_independent():
    # Two batch elements with different source poses (sources 1 and 2 of the scene) and slightly
    # wrong depths: the batched loss is the pooled mean of the two elements' own losses (with
    # each element's rotation, not a broadcast of one over the other).
    scene = make_scene(SLANTED)
    K = scene["K"]
    ref = scene["depths"][:, 0] * 1.02
    pairs = [(scene["depths"][:, 1], scene["src_from_ref"][:, 0]), (scene["depths"][:, 2], scene["src_from_ref"][:, 1])]
    sums, counts = [], []
    for src_depth, pose in pairs:
        value = cross_view_loss(ref, src_depth, K, K, pose, max_relative_error=0.5)
        sampled, valid = kernels.warp_image(src_depth, ref, K, K, pose)
        count = float((valid & (sampled > 0)).sum())
        sums.append(float(value) * count)
        counts.append(count)
    batched = cross_view_loss(
        ref.expand(2, -1, -1, -1), torch.cat([p[0] for p in pairs]), K.expand(2, -1, -1), K.expand(2, -1, -1),
        torch.cat([p[1] for p in pairs]), max_relative_error=0.5,
    )
    assert float(batched) == pytest.approx(sum(sums) / sum(counts), rel=1e-6)
    assert abs(sums[0] / counts[0] - sums[1] / counts[1]) > 1e-4  # the two elements really differ


# ------------------------------------------------------------------------------------------------
# augmentation consistency


def test_augmentation_loss_zero_for_identical_and_decreasing():
    generator = torch.Generator().manual_seed(3)
    clean = 2.0 + torch.rand(2, 1, 16, 16, generator=generator)
    assert float(augmentation_loss(clean.clone(), clean)) == 0.0
    noise = torch.randn(clean.shape, generator=generator) * 0.2
    values = [float(augmentation_loss(clean + a * noise, clean)) for a in (1.0, 0.5, 0.1)]
    assert values[0] > values[1] > values[2] > 0
    augmented = (clean + noise).requires_grad_(True)
    target = clean.clone().requires_grad_(True)
    augmentation_loss(augmented, target).backward()
    assert augmented.grad.abs().sum() > 0 and target.grad is None  # the clean depth is a fixed label


def test_augmentation_loss_ignores_occluded_pixels():
    clean = torch.full((1, 1, 8, 8), 2.0)
    augmented = clean.clone()
    augmented[..., :4, :] = 5.0
    keep = torch.ones(1, 1, 16, 16, dtype=torch.bool)
    keep[..., :8, :] = False  # keep is resized to the depth's resolution
    assert float(augmentation_loss(augmented, clean, keep)) == 0.0
    assert float(augmentation_loss(augmented, clean)) > 0


def test_augment_images_reproducible_and_in_range():
    images = torch.rand(2, 3, 3, 24, 32, generator=torch.Generator().manual_seed(4))
    params = AugmentationConfig(occlusions=2)
    first, keep = augment_images(images, torch.Generator().manual_seed(5), params)
    second, keep2 = augment_images(images, torch.Generator().manual_seed(5), params)
    assert torch.equal(first, second) and torch.equal(keep, keep2)
    assert first.shape == images.shape and keep.shape == (2, 1, 24, 32)
    assert 0.0 <= float(first.min()) and float(first.max()) <= 1.0
    assert not keep.all() and keep.any()
    assert not torch.allclose(first, images)
    # sources are not occluded: the occlusion mask concerns the reference only
    none = AugmentationConfig(occlusions=0, brightness=0, contrast=0, saturation=0, gamma=1.0)
    same, keep = augment_images(images, torch.Generator().manual_seed(6), none)
    torch.testing.assert_close(same, images)
    assert keep.all()


def test_augmentation_weight_schedule():
    assert augmentation_weight(0, 0.01) == 0.01
    assert augmentation_weight(999, 0.01, growth=2.0, growth_every=0) == 0.01
    assert augmentation_weight(250, 0.01, growth=2.0, growth_every=100) == pytest.approx(0.04)
    assert augmentation_weight(10_000, 0.01, growth=2.0, growth_every=100, max_weight=0.16) == 0.16


# ------------------------------------------------------------------------------------------------
# co-segmentation


def test_nmf_reconstructs_a_low_rank_matrix():
    generator = torch.Generator().manual_seed(7)
    left, right = torch.rand(2, 40, 3, generator=generator), torch.rand(2, 3, 12, generator=generator)
    matrix = left @ right
    p, q = nmf(matrix, 3, 200, torch.Generator().manual_seed(8))
    assert (p >= 0).all() and (q >= 0).all()
    assert float((p @ q - matrix).norm() / matrix.norm()) < 0.05
    with pytest.raises(ValueError, match="non-negative"):
        nmf(-matrix, 3, 2, generator)


def test_cosegmentation_runs_with_random_weights():
    torch.manual_seed(0)
    module = CoSegmentation(layer="relu2_2", num_segments=4, iterations=10)
    scene = make_scene(SLANTED, dtype=torch.float32)
    images = scene["images"]
    segmentation = module(images, torch.Generator().manual_seed(0))
    assert segmentation.shape == (1, 4, 4, HEIGHT // 2, WIDTH // 2)
    torch.testing.assert_close(segmentation.sum(2), torch.ones(1, 4, HEIGHT // 2, WIDTH // 2))
    full = resize_segmentation(segmentation, (HEIGHT, WIDTH))
    true = scene["depths"][:, 0]

    def term(depth):
        warped, valid = warp_sources(full[:, 1:], depth, scene["K"], scene["Ks"][:, 1:], scene["src_from_ref"])
        return cosegmentation_loss(full[:, 0], warped, valid)

    at_truth = term(true)
    assert torch.isfinite(at_truth) and float(at_truth) >= 0
    depth = (true * 1.1).requires_grad_(True)
    value = term(depth)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(depth.grad).all() and depth.grad.abs().sum() > 0
    assert float(at_truth) < float(term(true * 0.8)) and float(at_truth) < float(term(true * 1.2))


def test_cosegmentation_off_without_weights(caplog):
    with caplog.at_level(logging.WARNING):
        assert make_cosegmentation(None) is None
    assert "co-segmentation consistency is OFF" in caplog.text and "vgg16_weights" in caplog.text


def test_vgg16_loads_torchvision_state_dict(tmp_path):
    torch.manual_seed(1)
    source = VGG16Features("relu5_3")
    state = {f"features.{k}": v for k, v in source.features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)  # a full torchvision dict also has a classifier
    assert sorted(k for k in state if k.endswith("weight"))[:3] == ["classifier.0.weight", "features.0.weight", "features.10.weight"]
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    module = make_cosegmentation(path, layer="relu2_2")
    torch.testing.assert_close(module.vgg.features[2].weight, source.features[2].weight)
    del state["features.2.bias"]
    torch.save(state, path)
    with pytest.raises(ValueError, match="features.2.bias"):
        make_cosegmentation(path, layer="relu2_2")
    with pytest.raises(FileNotFoundError):
        make_cosegmentation(tmp_path / "missing.pth")


# ------------------------------------------------------------------------------------------------
# recipes and the objective


def test_recipes_and_overrides():
    assert set(RECIPES) == {"unsup_mvsnet", "mvs2", "m3vsnet", "jdacs", "jdacs_ms"}
    base = get_recipe("unsup_mvsnet")
    assert base.weights == {"photometric": 12.0, "ssim": 6.0, "smoothness": 0.18}
    assert "cross_view" in get_recipe("mvs2").weights
    assert {"photometric", "ssim", "feature", "depth_normal"} <= set(get_recipe("m3vsnet").weights)
    assert {"augmentation", "cosegmentation"} <= set(get_recipe("jdacs").weights)
    assert not get_recipe("jdacs_ms").final_only and get_recipe("jdacs").final_only
    changed = get_recipe("unsup_mvsnet", {"ssim": 0, "smoothness": 1.0, "photometric": None})
    assert changed.weights == {"photometric": 12.0, "smoothness": 1.0}
    with pytest.raises(ValueError, match="recipe"):
        get_recipe("unknown")
    with pytest.raises(ValueError, match="term"):
        get_recipe("jdacs", {"colour": 1.0})


@pytest.mark.parametrize(
    "name, cites",
    [
        ("unsup_mvsnet", ("Khot", "2019")),
        ("mvs2", ("Dai", "3DV 2019", "symmetric", "occlusion", "refinement: spn", "pipeline.model.spn")),
        ("m3vsnet", ("Huang", "2021", "feature", "normal-depth", "VGG16")),
        ("jdacs", ("Xu", "AAAI 2021", "co-segmentation")),
        ("jdacs_ms", ("Xu", "CVP-MVSNet", "pipeline.model.cvp")),
    ],
)
def test_each_recipe_cites_its_paper_and_says_what_differs(name, cites):
    doc = RECIPES[name].doc
    assert all(word in doc for word in cites), (name, doc)
    assert "Differs" in doc
    assert get_recipe(name, {"photometric": 1.0}).doc == doc  # overrides keep the description


def _stage_depths(true, scale):
    """Fake network outputs: the true depth averaged down to 1/8, 1/4, 1/2 and full resolution."""
    pool = torch.nn.functional.avg_pool2d
    return {3: [pool(true, 8) * scale] * 2, 2: [pool(true, 4) * scale] * 2, 1: [pool(true, 2) * scale], 0: [true * scale]}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_objective_all_recipes(recipe):
    scene = make_scene(SLANTED, dtype=torch.float32)
    torch.manual_seed(0)
    coseg = CoSegmentation("relu2_2", 4, 5)
    features = FeatureExtractor(("relu1_2", "relu2_2"))  # random weights; the first layers suffice here
    loss = SelfSupervisedLoss(get_recipe(recipe), cosegmentation=coseg, feature_extractor=features)
    images, true = scene["images"], scene["depths"][:, 0]
    keep = torch.ones(1, 1, HEIGHT, WIDTH, dtype=torch.bool)

    def evaluate(scale):
        depths = _stage_depths(true, scale)
        for outputs in depths.values():
            for d in outputs:
                d.requires_grad_(True)
        total, terms = loss(
            images, scene["Ks"], scene["cam_from_world"], depths,
            augmented_stage_depths=_stage_depths(true, scale * 1.01), augmentation_keep=keep,
            cross_depth=scene["depths"][:, 1], generator=torch.Generator().manual_seed(0),
        )
        return total, terms, depths

    total, terms, depths = evaluate(1.0)
    assert set(terms) == set(get_recipe(recipe).weights)
    weights = get_recipe(recipe).weights
    torch.testing.assert_close(total, sum(weights[t] * v for t, v in terms.items()))
    total.backward()
    assert depths[0][0].grad.abs().sum() > 0 and depths[3][0].grad.abs().sum() > 0
    off_total, _, _ = evaluate(1.2)
    assert float(off_total.detach()) > float(total.detach())


def test_objective_without_cosegmentation_module_and_bad_sizes():
    scene = make_scene(dtype=torch.float32)
    loss = SelfSupervisedLoss(get_recipe("jdacs"))
    assert "cosegmentation" not in loss.active_terms
    true = scene["depths"][:, 0]
    with pytest.raises(ValueError, match="augmented_stage_depths"):
        loss(scene["images"], scene["Ks"], scene["cam_from_world"], _stage_depths(true, 1.0))
    plain = SelfSupervisedLoss(get_recipe("unsup_mvsnet"))
    with pytest.raises(ValueError, match="integer factor"):
        plain(scene["images"], scene["Ks"], scene["cam_from_world"], {0: [true[..., :-3, :]]})


# ------------------------------------------------------------------------------------------------
# pseudo labels (self-training)


def test_pseudo_label_loss_minimal_at_label_and_ignores_unlabelled():
    generator = torch.Generator().manual_seed(7)
    label = 2.0 + torch.rand(2, 1, 16, 16, generator=generator)
    label[:, :, :4] = 0  # no label on the top rows
    label[0, 0, 5, 5] = float("nan")  # nor where the label is not finite
    true = label.clone()
    true[:, :, :4] = 3.0
    true[0, 0, 5, 5] = 3.0
    assert float(pseudo_label_loss(true, label)) == 0.0
    values = [float(pseudo_label_loss(true * s, label)) for s in (1.2, 1.1, 1.02, 1.005)]
    assert values[0] > values[1] > values[2] > values[3] > 0
    # unlabelled pixels do not count, whatever the depth there
    wild = true.clone()
    wild[:, :, :4] = 100.0
    wild[0, 0, 5, 5] = -5.0
    assert float(pseudo_label_loss(wild, label)) == 0.0
    # relative: the same percentage error costs the same in any unit; 2 % -> smooth-L1(2, beta 1) = 1.5
    assert float(pseudo_label_loss(true * 1.02, label)) == pytest.approx(1.5, rel=1e-4)
    assert float(pseudo_label_loss(10 * true * 1.02, 10 * label)) == pytest.approx(1.5, rel=1e-4)


def test_pseudo_label_loss_resizes_labels_and_keeps_the_graph():
    label = torch.zeros(1, 1, 16, 16)
    label[..., :8, :] = 4.0  # the top half labelled
    depth = torch.full((1, 1, 4, 4), 4.0, requires_grad=True)  # a stage at 1/4 resolution
    assert float(pseudo_label_loss(depth.detach(), label)) == 0.0
    off = depth.detach().clone()
    off[..., 2:, :] = 9.0  # the unlabelled bottom half
    assert float(pseudo_label_loss(off, label)) == 0.0
    off[..., :2, :] = 4.4
    assert float(pseudo_label_loss(off, label)) == pytest.approx(9.5, rel=1e-5)
    nothing = pseudo_label_loss(depth, torch.zeros(1, 1, 16, 16))
    nothing.backward()
    assert float(nothing.detach()) == 0.0 and depth.grad is not None
    with pytest.raises(ValueError, match="label"):
        pseudo_label_loss(depth, torch.zeros(2, 1, 16, 16))
    with pytest.raises(ValueError, match="label"):
        pseudo_label_loss(depth, torch.zeros(1, 16, 16))


def test_objective_pseudo_label_term():
    scene = make_scene(SLANTED, dtype=torch.float32)
    true = scene["depths"][:, 0]
    loss = SelfSupervisedLoss(get_recipe("unsup_mvsnet", {"pseudo_label": 0.5}))
    assert "pseudo_label" in loss.active_terms
    with pytest.raises(ValueError, match="labels"):
        loss(scene["images"], scene["Ks"], scene["cam_from_world"], _stage_depths(true, 1.0))
    labels = true.clone()
    labels[..., : HEIGHT // 2, :] = 0
    values = {}
    for scale in (1.0, 1.05):
        total, terms = loss(scene["images"], scene["Ks"], scene["cam_from_world"], _stage_depths(true, scale), labels=labels)
        values[scale] = float(terms["pseudo_label"])
        torch.testing.assert_close(total, sum(loss.recipe.weights[t] * v for t, v in terms.items()))
    # the averaged-down stages differ a little from the labels; scaling away from them costs more
    assert values[1.05] > values[1.0] + 20  # 5 % off at each of the 6 outputs: about 4 more each


def test_jdacs_ms_trains_a_cvp_backbone_from_scratch_and_train_model_overrides_it():
    """A recipe named after a paper runs that paper's network: JDACS-MS is built on CVP-MVSNet."""
    from pipeline.config import LossConfig, TrainConfig
    from pipeline.model.cvp import CVPMVSNet
    from pipeline.model.network import PatchmatchNet
    from pipeline.training.data import build_model

    jdacs_ms = TrainConfig(loss=LossConfig(recipe="jdacs_ms"))
    assert isinstance(build_model(jdacs_ms, None), CVPMVSNet)
    assert isinstance(build_model(TrainConfig(loss=LossConfig(recipe="jdacs")), None), PatchmatchNet)
    chosen = dataclasses.replace(jdacs_ms, model={"backbone": "patchmatchnet"})
    assert isinstance(build_model(chosen, None), PatchmatchNet)
