"""kernels.warp_correlation: fused CPU/CUDA kernels against the grid_sample reference."""

from __future__ import annotations

import math

import pytest
import torch

from kernels import warp_correlation
from kernels.warp_correlation import warp_correlation_reference


def intrinsics(batch, height, width, scale=1.0, dtype=torch.float64):
    f = 0.9 * width * scale
    K = torch.tensor([[f, 0.0, width / 2 + 0.3], [0.0, 1.1 * f, height / 2 - 0.2], [0.0, 0.0, 1.0]], dtype=dtype)
    return K.expand(batch, 3, 3).clone()


def rotation(ax, ay, az, dtype=torch.float64):
    cx, sx, cy, sy, cz, sz = math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay), math.cos(az), math.sin(az)
    rx = torch.tensor([[1, 0, 0], [0, cx, -sx], [0, sx, cx]], dtype=dtype)
    ry = torch.tensor([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]], dtype=dtype)
    rz = torch.tensor([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]], dtype=dtype)
    return rz @ ry @ rx


def make_case(B, C, H, W, Hs, Ws, D, G, device, dtype, *, behind=False, contiguous=True, seed=0):
    """Random features, generic poses (no sample lands on an integer position), random depths."""
    gen = torch.Generator().manual_seed(seed)
    ref = torch.randn(B, C, H, W, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    src = torch.randn(B, C, Hs, Ws, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    depth = (1.0 + 3.0 * torch.rand(B, D, H, W, generator=gen, dtype=torch.float64)).to(device=device, dtype=dtype)
    if not contiguous:  # same values, other strides
        ref = ref.transpose(-1, -2).contiguous().transpose(-1, -2)
        src = src.transpose(0, 1).contiguous().transpose(0, 1)
        depth = depth.permute(0, 3, 2, 1).contiguous().permute(0, 3, 2, 1)
    poses = []
    for b in range(B):
        pose = torch.eye(4, dtype=torch.float64)
        pose[:3, :3] = rotation(0.05 * (b + 1), -0.08, 0.03 * b)
        # behind=True puts the source camera 2.5 units ahead: hypotheses nearer than that are behind it
        pose[:3, 3] = torch.tensor([0.21 - 0.1 * b, -0.07, -2.5 if behind else 0.13])
        poses.append(pose)
    src_from_ref = torch.stack(poses)
    ref_K = intrinsics(B, H, W)
    src_K = intrinsics(B, Hs, Ws, scale=0.8 if behind else 1.0)
    cast = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
    return ref, src, cast(ref_K), cast(src_K), cast(src_from_ref), depth, G


SHAPES = [  # B, C, H, W, Hs, Ws, D, G
    (1, 4, 5, 7, 5, 7, 3, 1),
    (2, 8, 6, 9, 11, 5, 4, 4),
    (3, 4, 1, 13, 6, 17, 2, 4),
    (2, 12, 7, 3, 9, 9, 5, 4),
]


def assert_close(actual, expected, tolerance):
    atol, rtol = tolerance
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference(shape, contiguous, device, dtype, tolerance):
    B, C, H, W, Hs, Ws, D, G = shape
    ref, src, ref_K, src_K, src_from_ref, depth, G = make_case(
        B, C, H, W, Hs, Ws, D, G, device, dtype, contiguous=contiguous, seed=sum(shape)
    )
    if not contiguous and H > 1 and W > 1:
        assert not ref.is_contiguous() and not depth.is_contiguous()
    ref_a, src_a = ref.clone().requires_grad_(), src.clone().requires_grad_()
    ref_b, src_b = ref.clone().requires_grad_(), src.clone().requires_grad_()
    correlation, valid = warp_correlation(ref_a, src_a, ref_K, src_K, src_from_ref, depth, G)
    expected, expected_valid = warp_correlation_reference(ref_b, src_b, ref_K, src_K, src_from_ref, depth, G)
    assert correlation.shape == (B, G, D, H, W) and valid.shape == (B, D, H, W)
    assert valid.dtype == torch.bool and correlation.dtype == dtype
    assert torch.equal(valid, expected_valid)
    assert 0 < valid.sum() < valid.numel()  # the case exercises both branches
    assert_close(correlation, expected, tolerance)
    assert (correlation[~valid.unsqueeze(1).expand_as(correlation)] == 0).all()
    upstream = torch.randn(correlation.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    upstream = upstream.to(device=device, dtype=dtype)
    grads = torch.autograd.grad(correlation, (ref_a, src_a), upstream)
    expected_grads = torch.autograd.grad(expected, (ref_b, src_b), upstream)
    for got, want in zip(grads, expected_grads):
        assert_close(got, want, tolerance)


def test_dense_sorted_hypotheses_match_reference(device, dtype, tolerance):
    """Hypotheses a fraction of a pixel of parallax apart, sorted per pixel (PatchMatch's local
    perturbations): consecutive samples share corners, and the CPU kernel reuses their dot
    products; partly with exactly the same corners, partly with one or two shared."""
    B, C, H, W, Hs, Ws, D, G = 2, 8, 7, 9, 8, 11, 12, 4
    ref, src, ref_K, src_K, src_from_ref, _, G = make_case(B, C, H, W, Hs, Ws, D, G, device, dtype, seed=11)
    gen = torch.Generator().manual_seed(12)
    centre = 1.5 + 2.0 * torch.rand(B, 1, H, W, generator=gen, dtype=torch.float64)
    steps = torch.linspace(-0.06, 0.06, D, dtype=torch.float64).view(1, D, 1, 1)
    depth = (centre * (1.0 + steps)).to(device=device, dtype=dtype)  # about 0.1-0.3 px apart here
    ref_a, src_a = ref.clone().requires_grad_(), src.clone().requires_grad_()
    ref_b, src_b = ref.clone().requires_grad_(), src.clone().requires_grad_()
    correlation, valid = warp_correlation(ref_a, src_a, ref_K, src_K, src_from_ref, depth, G)
    expected, expected_valid = warp_correlation_reference(ref_b, src_b, ref_K, src_K, src_from_ref, depth, G)
    assert torch.equal(valid, expected_valid) and valid.float().mean() > 0.5
    assert_close(correlation, expected, tolerance)
    upstream = torch.randn(correlation.shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    for got, want in zip(torch.autograd.grad(correlation, (ref_a, src_a), upstream),
                         torch.autograd.grad(expected, (ref_b, src_b), upstream)):
        assert_close(got, want, tolerance)


@pytest.mark.parametrize("channels_groups", [(64, 8), (32, 8), (16, 4)], ids=lambda cg: "C%dG%d" % cg)
def test_cpu_kernels_specialised_for_patchmatchnet_stages(channels_groups):
    """(64, 8), (32, 8), (16, 4) take compile-time-specialised CPU kernels: bit-identical to the
    generic kernel (same operations in the same order), and the public function (which picks them)
    matches the reference, also with a channels-last source (the network passes one)."""
    from kernels.warp_correlation import cpu
    from kernels.warp_correlation.reference import projection_matrices

    C, G = channels_groups
    B, H, W, Hs, Ws, D = 1, 5, 6, 6, 7, 9
    ref, src, ref_K, src_K, src_from_ref, _, G = make_case(B, C, H, W, Hs, Ws, D, G, "cpu", torch.float32, seed=C)
    centre = 1.5 + 2.0 * torch.rand(B, 1, H, W, generator=torch.Generator().manual_seed(C))
    depth = centre * (1.0 + torch.linspace(-0.3, 0.3, D).view(1, D, 1, 1))  # sorted; shares corners
    assert cpu._forward_kernel(C, G) is not cpu._warp_correlation_fwd
    M, T = projection_matrices(ref_K, src_K, src_from_ref, ref.dtype)
    proj = torch.cat((M.reshape(-1, 9), T), dim=1).contiguous().numpy()
    src_cl = src.permute(0, 2, 3, 1).contiguous().numpy()
    consts = cpu._constants(src_cl.dtype, Hs, Ws, C // G)
    outputs = []
    for kernel in (cpu._forward_kernel(C, G), cpu._warp_correlation_fwd):
        correlation = torch.empty(B, G, D, H, W)
        valid = torch.empty(B, D, H, W, dtype=torch.bool)
        kernel(ref.numpy(), src_cl, proj, consts, depth.numpy(), G, correlation.numpy(), valid.numpy())
        outputs.append((correlation, valid))
    assert torch.equal(outputs[0][0], outputs[1][0]) and torch.equal(outputs[0][1], outputs[1][1])
    src_last = src.contiguous(memory_format=torch.channels_last).requires_grad_()
    ref_a, src_b, ref_b = ref.clone().requires_grad_(), src.clone().requires_grad_(), ref.clone().requires_grad_()
    correlation, valid = warp_correlation(ref_a, src_last, ref_K, src_K, src_from_ref, depth, G)
    expected, expected_valid = warp_correlation_reference(ref_b, src_b, ref_K, src_K, src_from_ref, depth, G)
    assert torch.equal(valid, expected_valid) and valid.any()
    assert torch.equal(correlation, outputs[0][0])
    assert_close(correlation, expected, (1e-5, 1e-5))
    upstream = torch.randn(correlation.shape, generator=torch.Generator().manual_seed(3))
    for got, want in zip(torch.autograd.grad(correlation, (ref_a, src_last), upstream),
                         torch.autograd.grad(expected, (ref_b, src_b), upstream)):
        assert_close(got, want, (1e-5, 1e-5))


def test_identity_pose_samples_on_pixel_centres_including_the_last_row_and_column(device, dtype, tolerance):
    """Same camera, same size: every hypothesis samples its own pixel exactly, so consecutive
    hypotheses share all corners, and on the last row/column the clamped corners repeat a key
    (x1 == x0): the CPU backward's per-corner coefficients must count each corner once."""
    B, C, H, W, D, G = 2, 8, 5, 6, 4, 4
    gen = torch.Generator().manual_seed(5)
    ref = torch.randn(B, C, H, W, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    src = torch.randn(B, C, H, W, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    # Powers of two and a binary-exact K keep the projection exact: samples land on x = j, y = i.
    depth = (2.0 ** torch.randint(-1, 3, (B, D, H, W), generator=gen)).to(device=device, dtype=dtype)
    K = torch.tensor([[4.0, 0.0, 2.0], [0.0, 4.0, 2.0], [0.0, 0.0, 1.0]], dtype=dtype, device=device).expand(B, 3, 3)
    identity = torch.eye(4, dtype=dtype, device=device).expand(B, 4, 4).clone()
    ref_a, src_a = ref.clone().requires_grad_(), src.clone().requires_grad_()
    correlation, valid = warp_correlation(ref_a, src_a, K, K, identity, depth, G)
    assert valid.all()
    expected = (ref * src).view(B, G, C // G, H, W).mean(dim=2).unsqueeze(2).expand(B, G, D, H, W)
    assert_close(correlation, expected, tolerance)
    upstream = torch.randn(correlation.shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    grad_ref, grad_src = torch.autograd.grad(correlation, (ref_a, src_a), upstream)
    per_channel = upstream.sum(dim=2).repeat_interleave(C // G, dim=1) / (C // G)  # (B, C, H, W)
    assert_close(grad_ref, per_channel * src, tolerance)
    assert_close(grad_src, per_channel * ref, tolerance)

    # A vertical shift of the source camera: x stays exactly j (the last column keeps its repeated
    # corner key) while y moves between sorted hypotheses, so consecutive hypotheses share rows of
    # corners and the backward carries coefficients across a repeated key.
    shifted = identity.clone()
    shifted[:, 1, 3] = 0.3
    depth_sorted = depth.sort(dim=1).values
    ref_a, src_a = ref.clone().requires_grad_(), src.clone().requires_grad_()
    ref_b, src_b = ref.clone().requires_grad_(), src.clone().requires_grad_()
    correlation, valid = warp_correlation(ref_a, src_a, K, K, shifted, depth_sorted, G)
    expected, expected_valid = warp_correlation_reference(ref_b, src_b, K, K, shifted, depth_sorted, G)
    assert torch.equal(valid, expected_valid) and valid[..., -1].any() and not valid.all()
    assert_close(correlation, expected, tolerance)
    for got, want in zip(torch.autograd.grad(correlation, (ref_a, src_a), upstream),
                         torch.autograd.grad(expected, (ref_b, src_b), upstream)):
        assert_close(got, want, tolerance)


def test_points_behind_the_source_camera_are_invalid(device, dtype, tolerance):
    ref, src, ref_K, src_K, src_from_ref, depth, G = make_case(2, 8, 6, 7, 8, 9, 6, 4, device, dtype, behind=True)
    correlation, valid = warp_correlation(ref, src, ref_K, src_K, src_from_ref, depth, G)
    expected, expected_valid = warp_correlation_reference(ref, src, ref_K, src_K, src_from_ref, depth, G)
    # z in the source camera, computed independently of the kernels
    rays = torch.linalg.inv(ref_K.double()) @ torch.stack(
        torch.meshgrid(torch.arange(6) + 0.5, torch.arange(7) + 0.5, indexing="ij")[::-1] + (torch.ones(6, 7),)
    ).double().view(1, 3, -1).to(device)
    points = rays.unsqueeze(1) * depth.double().view(2, 6, 1, -1)
    z_src = (src_from_ref.double()[:, None, 2:3, :3] @ points).squeeze(2) + src_from_ref.double()[:, None, 2:3, 3]
    behind = (z_src <= 1e-6).view(2, 6, 6, 7)
    assert behind.any() and (~behind).any()
    assert not valid[behind].any()
    assert valid.any()
    assert torch.equal(valid, expected_valid)
    assert_close(correlation, expected, tolerance)


@pytest.mark.parametrize("num_groups", [1, 4])
def test_gradcheck_cpu_kernel(num_groups):
    ref, src, ref_K, src_K, src_from_ref, depth, G = make_case(2, 4, 3, 4, 4, 5, 2, num_groups, "cpu", torch.float64)
    ref.requires_grad_()
    src.requires_grad_()
    fn = lambda r, s: warp_correlation(r, s, ref_K, src_K, src_from_ref, depth, G)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (ref, src), eps=1e-6, atol=1e-8)


def test_gradcheck_reference():
    ref, src, ref_K, src_K, src_from_ref, depth, G = make_case(1, 4, 3, 4, 4, 5, 2, 2, "cpu", torch.float64)
    ref.requires_grad_()
    src.requires_grad_()
    fn = lambda r, s: warp_correlation_reference(r, s, ref_K, src_K, src_from_ref, depth, G)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (ref, src), eps=1e-6, atol=1e-8)


def test_no_gradient_to_depths_and_single_input_gradients(device):
    ref, src, ref_K, src_K, src_from_ref, depth, G = make_case(1, 4, 4, 5, 4, 5, 3, 2, device, torch.float64)
    depth.requires_grad_()
    src.requires_grad_()
    correlation, valid = warp_correlation(ref, src, ref_K, src_K, src_from_ref, depth, G)
    correlation.sum().backward()
    assert depth.grad is None
    assert src.grad is not None and src.grad.abs().sum() > 0
    assert not valid.requires_grad


def render_plane_features(H, W, K, plane_depth, baseline, channels, dtype):
    """Features of a textured fronto-parallel plane seen from x = 0 (reference) and x = baseline."""
    freq = torch.linspace(0.6, 2.2, channels, dtype=torch.float64)
    phase = torch.linspace(0.0, 2.5, channels, dtype=torch.float64)

    def view(camera_x):
        u = torch.arange(W, dtype=torch.float64) + 0.5
        v = torch.arange(H, dtype=torch.float64) + 0.5
        X = (u - K[0, 2]) / K[0, 0] * plane_depth + camera_x  # world point on the plane
        Y = (v - K[1, 2]) / K[1, 1] * plane_depth
        arg = freq.view(-1, 1, 1) * X.view(1, 1, W) + 0.7 * freq.flip(0).view(-1, 1, 1) * Y.view(1, H, 1)
        feature = torch.sin(arg + phase.view(-1, 1, 1))
        return (feature / feature.norm(dim=0, keepdim=True)).unsqueeze(0).to(dtype)

    return view(0.0), view(baseline)


@pytest.mark.parametrize("num_groups", [1, 4])
@pytest.mark.parametrize("use_reference", [False, True], ids=["fused", "reference"])
def test_correlation_peaks_at_the_true_plane_depth(num_groups, use_reference, device, dtype):
    H, W, C, plane_depth, baseline = 24, 32, 8, 4.0, 0.4
    K = torch.tensor([[30.0, 0.0, W / 2], [0.0, 30.0, H / 2], [0.0, 0.0, 1.0]], dtype=torch.float64)
    ref, src = (t.to(device) for t in render_plane_features(H, W, K, plane_depth, baseline, C, dtype))
    src_from_ref = torch.eye(4, dtype=dtype).unsqueeze(0)
    src_from_ref[0, 0, 3] = -baseline  # the source camera sits at x = +baseline
    candidates = torch.tensor([2.5, 3.0, 3.5, 4.0, 4.6, 5.3, 6.5], dtype=dtype)
    true_index = 3
    depth = candidates.view(1, -1, 1, 1).expand(1, -1, H, W).contiguous().to(device)
    K = K[None].to(device=device, dtype=dtype)
    fn = warp_correlation_reference if use_reference else warp_correlation
    correlation, valid = fn(ref, src, K, K, src_from_ref.to(device), depth, num_groups)
    score = correlation.sum(dim=1)[0]  # (D, H, W)
    all_valid = valid[0].all(dim=0)
    assert all_valid.sum() > 0.5 * H * W
    best = score.argmax(dim=0)[all_valid]
    assert (best == true_index).float().mean() > 0.95


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(num_groups=3), ValueError, "num_groups must divide the 8 channels, got 3"),
        (dict(num_groups=0), ValueError, "got 0"),
        (dict(num_groups=2.0), TypeError, "num_groups must be an int"),
        (dict(ref_feature=torch.zeros(1, 8, 4)), ValueError, r"ref_feature \(B, C, H, W\), got \(1, 8, 4\)"),
        (dict(src_feature=torch.zeros(1, 4, 4, 5)), ValueError, r"src_feature \(1, 8, Hs, Ws\), got \(1, 4, 4, 5\)"),
        (dict(ref_K=torch.zeros(1, 4, 4)), ValueError, r"ref_K \(1, 3, 3\), got \(1, 4, 4\)"),
        (dict(src_from_ref=torch.zeros(1, 3, 4)), ValueError, r"src_from_ref \(1, 4, 4\), got \(1, 3, 4\)"),
        (dict(depth_hypotheses=torch.ones(1, 3, 4, 6)), ValueError, r"depth_hypotheses \(1, D, 4, 5\), got \(1, 3, 4, 6\)"),
        (dict(ref_feature=torch.zeros(1, 8, 4, 5, dtype=torch.int32)), TypeError, "int32"),
        (dict(src_feature=torch.zeros(1, 8, 4, 5, dtype=torch.float64)), TypeError, "src_feature has dtype torch.float64"),
        (dict(ref_K=[[1, 0, 0]]), TypeError, "ref_K must be a torch.Tensor, got list"),
    ],
)
def test_rejects_bad_input(change, error, match):
    args = dict(
        ref_feature=torch.zeros(1, 8, 4, 5),
        src_feature=torch.zeros(1, 8, 6, 7),
        ref_K=torch.eye(3)[None],
        src_K=torch.eye(3)[None],
        src_from_ref=torch.eye(4)[None],
        depth_hypotheses=torch.ones(1, 3, 4, 5),
        num_groups=4,
    )
    args.update(change)
    with pytest.raises(error, match=match):
        warp_correlation(**args)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
def test_cuda_matches_cpu_kernel(dtype_name):
    dtype = getattr(torch, dtype_name)
    case = make_case(2, 8, 9, 11, 7, 13, 5, 4, "cpu", dtype, seed=3)
    cuda_case = [t.cuda() if isinstance(t, torch.Tensor) else t for t in case]
    ref, src = case[0].clone().requires_grad_(), case[1].clone().requires_grad_()
    ref_c, src_c = cuda_case[0].clone().requires_grad_(), cuda_case[1].clone().requires_grad_()
    correlation, valid = warp_correlation(ref, src, *case[2:])
    correlation_c, valid_c = warp_correlation(ref_c, src_c, *cuda_case[2:])
    atol, rtol = {"float32": (1e-5, 1e-4), "float64": (1e-10, 1e-8)}[dtype_name]
    assert torch.equal(valid, valid_c.cpu())
    torch.testing.assert_close(correlation_c.cpu(), correlation, atol=atol, rtol=rtol)
    upstream = torch.randn_like(correlation)
    grads = torch.autograd.grad(correlation, (ref, src), upstream)
    grads_c = torch.autograd.grad(correlation_c, (ref_c, src_c), upstream.cuda())
    for got, want in zip(grads_c, grads):
        torch.testing.assert_close(got.cpu(), want, atol=atol, rtol=rtol)
