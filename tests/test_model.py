"""PatchmatchNet: shapes, ranges, invariances, gradients, components and strict checkpoints.

Tiny images and random weights keep every test fast; the invariance tests check the geometry
(relative poses, scale) through the whole network without needing a trained model.
"""

from __future__ import annotations

import math

from pathlib import Path

import pytest
import torch

from pipeline.model import (
    CheckpointError,
    ModelConfig,
    PatchmatchNet,
    load_checkpoint,
    save_checkpoint,
    scale_intrinsics,
)
from pipeline.model.network import _confidence
from pipeline.model.patchmatch import DepthInitialization, Propagation, neighbor_pattern, offset_grids
from pipeline.model.refinement import upsample


def make_views(sizes, batch=1, scale=1.0, dtype=torch.float32, seed=0):
    """Images, intrinsics, cam_from_world, depth_min, depth_max of cameras translated along x."""
    generator = torch.Generator().manual_seed(seed)
    images, intrinsics, poses = [], [], []
    for index, (height, width) in enumerate(sizes):
        images.append(torch.rand(batch, 3, height, width, generator=generator, dtype=dtype))
        K = torch.tensor([[0.9 * width, 0, width / 2], [0, 0.9 * width, height / 2], [0, 0, 1]], dtype=dtype)
        intrinsics.append(K.expand(batch, 3, 3).clone())
        pose = torch.eye(4, dtype=dtype)
        pose[0, 3] = -0.1 * index * scale
        pose[1, 3] = 0.03 * index * scale
        poses.append(pose.expand(batch, 4, 4).clone())
    depth_min = torch.linspace(1.0, 1.5, batch, dtype=dtype) * scale
    depth_max = torch.linspace(5.0, 4.0, batch, dtype=dtype) * scale
    return images, intrinsics, poses, depth_min, depth_max


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny tensors gain nothing from threads; on a shared machine one thread avoids waiting on barriers."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return PatchmatchNet(ModelConfig()).eval()


@pytest.mark.parametrize(
    "sizes",
    [
        [(48, 64), (48, 64)],  # multiple of 8, one source
        [(47, 61), (47, 61), (47, 61)],  # odd sizes
        [(45, 67), (40, 50), (52, 70), (33, 41), (48, 64)],  # sources of other sizes, 4 sources
        [(30, 26), (26, 30), (30, 26)],  # portrait and landscape
    ],
)
def test_output_shapes_and_ranges(model, sizes):
    images, intrinsics, poses, depth_min, depth_max = make_views(sizes, batch=2)
    with torch.inference_mode():
        out = model(images, intrinsics, poses, depth_min, depth_max)
    height, width = sizes[0]
    assert out.depth.shape == (2, 1, height, width)
    assert out.confidence.shape == (2, 1, height, width)
    assert torch.isfinite(out.depth).all() and torch.isfinite(out.confidence).all()
    assert (out.confidence >= 0).all() and (out.confidence <= 1).all()
    for b in range(2):
        assert out.depth[b].min() >= depth_min[b] * (1 - 1e-6)
        assert out.depth[b].max() <= depth_max[b] * (1 + 1e-6)
    config = model.config
    for stage in (1, 2, 3):
        depths = out.stage_depths[stage]
        assert len(depths) == config.iterations[stage - 1]
        for depth in depths:
            assert depth.shape == (2, 1, math.ceil(height / 2**stage), math.ceil(width / 2**stage))
            for b in range(2):
                assert depth[b].min() >= depth_min[b] * (1 - 1e-5)
                assert depth[b].max() <= depth_max[b] * (1 + 1e-5)
    assert out.stage_depths[0][0] is out.depth
    assert out.view_weights.shape == (2, len(sizes) - 1, math.ceil(height / 2), math.ceil(width / 2))


@pytest.mark.parametrize("num_sources", [1, 2, 3, 4])
def test_any_number_of_sources(model, num_sources):
    images, intrinsics, poses, depth_min, depth_max = make_views([(40, 56)] * (num_sources + 1))
    with torch.inference_mode():
        out = model(images, intrinsics, poses, depth_min, depth_max)
    assert out.depth.shape == (1, 1, 40, 56)
    assert out.view_weights.shape[1] == num_sources


class _RecordingGroupSum(torch.nn.Module):
    """A stand-in similarity net that keeps its input: (B, G, D, H, W) -> sum over G (B, 1, D, H, W)."""

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        self.seen = volume.detach().clone()
        return volume.sum(dim=1, keepdim=True)


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "autograd"])
def test_valid_view_normalisation(grad):
    """The view-weighted mean of the correlations: PatchmatchNet's divides by every source's weight,
    so a source that sees nothing (every hypothesis behind it) scales the others' evidence down;
    ``valid_view_normalisation`` divides per hypothesis by the weights of the sources it projects into."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(3)
    H, W, C, D = 10, 14, 16, 6
    ref = torch.randn(1, C, H, W, generator=generator)
    src = torch.randn(1, C, H, W, generator=generator)
    K = torch.tensor([[12.0, 0, 7.0], [0, 12.0, 5.0], [0, 0, 1]])[None]
    near = torch.eye(4)[None].clone()
    near[0, 0, 3] = -0.1
    behind = torch.diag(torch.tensor([-1.0, 1.0, -1.0, 1.0]))[None]  # turned 180 degrees about y
    hypotheses = torch.linspace(1.0, 4.0, D).view(1, D, 1, 1).expand(1, D, H, W).contiguous()
    weights = torch.tensor([0.8, 0.3]).view(1, 2, 1, 1).expand(1, 2, H, W).contiguous()
    seen = {}
    for valid_only in (False, True):
        evaluation = PatchmatchNet(ModelConfig(valid_view_normalisation=valid_only)).patchmatch["1"].evaluation.eval()
        evaluation.similarity_net = _RecordingGroupSum()
        with torch.set_grad_enabled(grad):
            aggregation = evaluation.spatial_weights(ref)
            for name, sources in (("one", [(src, near)]), ("two", [(src, near), (src, behind)])):
                evaluation(ref, [s for s, _ in sources], K, [K] * len(sources), [p for _, p in sources], hypotheses,
                           weights[:, : len(sources)], aggregation, torch.ones(1, 1, 1, 1), 0.005)
                seen[valid_only, name] = evaluation.similarity_net.seen
    assert seen[False, "one"].abs().max() > 0.1  # the near source does see the reference
    torch.testing.assert_close(seen[True, "two"], seen[True, "one"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(seen[False, "two"], seen[False, "one"] * 0.8 / 1.1, rtol=1e-4, atol=1e-6)


def test_eval_mode_is_deterministic(model):
    views = make_views([(40, 48)] * 3)
    with torch.inference_mode():
        first = model(*views)
        second = model(*views)
    assert torch.equal(first.depth, second.depth)
    assert torch.equal(first.confidence, second.confidence)


def test_only_relative_poses_matter(model):
    """Moving the whole world by a rigid transform leaves the output unchanged."""
    images, intrinsics, poses, depth_min, depth_max = make_views([(40, 48), (36, 52), (40, 48)])
    axis_angle = torch.tensor([[0.0, -0.3, 0.2], [0.3, 0.0, -0.1], [-0.2, 0.1, 0.0]])
    world_from_new = torch.eye(4)
    world_from_new[:3, :3] = torch.linalg.matrix_exp(axis_angle)
    world_from_new[:3, 3] = torch.tensor([0.5, -1.0, 2.0])
    moved = [pose @ world_from_new for pose in poses]
    with torch.inference_mode():
        a = model(images, intrinsics, poses, depth_min, depth_max)
        b = model(images, intrinsics, moved, depth_min, depth_max)
    torch.testing.assert_close(a.depth, b.depth, atol=1e-4 * float(depth_max.max()), rtol=1e-4)
    torch.testing.assert_close(a.confidence, b.confidence, atol=1e-4, rtol=1e-4)


def test_scale_equivariance(model):
    """Scaling the scene (translations and depth range) scales the depth and nothing else."""
    small = make_views([(40, 48), (40, 48), (36, 44)], scale=1.0)
    large = make_views([(40, 48), (40, 48), (36, 44)], scale=3.0)
    with torch.inference_mode():
        a = model(*small)
        b = model(*large)
    torch.testing.assert_close(b.depth, 3.0 * a.depth, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a.confidence, b.confidence, atol=1e-4, rtol=1e-4)


def test_precomputed_features_give_the_same_output(model):
    images, intrinsics, poses, depth_min, depth_max = make_views([(41, 50), (40, 48), (44, 52)])
    with torch.inference_mode():
        features = [model.extract_features(image) for image in images]
        a = model(images, intrinsics, poses, depth_min, depth_max)
        b = model(images, intrinsics, poses, depth_min, depth_max, features=features)
    assert torch.equal(a.depth, b.depth)


def test_inference_features_come_back_channels_last_whatever_the_batch_stride(model):
    """An (H, W, 3) array permuted and then unsqueezed has batch stride 3: ``is_contiguous(channels_last)``
    says yes, but oneDNN then ran channels-first and every source map needed a channels-last copy."""
    pixels = torch.rand(48, 64, 3)
    odd = pixels.permute(2, 0, 1).unsqueeze(0)  # strides (3, 1, 192, 3)
    canonical = pixels.permute(2, 0, 1).unsqueeze(0).contiguous()
    assert odd.is_contiguous(memory_format=torch.channels_last) and odd.stride()[0] == 3
    with torch.inference_mode():
        a, b = model.extract_features(odd), model.extract_features(canonical)
    for stage in (1, 2, 3):
        assert a[stage].is_contiguous(memory_format=torch.channels_last)
        assert a[stage].stride()[0] == a[stage][0].numel()
        torch.testing.assert_close(a[stage], b[stage], rtol=1e-5, atol=1e-5)


def test_float64(model):
    model64 = PatchmatchNet(model.config).eval()
    model64.load_state_dict(model.state_dict())
    model64 = model64.double()
    views = make_views([(32, 40), (32, 40)], dtype=torch.float64)
    with torch.inference_mode():
        out = model64(*views)
    assert out.depth.dtype == torch.float64
    assert out.depth.min() >= views[3][0] * (1 - 1e-9) and out.depth.max() <= views[4][0] * (1 + 1e-9)


def test_inference_path_equals_the_autograd_path():
    """Without autograd the evaluation runs in place with fused kernels (depth-weighted aggregation
    on CPU); with autograd the plain differentiable formulas. Same weights, same depths. The
    shipped weights, because a random network's feature and depth weights are nearly uniform
    (a fault in how they are applied would not show)."""
    shipped = Path(__file__).resolve().parents[1] / "pipeline" / "checkpoints" / "selfmvs_synthetic.pt"
    model64, _ = load_checkpoint(shipped)
    model64 = model64.eval().double()
    views = make_views([(32, 40), (32, 40), (32, 40)], dtype=torch.float64, seed=4)
    with torch.inference_mode():
        fast = model64(*views)
    images = [image.clone().requires_grad_() for image in views[0]]
    plain = model64(images, *views[1:])
    assert plain.depth.requires_grad
    for stage in (3, 2, 1):
        torch.testing.assert_close(fast.stage_depths[stage][-1], plain.stage_depths[stage][-1].detach(), rtol=1e-5, atol=0)
    torch.testing.assert_close(fast.depth, plain.depth.detach(), rtol=1e-5, atol=0)


def test_gradients_reach_every_parameter():
    torch.manual_seed(1)
    model = PatchmatchNet().train()
    views = make_views([(40, 48), (40, 48), (36, 44)], batch=2)
    out = model(*views)
    loss = sum(depth.mean() for depths in out.stage_depths.values() for depth in depths)
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    # The zero-initialised offset convolutions must still be trainable: non-zero gradients.
    offset_convs = [name for name, _ in model.named_parameters() if "offset_conv" in name]
    assert offset_convs
    for name, p in model.named_parameters():
        if "offset_conv" in name:
            assert torch.count_nonzero(p.grad) > 0, f"{name}: gradient is all zero"
            assert torch.isfinite(p.grad).all(), name


def test_freeze_batchnorm_keeps_running_statistics():
    torch.manual_seed(2)
    model = PatchmatchNet().freeze_batchnorm()
    model.train()
    assert model.training
    batchnorms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert batchnorms and not any(m.training for m in batchnorms)
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    out = model(*make_views([(32, 40), (32, 40)]))
    out.depth.mean().backward()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.feature.full[0].bn.weight.grad is not None  # affine parameters still train
    model.freeze_batchnorm(False).train()
    assert all(m.training for m in batchnorms)


def test_folded_batchnorm_matches_unfolded():
    """Evaluation-mode BatchNorm is folded into the convolutions; the result must not change."""
    from pipeline.model.feature import ConvBnReLU, ConvBnReLU3D

    torch.manual_seed(3)
    layer2d, layer3d = ConvBnReLU(5, 7, stride=2), ConvBnReLU3D(5, 7)
    for layer in (layer2d, layer3d):
        layer.bn.running_mean.uniform_(-1, 1)
        layer.bn.running_var.uniform_(0.5, 2)
        layer.bn.weight.data.uniform_(0.5, 2)
        layer.bn.bias.data.uniform_(-1, 1)
        layer.eval()
    x2, x3 = torch.randn(2, 5, 9, 11), torch.randn(2, 5, 3, 9, 11)
    expected2 = torch.relu(layer2d.bn(layer2d.conv(x2)))
    expected3 = torch.relu(layer3d.bn(layer3d.conv(x3)))
    torch.testing.assert_close(layer2d(x2), expected2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer3d(x3), expected3, atol=1e-5, rtol=1e-5)


def _replace(views, index, value):
    views = list(views)
    views[index] = value
    return tuple(views)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda v: ([v[0][0]], v[1][:1], v[2][:1], v[3], v[4]), "list of >= 2 images"),
        (lambda v: _replace(v, 0, [v[0][0], v[0][1][:, :2]]), r"images\[1\]: expected \(1, 3, H, W\), got \(1, 2"),
        (lambda v: _replace(v, 1, [v[1][0], v[1][1][:, :2]]), r"intrinsics\[1\]: expected \(1, 3, 3\), got \(1, 2, 3\)"),
        (lambda v: _replace(v, 2, v[2][:1]), "as many intrinsics and cam_from_world"),
        (lambda v: (v[0], v[1], v[2], v[4], v[3]), "depth_min < depth_max"),
        (lambda v: _replace(v, 3, torch.zeros(1)), "0 < depth_min"),
        (lambda v: _replace(v, 3, torch.ones(2)), r"depth_min: expected \(1,\), got \(2,\)"),
    ],
)
def test_bad_inputs_raise_clear_errors(model, change, message):
    views = make_views([(32, 40), (32, 40)])
    with pytest.raises(ValueError, match=message):
        model(*change(views))


# ------------------------------------------------------------------------------------ components


def test_stratified_initialization_in_inverse_depth():
    init = DepthInitialization().eval()
    depth_min, depth_max = torch.tensor([1.0, 2.0]), torch.tensor([10.0, 4.0])
    hypotheses = init(depth_min, depth_max, 8, 3, 5)
    assert hypotheses.shape == (2, 8, 3, 5)
    inverse = 1.0 / hypotheses[:, :, 0, 0]
    # Bin centres: equally spaced in inverse depth, increasing depth, inside the range.
    steps = inverse[:, :-1] - inverse[:, 1:]
    torch.testing.assert_close(steps, ((1 / depth_min - 1 / depth_max) / 8).view(2, 1).expand(2, 7))
    init.train()
    random = init(depth_min, depth_max, 8, 3, 5)
    assert (random.diff(dim=1) > 0).all()
    assert (random >= depth_min.view(2, 1, 1, 1)).all() and (random <= depth_max.view(2, 1, 1, 1)).all()
    bins = ((1 / depth_min.view(2, 1, 1, 1) - 1 / random) / ((1 / depth_min - 1 / depth_max).view(2, 1, 1, 1) / 8)).floor()
    assert torch.equal(bins, torch.arange(8.0).view(1, 8, 1, 1).expand_as(bins))  # one per bin


def test_perturbation_around_previous_depth():
    init = DepthInitialization().eval()
    depth_min, depth_max = torch.tensor([1.0]), torch.tensor([5.0])
    previous = torch.tensor([[[[2.0, 1.0001]]]])
    hypotheses = init(depth_min, depth_max, 8, 1, 2, previous, 0.05)
    assert hypotheses.shape == (1, 8, 1, 2)
    torch.testing.assert_close(hypotheses[0, 4, 0, 0], torch.tensor(2.0))  # the estimate itself
    inverse = 1 / hypotheses[0, :, 0, 0]
    torch.testing.assert_close(inverse[:-1] - inverse[1:], torch.full((7,), 0.05 * (1 - 1 / 5)))
    assert (hypotheses >= 1.0 - 1e-6).all()  # clamped at the near plane
    assert (hypotheses.diff(dim=1) >= 0).all()
    # One perturbation hypothesis is the estimate itself (the shipped checkpoint's stage 2: the
    # previous depth plus the propagated ones); two are the estimate and one step nearer.
    torch.testing.assert_close(init(depth_min, depth_max, 1, 1, 2, previous, 0.05), previous)
    two = init(depth_min, depth_max, 2, 1, 2, previous, 0.05)
    torch.testing.assert_close(two[:, 1:], previous)
    torch.testing.assert_close(1 / two[0, 0, 0, 0], torch.tensor(0.5 + 0.05 * 0.8))


@pytest.mark.parametrize("num_neighbors", [4, 8, 9, 16, 17])
def test_neighbor_patterns(num_neighbors):
    pattern = neighbor_pattern(num_neighbors, 3)
    assert len(pattern) == num_neighbors == len(set(pattern))
    assert ((0, 0) in pattern) == (num_neighbors in (9, 17))
    assert all(dx % 3 == 0 and dy % 3 == 0 for dx, dy in pattern)
    if num_neighbors == 9:
        assert pattern[4] == (0, 0)


def test_propagation_with_zero_offsets_reads_the_pattern_neighbours():
    propagation = Propagation(feature_channels=4, num_neighbors=8, dilation=2)
    depth = torch.arange(1.0, 1.0 + 7 * 9).view(1, 1, 7, 9)
    grids = offset_grids(propagation.offsets(torch.randn(1, 4, 7, 9)))
    propagated = propagation(depth, grids)
    assert propagated.shape == (1, 8, 7, 9)
    for k, (dx, dy) in enumerate(neighbor_pattern(8, 2)):
        y, x = 3, 4
        torch.testing.assert_close(propagated[0, k, y, x], depth[0, 0, y + dy, x + dx])
    # At the border the sample is clamped to the image.
    torch.testing.assert_close(propagated[0, 0, 0, 0], depth[0, 0, 0, 0])


def test_confidence_of_peaked_and_flat_distributions():
    peaked = torch.zeros(1, 10, 1, 2)
    peaked[0, 3, 0, 0] = 1.0
    peaked[0, 9, 0, 1] = 1.0
    torch.testing.assert_close(_confidence(peaked), torch.ones(1, 1, 1, 2))
    flat = torch.full((1, 10, 1, 1), 0.1)
    torch.testing.assert_close(_confidence(flat), torch.full((1, 1, 1, 1), 0.4))


def test_scale_intrinsics_follows_the_pixel_convention():
    K = torch.tensor([[100.0, 0, 32.0], [0, 90.0, 24.0], [0, 0, 1]])
    half = scale_intrinsics(K, 0.5)
    # The centre of the top-left pixel (0.5, 0.5) maps to the centre (0.25, 0.25)'s image at half res.
    torch.testing.assert_close(half, torch.tensor([[50.0, 0, 16.0], [0, 45.0, 12.0], [0, 0, 1]]))


def test_config_validation_and_round_trip():
    config = ModelConfig(iterations=(1, 1, 3), num_groups=(2, 4, 8))
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="iterations"):
        ModelConfig(iterations=(1, 2))
    with pytest.raises(ValueError, match="propagation_neighbors"):
        ModelConfig(propagation_neighbors=(0, 5, 16))
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(num_groups=(3, 8, 8))
    with pytest.raises(ValueError, match="unknown option"):
        ModelConfig.from_dict({"iteration": [1, 2, 2]})
    with pytest.raises(ValueError, match="refinement_upsampling"):
        ModelConfig(refinement_upsampling="cubic")


def test_bilinear_upsampling_keeps_a_slanted_plane_and_nearest_makes_stairs():
    # Depth linear in the row at half resolution (a floor): bilinear upsampling at COLMAP's pixel
    # centres reproduces the full-resolution plane away from the border rows; nearest repeats
    # each row twice, a quarter of a coarse row's step off.
    coarse = (5.0 + 0.1 * torch.arange(8.0)).view(1, 1, 8, 1).expand(1, 1, 8, 6)
    fine_rows = (torch.arange(16.0) + 0.5) / 2.0 - 0.5  # fine pixel centres in coarse pixel units
    truth = (5.0 + 0.1 * fine_rows).view(1, 1, 16, 1).expand(1, 1, 16, 12)
    bilinear = upsample(coarse, (16, 12), "bilinear")
    nearest = upsample(coarse, (16, 12), "nearest")
    torch.testing.assert_close(bilinear[..., 1:-1, :], truth[..., 1:-1, :])
    assert (nearest - truth).abs()[..., 1:-1, :].max() == pytest.approx(0.025, abs=1e-5)
    with pytest.raises(ValueError, match="upsampling"):
        upsample(coarse, (16, 12), "area")


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_both_upsampling_modes_run(mode):
    torch.manual_seed(5)
    model = PatchmatchNet(ModelConfig(stage_upsampling=mode, refinement_upsampling=mode)).eval()
    with torch.inference_mode():
        out = model(*make_views([(24, 40), (24, 40)]))
    assert out.depth.shape == (1, 1, 24, 40) and torch.isfinite(out.depth).all()


def test_without_refinement_the_depth_is_stage_1_upsampled(model):
    views = make_views([(24, 40), (24, 40), (24, 40)])
    plain = PatchmatchNet(ModelConfig(refinement=False)).eval()
    plain.load_state_dict(model.state_dict())  # same weights: the refinement's stay, unused
    with torch.inference_mode():
        refined, unrefined = model(*views), plain(*views)
    stage1 = unrefined.stage_depths[1][-1]
    torch.testing.assert_close(stage1, refined.stage_depths[1][-1])  # everything before it agrees
    torch.testing.assert_close(unrefined.depth, upsample(stage1, (24, 40), "bilinear"))
    torch.testing.assert_close(unrefined.confidence, refined.confidence)
    assert not torch.equal(unrefined.depth, refined.depth)
    with pytest.raises(ValueError, match="refinement"):
        ModelConfig(refinement="no")


def test_other_configuration_runs():
    torch.manual_seed(4)
    config = ModelConfig(
        iterations=(1, 1, 1),
        num_perturbation_hypotheses=(4, 4, 8),
        propagation_neighbors=(4, 8, 0),
        evaluation_neighbors=(17, 9, 9),
        num_initial_hypotheses=16,
    )
    model = PatchmatchNet(config).eval()
    with torch.inference_mode():
        out = model(*make_views([(24, 40), (24, 40)]))
    assert out.depth.shape == (1, 1, 24, 40)
    assert [len(out.stage_depths[s]) for s in (3, 2, 1)] == [1, 1, 1]


# ------------------------------------------------------------------------------------ checkpoints


def test_checkpoint_round_trip(tmp_path, model):
    path = save_checkpoint(tmp_path / "model.pt", model, {"epoch": 3, "note": "test"})
    loaded, extra = load_checkpoint(path)
    assert extra == {"epoch": 3, "note": "test"}
    assert loaded.config == model.config and not loaded.training
    views = make_views([(32, 40), (32, 40)])
    with torch.inference_mode():
        torch.testing.assert_close(loaded(*views).depth, model(*views).depth, rtol=0, atol=0)


def test_checkpoint_with_other_config(tmp_path):
    config = ModelConfig(num_groups=(2, 4, 4), iterations=(1, 1, 1))
    path = save_checkpoint(tmp_path / "small.pt", PatchmatchNet(config))
    loaded, extra = load_checkpoint(path)
    assert loaded.config == config and extra == {}


def test_export_with_model_overrides(tmp_path, model):
    from pipeline.model.checkpoint import export_weights

    src = save_checkpoint(tmp_path / "train.pt", model, {"step": 7, "optimizer": {}})
    dst = export_weights(src, tmp_path / "ship.pt", "note", {"refinement": False, "iterations": [1, 2, 3]})
    loaded, extra = load_checkpoint(dst)
    assert loaded.config.refinement is False and loaded.config.iterations == (1, 2, 3)
    assert extra == {"step": 7, "note": "note", "model_overrides": {"refinement": False, "iterations": [1, 2, 3]}}
    torch.testing.assert_close(loaded.state_dict(), model.state_dict())
    # Re-exporting a shipped file adds to its departures and keeps its note unless given a new one.
    again = export_weights(dst, tmp_path / "again.pt", "", {"iterations": [1, 4, 1]})
    loaded, extra = load_checkpoint(again)
    assert loaded.config.refinement is False and loaded.config.iterations == (1, 4, 1)
    assert extra == {"step": 7, "note": "note", "model_overrides": {"refinement": False, "iterations": [1, 4, 1]}}
    # An override the weights do not fit is an error naming the file, not a partly random network.
    with pytest.raises(CheckpointError, match=r"train\.pt.*shape"):
        export_weights(src, tmp_path / "bad.pt", "", {"feature_channels": [8, 32, 64]})
    with pytest.raises(CheckpointError, match="unknown option"):
        load_checkpoint(src, model_overrides={"refine": False})


def test_export_checkpoint_command_sets_model_options(tmp_path, model):
    from pipeline.cli import main

    src = save_checkpoint(tmp_path / "train.pt", model, {"step": 7})
    assert main(["export-checkpoint", str(src), str(tmp_path / "ship.pt"), "--model", "refinement=false"]) == 0
    assert load_checkpoint(tmp_path / "ship.pt")[0].config.refinement is False
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        main(["export-checkpoint", str(src), str(tmp_path / "x.pt"), "--model", "refinement"])


def _write_raw(path, payload):
    torch.save(payload, path)
    return path


def test_checkpoint_missing_and_unexpected_keys(tmp_path, model):
    path = save_checkpoint(tmp_path / "model.pt", model)
    payload = torch.load(path, weights_only=True)
    state = payload["state_dict"]
    removed = "refinement.residual.weight"
    del state[removed]
    state["refinement.extra.weight"] = torch.zeros(1)
    broken = _write_raw(tmp_path / "broken.pt", payload)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(broken)
    message = str(info.value)
    assert "broken.pt" in message and removed in message and "refinement.extra.weight" in message
    assert "missing" in message and "unexpected" in message


def test_checkpoint_shape_mismatch_and_bad_files(tmp_path, model):
    path = save_checkpoint(tmp_path / "model.pt", model)
    payload = torch.load(path, weights_only=True)
    payload["model_config"]["num_groups"] = [2, 4, 4]  # config no longer matches the weights
    mismatched = _write_raw(tmp_path / "mismatch.pt", payload)
    with pytest.raises(CheckpointError, match=r"mismatch\.pt.*shape"):
        load_checkpoint(mismatched)
    with pytest.raises(CheckpointError, match="not a selfmvs"):
        load_checkpoint(_write_raw(tmp_path / "other.pt", {"state_dict": {}}))
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_checkpoint(tmp_path / "garbage.pt")
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_checkpoint(tmp_path / "absent.pt")


def test_feature_pyramid_shortcut_equals_the_plain_top_down_path():
    """The 1/2-resolution output is computed with 16 instead of 64 channels; same function."""
    import torch.nn.functional as F

    from pipeline.model.feature import FeaturePyramid

    torch.manual_seed(5)
    fpn = FeaturePyramid().eval()
    image = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        features = fpn(image)
        x1 = fpn.down1(fpn.full(image - 0.5))
        x2 = fpn.down2(x1)
        x3 = fpn.down3(x2)

        def up(x):
            return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)

        top2 = up(x3) + fpn.lateral2(x2)
        expected1 = fpn.output1(up(top2) + fpn.lateral1(x1))
    assert features[1].shape == (1, 16, 16, 24) and features[2].shape == (1, 32, 8, 12)
    assert features[3].shape == (1, 64, 4, 6)
    torch.testing.assert_close(features[1], expected1, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(features[2], fpn.output2(top2), atol=1e-6, rtol=1e-5)


def test_pointwise_nets_in_chunks_equal_one_pass():
    from pipeline.model.feature import ConvBnReLU3D, PointwiseConv3d
    from pipeline.model.patchmatch import pointwise_in_chunks

    torch.manual_seed(6)
    net = torch.nn.Sequential(ConvBnReLU3D(4, 16), PointwiseConv3d(16, 1)).eval()
    volume = torch.randn(2, 4, 5, 7, 9)
    expected = net(volume)[:, 0]
    with torch.no_grad():  # chunks only without autograd (with it they would save no memory)
        torch.testing.assert_close(pointwise_in_chunks(net, volume, chunk=37), expected)
        torch.testing.assert_close(pointwise_in_chunks(net, volume), expected)
    torch.testing.assert_close(pointwise_in_chunks(net, volume, chunk=37), expected)


def test_pointwise_conv3d_matches_conv3d_with_gradients():
    from pipeline.model.feature import pointwise_conv3d

    gen = torch.Generator().manual_seed(8)
    x = torch.randn(3, 4, 2, 5, 6, generator=gen, dtype=torch.float64)
    weight = torch.randn(7, 4, 1, 1, 1, generator=gen, dtype=torch.float64)
    bias = torch.randn(7, generator=gen, dtype=torch.float64)
    upstream = torch.randn(3, 7, 2, 5, 6, generator=gen, dtype=torch.float64)
    for with_bias in (True, False):
        inputs = [t.clone().requires_grad_() for t in (x, weight, bias)]
        ours = pointwise_conv3d(inputs[0], inputs[1], inputs[2] if with_bias else None)
        ref_inputs = [t.clone().requires_grad_() for t in (x, weight, bias)]
        theirs = torch.nn.functional.conv3d(ref_inputs[0], ref_inputs[1], ref_inputs[2] if with_bias else None)
        torch.testing.assert_close(ours, theirs)
        used = 3 if with_bias else 2
        for got, want in zip(torch.autograd.grad(ours, inputs[:used], upstream),
                             torch.autograd.grad(theirs, ref_inputs[:used], upstream)):
            torch.testing.assert_close(got, want)


@pytest.mark.cuda
def test_cuda_matches_cpu(model):
    views = make_views([(45, 67), (40, 50), (48, 64)])
    cuda_model = PatchmatchNet(model.config).eval()
    cuda_model.load_state_dict(model.state_dict())
    cuda_model = cuda_model.cuda()
    with torch.inference_mode():
        expected = model(*views)
        got = cuda_model(*[[t.cuda() for t in v] if isinstance(v, list) else v.cuda() for v in views])
    torch.testing.assert_close(got.depth.cpu(), expected.depth, atol=1e-3 * float(views[4].max()), rtol=1e-3)
    torch.testing.assert_close(got.confidence.cpu(), expected.confidence, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_runs_under_autocast(model, amp_dtype):
    """train.amp (bf16, fp16): the pyramid's convolutions run in the low precision, PatchMatch in
    float32 (its fused kernels take float32/64 only); the depth stays float32 and close to the
    float32 forward."""
    views = make_views([(40, 56), (40, 56), (40, 56)])
    with torch.inference_mode():
        expected = model(*views)
        with torch.autocast("cpu", dtype=amp_dtype):
            features = model.extract_features(views[0][0])
            got = model(*views)
    assert features[1].dtype == amp_dtype  # autocast did reach the pyramid
    assert got.depth.dtype == torch.float32 and torch.isfinite(got.depth).all()
    relative = ((got.depth - expected.depth).abs() / expected.depth).median()
    assert relative < 0.05, relative


# ------------------------------------------------------------------------------------ SPN refinement


def _spn_inputs(batch=2, height=13, width=17, seed=0):
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, height, width, generator=gen)
    depth_min = torch.tensor([1.0, 2.0])[:batch]
    depth_max = torch.tensor([5.0, 6.0])[:batch]
    near, far = depth_min.view(-1, 1, 1, 1), depth_max.view(-1, 1, 1, 1)
    depth = near + (far - near) * torch.rand(batch, 1, height, width, generator=gen)
    return image, depth, depth_min, depth_max


def _randomise_affinity_layer(spn, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        spn.affinity.weight.copy_(0.3 * torch.randn(spn.affinity.weight.shape, generator=gen))
        spn.affinity.bias.copy_(0.3 * torch.randn(spn.affinity.bias.shape, generator=gen))


def test_spn_shapes_range_and_normalisation():
    from pipeline.model.spn import AFFINITY_BUDGET, SPNRefinement, normalise_affinity

    torch.manual_seed(0)
    spn = SPNRefinement(channels=8, steps=6).eval()
    _randomise_affinity_layer(spn)
    image, depth, depth_min, depth_max = _spn_inputs()
    out = spn(image, depth, depth_min, depth_max)
    assert out.shape == depth.shape and torch.isfinite(out).all()
    assert not torch.equal(out, depth)
    for b in range(2):
        assert out[b].min() >= depth_min[b] and out[b].max() <= depth_max[b]
    normalised = (depth - depth_min.view(-1, 1, 1, 1)) / (depth_max - depth_min).view(-1, 1, 1, 1)
    affinity = spn.affinities(image, normalised)
    assert affinity.shape == (2, 8, 13, 17)
    assert affinity.abs().sum(dim=1).max() <= AFFINITY_BUDGET + 1e-6
    # Large raw outputs are renormalised to the budget; small ones pass as scaled tanh.
    big = normalise_affinity(torch.full((1, 8, 1, 1), 5.0))
    torch.testing.assert_close(big.abs().sum(), torch.tensor(AFFINITY_BUDGET))
    small = torch.full((1, 8, 1, 1), 0.01)
    torch.testing.assert_close(normalise_affinity(small), AFFINITY_BUDGET * torch.tanh(small))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\).*\(2, 1, 13, 17\)"):
        spn(depth, depth, depth_min, depth_max)


def test_spn_with_zero_guidance_output_leaves_depth_unchanged():
    from pipeline.model.spn import SPNRefinement

    torch.manual_seed(0)
    spn = SPNRefinement(channels=8, steps=12)
    image, depth, depth_min, depth_max = _spn_inputs()
    assert torch.equal(spn.eval()(image, depth, depth_min, depth_max), depth)  # fresh: last layer zero
    _randomise_affinity_layer(spn)
    assert not torch.equal(spn(image, depth, depth_min, depth_max), depth)
    with torch.no_grad():  # zero guidance output again, whatever the earlier layers hold
        spn.affinity.weight.zero_()
        spn.affinity.bias.zero_()
    for mode in (spn.train(), spn.eval()):
        assert torch.equal(mode(image, depth, depth_min, depth_max), depth)


def test_spn_gradient_reaches_every_parameter():
    from pipeline.model.spn import SPNRefinement

    torch.manual_seed(0)
    spn = SPNRefinement(channels=8, steps=8).train()
    image, depth, depth_min, depth_max = _spn_inputs()
    depth.requires_grad_()
    target = depth.detach().flip(-1)

    def loss():
        return (spn(image, depth, depth_min, depth_max) - target).abs().mean()

    # A fresh SPN is the identity (last layer zero): only that layer learns at the first step ...
    loss().backward()
    assert spn.affinity.weight.grad.abs().sum() > 0 and spn.affinity.bias.grad.abs().sum() > 0
    assert depth.grad.abs().sum() > 0
    torch.optim.SGD(spn.parameters(), lr=0.5).step()
    # ... and after one optimiser step the gradient reaches every parameter.
    spn.zero_grad()
    loss().backward()
    for name, parameter in spn.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_spn_refinement_in_the_network_and_checkpoints(model, tmp_path):
    views = make_views([(24, 40), (24, 40)])
    config = ModelConfig(refinement="spn", spn_steps=5, spn_channels=8)
    assert ModelConfig.from_dict(config.to_dict()) == config
    spn_model = PatchmatchNet(config).eval()
    # The residual refinement's weights are shared with the default mode: a default-mode state
    # loads with only the SPN's own keys missing.
    missing, unexpected = spn_model.load_state_dict(model.state_dict(), strict=False)
    assert unexpected == [] and missing and all(key.startswith("spn.") for key in missing)
    assert not any(key.startswith("spn.") for key in model.state_dict())
    with torch.inference_mode():
        base, fresh = model(*views), spn_model(*views)
    torch.testing.assert_close(fresh.depth, base.depth, atol=0, rtol=0)  # a fresh SPN is the identity
    _randomise_affinity_layer(spn_model.spn)
    with torch.inference_mode():
        propagated = spn_model(*views)
    assert propagated.depth.shape == (1, 1, 24, 40) and not torch.equal(propagated.depth, base.depth)
    assert propagated.stage_depths[0][0] is propagated.depth
    # Round trip through a checkpoint, and the default mode's checkpoints still load strictly.
    save_checkpoint(tmp_path / "spn.pt", spn_model, {"step": 1})
    loaded, _ = load_checkpoint(tmp_path / "spn.pt")
    assert loaded.config.refinement == "spn" and loaded.config.spn_steps == 5
    with torch.inference_mode():
        torch.testing.assert_close(loaded(*views).depth, propagated.depth, atol=0, rtol=0)
    save_checkpoint(tmp_path / "base.pt", model, {"step": 1})
    assert load_checkpoint(tmp_path / "base.pt")[0].config.refinement is True
    # spn_steps needs no weights: it can change at load time.
    assert load_checkpoint(tmp_path / "spn.pt", model_overrides={"spn_steps": 0})[0].spn.steps == 0
    assert ModelConfig().refinement is True  # the default stays PatchmatchNet's refinement
    for bad, match in (({"refinement": "cspn"}, "refinement.*'spn'"), ({"spn_steps": -1}, "spn_steps"),
                       ({"spn_channels": 0}, "spn_channels"), ({"spn_steps": 2.5}, "spn_steps")):
        with pytest.raises(ValueError, match=match):
            ModelConfig(**bad)
