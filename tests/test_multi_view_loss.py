"""Symmetric multi-view depth consistency (MVS^2) on ground truth: a rendered room and analytic planes.

The room is ``pipeline.synth``'s scene of seed 0 (boxes, spheres, cylinders, a ramp in a room)
built in memory at 64 x 48 pixels for 4 views; its ground-truth depth maps are ray-cast at pixel
centres, so they are consistent with each other up to bilinear sampling.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from pipeline.losses import SelfSupervisedLoss, get_recipe, multi_view_consistency_loss, pair_consistency
from pipeline.synth import SceneOptions, build_scene
from pipeline.synth.render import render_depth
from test_losses import SLANTED, _stage_depths, make_scene

VIEWS, WIDTH, HEIGHT = 4, 64, 48


@functools.lru_cache(maxsize=1)
def _room():
    scene = build_scene(0, VIEWS, WIDTH, HEIGHT, SceneOptions())
    depths = np.stack([render_depth(scene, view) for view in range(VIEWS)])
    poses = np.concatenate([scene.cams_from_world, np.tile([[[0.0, 0.0, 0.0, 1.0]]], (VIEWS, 1, 1))], 1)
    return depths, scene.K, poses


def room(dtype=torch.float64):
    """Ground-truth depths [(1, 1, H, W)] * V, K (1, V, 3, 3) and cam_from_world (1, V, 4, 4)."""
    depths, K, poses = _room()
    assert (depths > 0).all()  # the room encloses every camera: every pixel sees a surface
    return (
        [torch.from_numpy(d).to(dtype)[None, None] for d in depths],
        torch.from_numpy(K).to(dtype).expand(1, VIEWS, 3, 3),
        torch.from_numpy(poses).to(dtype)[None],
    )


def test_zero_on_consistent_ground_truth():
    depths, K, poses = room()
    loss, keep = multi_view_consistency_loss(depths, K, poses)
    one_percent, _ = multi_view_consistency_loss([d * 1.01 if v == 1 else d for v, d in enumerate(depths)], K, poses)
    # Not exactly 0: the bilinear sample of a view's depth map between pixel centres is off the
    # surface where it bends (creases of the boxes, the spheres' silhouettes below tau_rel).
    assert float(loss) < 5e-4 < 0.1 * float(one_percent)
    for i in range(VIEWS):
        for j in range(VIEWS):
            if i != j:  # most pixels take part: the neighbouring views of the rig overlap
                assert float(keep[i][j].float().mean()) > 0.5, (i, j)
            else:
                assert keep[i][j] is None
    # analytic planes seen by four cameras: exact depth maps, consistent to float64 precision
    plane = make_scene(SLANTED)
    plane_loss, _ = multi_view_consistency_loss(list(plane["depths"].unbind(1)), plane["Ks"], plane["cam_from_world"])
    assert float(plane_loss) < 1e-5


def test_grows_with_injected_errors():
    depths, K, poses = room()
    values = []
    for error in (0.0, 0.005, 0.01, 0.02, 0.03):
        wrong = [d * (1 + error) if v == 2 else d for v, d in enumerate(depths)]
        values.append(float(multi_view_consistency_loss(wrong, K, poses)[0]))
    assert all(a < b for a, b in zip(values, values[1:])), values
    # local errors too: a bump on part of view 0's depth map
    bumped = [d.clone() for d in depths]
    bumped[0][..., 10:30, 20:40] *= 1.02
    assert float(multi_view_consistency_loss(bumped, K, poses)[0]) > 3 * values[0]


def test_occlusion_mask_excludes_pixels_behind_an_injected_occluder():
    """View 1 gets an object in front of the room (its depth halved on a patch): the pixels of the
    other views that see, through view 1, the surface behind it must be masked, not penalised."""
    depths, K, poses = room()
    occluded = [d.clone() for d in depths]
    rows, cols = slice(12, 36), slice(20, 44)
    occluded[1][..., rows, cols] *= 0.5
    clean_loss, clean_keep = multi_view_consistency_loss(depths, K, poses)
    loss, keep = multi_view_consistency_loss(occluded, K, poses)
    # Which pixels of view 0 land inside the patch (with a pixel of margin for bilinear support)?
    world_from_0 = torch.linalg.inv(poses[:, 0])
    from pipeline.losses.cross_view import pixel_rays

    points = pixel_rays(K[:, 0], HEIGHT, WIDTH) * depths[0]
    in_1 = (poses[:, 1] @ world_from_0)[:, :3, :3] @ points.view(1, 3, -1) + (poses[:, 1] @ world_from_0)[:, :3, 3:]
    pixels = (K[:, 1] @ in_1) / in_1[:, 2:3]
    x, y = pixels[:, 0].view(1, 1, HEIGHT, WIDTH), pixels[:, 1].view(1, 1, HEIGHT, WIDTH)
    behind = (x > cols.start - 0.5) & (x < cols.stop + 0.5) & (y > rows.start - 0.5) & (y < rows.stop + 0.5)
    assert int(behind.sum()) > 200  # the occluder covers a good part of view 0's overlap with view 1
    assert not (keep[0][1] & behind).any()
    assert (clean_keep[0][1] & behind).sum() > 0.6 * behind.sum()  # most were kept without the occluder
    # the rest of the pair is untouched, and so is the pair of views that do not involve view 1
    assert ((keep[0][1] ^ clean_keep[0][1]) & ~behind).sum() < 0.1 * behind.sum()
    assert torch.equal(keep[0][2], clean_keep[0][2])
    # masked, the occluder costs (almost) nothing; unmasked it would dominate
    assert float(loss) < 1.5 * float(clean_loss) + 1e-4
    error, valid = pair_consistency(occluded[0], occluded[1], K[:, 0], K[:, 1], poses[:, 1] @ world_from_0,
                                    max_relative_error=10.0, max_reprojection_error=1e6)
    assert float(error[valid & behind].mean()) > 0.3  # what the occluded pixels would have cost (0.5 inside)


def test_reprojection_threshold_masks_pairs_the_relative_test_keeps():
    depths, K, poses = room()
    wrong = [d * 1.03 if v == 1 else d for v, d in enumerate(depths)]  # 3 %: below tau_rel = 5 %
    _, loose = multi_view_consistency_loss(wrong, K, poses, max_reprojection_error=1e6)
    _, tight = multi_view_consistency_loss(wrong, K, poses, max_reprojection_error=0.05)
    assert loose[0][1].sum() > 2 * tight[0][1].sum()


def test_gradients_reach_every_view():
    depths, K, poses = room()
    generator = torch.Generator().manual_seed(0)
    noisy = [(d * (1 + 0.01 * torch.rand(d.shape, generator=generator, dtype=d.dtype))).requires_grad_(True) for d in depths]
    loss, _ = multi_view_consistency_loss(noisy, K, poses)
    loss.backward()
    for view, depth in enumerate(noisy):
        assert torch.isfinite(depth.grad).all() and depth.grad.abs().sum() > 0, view


def test_views_at_their_own_resolution_and_bad_input():
    depths, K, poses = room(torch.float32)
    half = torch.nn.functional.avg_pool2d(depths[1], 2)
    K_mixed = K.clone()
    K_mixed[:, 1, :2] *= 0.5
    loss, keep = multi_view_consistency_loss([depths[0], half], K_mixed[:, :2], poses[:, :2])
    assert float(loss) < 2e-3 and keep[1][0].shape == half.shape
    with pytest.raises(ValueError, match="at least 2"):
        multi_view_consistency_loss(depths[:1], K[:, :1], poses[:, :1])
    with pytest.raises(ValueError, match="cam_from_world"):
        multi_view_consistency_loss(depths, K, poses[:, :3])
    with pytest.raises(ValueError, match="masks"):
        multi_view_consistency_loss(depths, K, poses, masks=[None])


def test_symmetric_objective_every_view_a_reference():
    """SelfSupervisedLoss.symmetric: the per-reference terms averaged over the views, cross_view over
    every pair; with the true depths the total is lower than with wrong ones, and every view's
    outputs get gradients."""
    scene = make_scene(SLANTED, dtype=torch.float32)
    images, K, poses = scene["images"], scene["Ks"], scene["cam_from_world"]
    objective = SelfSupervisedLoss(get_recipe("mvs2"))

    def evaluate(scale):
        view_depths = [_stage_depths(scene["depths"][:, v], scale) for v in range(images.shape[1])]
        for stage_depths in view_depths:
            for outputs in stage_depths.values():
                for depth in outputs:
                    depth.requires_grad_(True)
        return (*objective.symmetric(images, K, poses, view_depths), view_depths)

    total, terms, view_depths = evaluate(1.0)
    assert set(terms) == {"photometric", "ssim", "smoothness", "cross_view"}
    assert float(terms["cross_view"].detach()) < 1e-4
    torch.testing.assert_close(total, sum(objective.recipe.weights[t] * v for t, v in terms.items()))
    total.backward()
    for stage_depths in view_depths:
        assert stage_depths[0][0].grad.abs().sum() > 0 and stage_depths[3][0].grad.abs().sum() > 0
    wrong = [_stage_depths(scene["depths"][:, v], 1.03 if v == 2 else 1.0) for v in range(images.shape[1])]
    _, wrong_terms = objective.symmetric(images, K, poses, wrong)
    assert float(wrong_terms["cross_view"]) > 100 * float(terms["cross_view"].detach()) + 1e-3
    # the per-reference terms are forward()'s with each view first, averaged over the views
    single = SelfSupervisedLoss(get_recipe("unsup_mvsnet"))
    views = images.shape[1]
    view_depths = [_stage_depths(scene["depths"][:, v], 1.0 + 0.02 * v) for v in range(views)]
    _, symmetric_terms = single.symmetric(images, K, poses, view_depths)
    expected = dict.fromkeys(symmetric_terms, 0.0)
    for v in range(views):
        order = [v] + [u for u in range(views) if u != v]
        _, forward_terms = single(images[:, order], K[:, order], poses[:, order], view_depths[v])
        for term, value in forward_terms.items():
            expected[term] += float(value) / views
    for term, value in symmetric_terms.items():
        assert float(value) == pytest.approx(expected[term], rel=1e-5), term
    with pytest.raises(ValueError, match="one stage_depths per view"):
        objective.symmetric(images, K, poses, view_depths[:2])
    with pytest.raises(ValueError, match="pseudo_label"):
        SelfSupervisedLoss(get_recipe("mvs2", {"pseudo_label": 1.0})).symmetric(images, K, poses, view_depths)


def test_forward_cross_view_is_the_pair_of_reference_and_view_1_both_ways():
    """forward() with cross_depth (view 1's depth from a second forward): the two-view case of the
    symmetric term, so an occluder in view 1's depth is masked there too."""
    scene = make_scene(SLANTED, dtype=torch.float32)
    images, K, poses = scene["images"], scene["Ks"], scene["cam_from_world"]
    reference, cross = scene["depths"][:, 0] * 1.01, scene["depths"][:, 1].clone()
    cross[..., 10:30, 20:40] *= 0.5  # an occluder in front of the plane, seen by view 1 only
    objective = SelfSupervisedLoss(get_recipe("mvs2", {"photometric": 0, "ssim": 0, "smoothness": 0}))
    depth = reference.clone().requires_grad_(True)
    total, terms = objective(images, K, poses, {0: [depth]}, cross_depth=cross)
    expected, _ = multi_view_consistency_loss([reference, cross], K[:, :2], poses[:, :2], max_reprojection_error=2.0)
    assert float(terms["cross_view"].detach()) == pytest.approx(float(expected), rel=1e-6)
    assert 0.005 < float(expected) < 0.02  # the 1 % error counts; the occluder's 50 % does not
    total.backward()
    assert depth.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="cross_depth"):
        objective(images, K, poses, {0: [depth]})
