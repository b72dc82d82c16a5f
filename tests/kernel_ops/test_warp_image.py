"""kernels.warp_image: against its reference, geometrically (a textured plane), gradients, errors."""

from __future__ import annotations

import math

import pytest
import torch

from kernels import warp_image
from kernels.warp_image import projection_matrix, warp_image_reference


def _intrinsics(width: int, height: int, focal_scale: float = 0.9) -> torch.Tensor:
    f = focal_scale * width
    return torch.tensor([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]], dtype=torch.float64)


def _rotation(yaw: float, pitch: float) -> torch.Tensor:
    cy, sy, cp, sp = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)
    r_y = torch.tensor([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]], dtype=torch.float64)
    r_x = torch.tensor([[1, 0, 0], [0, cp, -sp], [0, sp, cp]], dtype=torch.float64)
    return r_y @ r_x


def _cameras(batch, height, width, src_h, src_w):
    ref_K = _intrinsics(width, height).expand(batch, 3, 3).clone()
    src_K = _intrinsics(src_w, src_h, 0.8).expand(batch, 3, 3).clone()
    src_from_ref = torch.eye(4, dtype=torch.float64).repeat(batch, 1, 1)
    for b in range(batch):
        src_from_ref[b, :3, :3] = _rotation(0.08 * (b + 1), -0.04 * b)
        src_from_ref[b, :3, 3] = torch.tensor([0.25, -0.1 + 0.05 * b, 0.03 * b], dtype=torch.float64)
    return ref_K, src_K, src_from_ref


def _scene(batch, channels, height, width, src_h, src_w, seed=0, behind=True):
    """Random source image, depths in [1, 3] with a few points behind the camera, cameras."""
    gen = torch.Generator().manual_seed(seed)
    src = torch.rand((batch, channels, src_h, src_w), generator=gen, dtype=torch.float64)
    depth = 1 + 2 * torch.rand((batch, 1, height, width), generator=gen, dtype=torch.float64)
    if behind:
        depth[0, 0, 0, : min(3, width)] = -1.5  # behind the reference (and source) camera
        depth[-1, 0, -1, -1] = 0.0
    return (src, depth, *_cameras(batch, height, width, src_h, src_w))


def _nudge_off_kinks(depth, ref_K, src_K, src_from_ref, src_h, src_w, margin=1e-3):
    """Move depths whose sample lies within ``margin`` px of a bilinear kink or validity edge.

    gradcheck's finite differences straddle a kink there and would disagree with the analytic
    one-sided derivative, so the test keeps every sample clear of integer positions.
    """
    depth = depth.clone()
    for _ in range(20):
        proj = projection_matrix(ref_K, src_K, src_from_ref, torch.float64)
        height, width = depth.shape[-2:]
        u = torch.arange(width, dtype=torch.float64) + 0.5
        v = torch.arange(height, dtype=torch.float64)[:, None] + 0.5
        coords = []
        for r in range(3):
            p = proj[:, r].view(-1, 4, 1, 1)
            coords.append(depth[:, 0] * (p[:, 0] * u + p[:, 1] * v + p[:, 2]) + p[:, 3])
        fx = coords[0] / coords[2] - 0.5
        fy = coords[1] / coords[2] - 0.5
        frac_x = (fx - fx.round()).abs()
        frac_y = (fy - fy.round()).abs()
        bad = ((frac_x < margin) | (frac_y < margin)) & (depth[:, 0] > 0)
        if not bad.any():
            return depth
        depth[:, 0][bad] *= 1.0137
    raise RuntimeError("could not move depths off the kinks")


SHAPES = [
    # (B, C, H, W, Hs, Ws): odd sizes, source size != reference size, B > 1
    (2, 3, 13, 17, 11, 19),
    (1, 1, 5, 4, 6, 7),
    (3, 2, 9, 33, 17, 15),
    (1, 4, 1, 1, 2, 3),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("non_contiguous", [False, True], ids=["contig", "noncontig"])
def test_matches_reference(device, dtype, tolerance, shape, non_contiguous):
    batch, channels, height, width, src_h, src_w = shape
    src, depth, ref_K, src_K, src_from_ref = _scene(*shape)
    if non_contiguous:
        src = src.transpose(-1, -2).contiguous().transpose(-1, -2)
        depth = depth.transpose(-1, -2).contiguous().transpose(-1, -2)
        assert not src.is_contiguous() or src.shape[-1] == 1
    src = src.to(device=device, dtype=dtype).requires_grad_()
    depth = depth.to(device=device, dtype=dtype).requires_grad_()
    cams = [c.to(device) for c in (ref_K, src_K, src_from_ref)]
    warped, valid = warp_image(src, depth, *cams)
    assert warped.shape == (batch, channels, height, width) and warped.dtype == dtype
    assert valid.shape == (batch, 1, height, width) and valid.dtype == torch.bool
    grad = torch.randn(warped.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(warped)
    g_src, g_depth = torch.autograd.grad(warped, (src, depth), grad)

    ref_warped, ref_valid = warp_image_reference(src, depth, *cams)  # same dtype: same rounding of coords
    r_src, r_depth = torch.autograd.grad(ref_warped, (src, depth), grad)
    assert torch.equal(valid, ref_valid)
    if height * width > 4:
        assert 0.2 < valid.double().mean() < 1.0, "the scene should mix valid and invalid pixels"
    assert not valid[0, 0, 0, 0] and not valid[-1, 0, -1, -1], "points behind the camera must be invalid"
    atol, rtol = tolerance
    torch.testing.assert_close(warped, ref_warped, atol=atol, rtol=rtol)
    assert torch.all(warped[~valid.expand_as(warped)] == 0)
    torch.testing.assert_close(g_src, r_src, atol=atol, rtol=rtol)
    # Depth gradients scale with the image gradient times d(pixel)/d(depth) (~ f * baseline / z^2).
    scale = max(1.0, r_depth.abs().max().item())
    torch.testing.assert_close(g_depth, r_depth, atol=atol * scale, rtol=rtol)
    assert torch.all(g_depth[~valid] == 0)


def _plane_texture(points: torch.Tensor) -> torch.Tensor:
    """Smooth albedo on the plane (periods of ~20 px at the test's scale)."""
    x, y = points[..., 0], points[..., 1]
    return 0.5 + 0.25 * torch.sin(5.0 * x + 1.0) * torch.cos(4.0 * y) + 0.1 * torch.sin(3.0 * x + 4.0 * y)


def _render_plane(K, cam_from_world, normal, offset, height, width):
    """Image and z-depth of the plane {X : normal . X = offset} (world frame) seen by a camera."""
    rot, trans = cam_from_world[:3, :3], cam_from_world[:3, 3]
    u = torch.arange(width, dtype=torch.float64) + 0.5
    v = torch.arange(height, dtype=torch.float64) + 0.5
    pix = torch.stack(torch.broadcast_tensors(u[None, :], v[:, None], torch.ones(height, width, dtype=torch.float64)), -1)
    rays_cam = pix @ torch.linalg.inv(K).T  # z = 1: scale s along the ray is the z-depth
    centre = -rot.T @ trans
    rays_world = rays_cam @ rot  # R^T r for each ray
    depth = (offset - normal @ centre) / (rays_world @ normal)
    points = centre + depth[..., None] * rays_world
    return _plane_texture(points), depth


def test_true_depth_reproduces_reference_image_of_a_plane():
    """Geometry, not just agreement with the reference: a tilted textured plane seen by two cameras.

    With the true depth the only error left is bilinear interpolation of the source image, which
    is O(h^2): rendering the source at twice the resolution must cut it about four-fold.
    """
    height, width, src_h, src_w = 48, 64, 40, 56
    ref_K = torch.tensor([[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]], dtype=torch.float64)
    src_K = torch.tensor([[44.0, 0, 28.5], [0, 44.0, 19.5], [0, 0, 1]], dtype=torch.float64)
    normal = torch.tensor([0.15, -0.1, 1.0], dtype=torch.float64)
    offset = 3.0
    ref_from_world = torch.eye(4, dtype=torch.float64)  # world = reference camera
    src_from_world = torch.eye(4, dtype=torch.float64)
    src_from_world[:3, :3] = _rotation(-0.05, 0.03)
    src_from_world[:3, 3] = torch.tensor([-0.3, 0.05, 0.1], dtype=torch.float64)
    ref_image, ref_depth = _render_plane(ref_K, ref_from_world, normal, offset, height, width)
    src_from_ref = src_from_world @ torch.linalg.inv(ref_from_world)

    def mean_error(depth, K=ref_K, scale=1):
        scaled_K = src_K.clone()
        scaled_K[:2] *= scale  # exact under the pixel-centre convention
        src_image, _ = _render_plane(scaled_K, src_from_world, normal, offset, src_h * scale, src_w * scale)
        warped, valid = warp_image(src_image[None, None], depth[None, None], K[None], scaled_K[None], src_from_ref[None])
        assert valid.double().mean() > 0.8
        error = (warped[0, 0] - ref_image)[valid[0, 0]].abs()
        return error.mean().item(), error.max().item()

    mean, worst = mean_error(ref_depth)
    assert mean < 2.5e-3 and worst < 1.2e-2, f"true depth should reproduce the image, got mean {mean}, max {worst}"
    mean_fine, _ = mean_error(ref_depth, scale=2)
    assert mean_fine < mean / 3, f"interpolation error should fall ~4x at 2x resolution: {mean} -> {mean_fine}"
    # The test can fail: a 5 % depth error, or a half-pixel slip of the pixel-centre convention,
    # leave errors well above the interpolation error.
    assert mean_error(ref_depth * 1.05)[0] > 3 * mean
    shifted_K = ref_K.clone()
    shifted_K[:2, 2] -= 0.5  # as if pixel centres were at integer coordinates
    assert mean_error(ref_depth, shifted_K)[0] > 8 * mean


@pytest.mark.parametrize("depth_value", [2.0, 0.75])
def test_identity_warp_returns_the_image(depth_value):
    """src = ref camera: every pixel samples its own centre (dyadic K and depth keep it exact,
    so even the border pixels, whose samples sit exactly on the validity edge, stay valid)."""
    src, _, _, _, _ = _scene(2, 2, 6, 7, 6, 7, behind=False)
    K = torch.tensor([[4.0, 0, 3.5], [0, 4.0, 3.0], [0, 0, 1]], dtype=torch.float64).expand(2, 3, 3)
    depth = torch.full((2, 1, 6, 7), depth_value, dtype=torch.float64)
    warped, valid = warp_image(src, depth, K, K, torch.eye(4, dtype=torch.float64).expand(2, 4, 4))
    assert valid.all()
    torch.testing.assert_close(warped, src, atol=1e-12, rtol=0)


@pytest.mark.parametrize("fn", [warp_image, warp_image_reference], ids=["kernel", "reference"])
@pytest.mark.parametrize("needs", ["both", "src", "depth"])
def test_gradcheck(fn, needs):
    """float64 gradcheck on a tiny scene; inputs needing grad: src_image and/or ref_depth."""
    src, depth, ref_K, src_K, src_from_ref = _scene(2, 2, 4, 5, 5, 6, seed=3)
    depth = _nudge_off_kinks(depth, ref_K, src_K, src_from_ref, 5, 6)
    src.requires_grad_(needs in ("both", "src"))
    depth.requires_grad_(needs in ("both", "depth"))
    assert torch.autograd.gradcheck(
        lambda s, d: fn(s, d, ref_K, src_K, src_from_ref)[0], (src, depth), eps=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("low", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_low_precision_is_computed_in_float32(low):
    src, depth, ref_K, src_K, src_from_ref = _scene(1, 3, 8, 9, 7, 10)
    warped, valid = warp_image(src.to(low), depth.to(low), ref_K, src_K, src_from_ref)
    assert warped.dtype == low
    expected, expected_valid = warp_image_reference(src.to(low).float(), depth.to(low).float(), ref_K, src_K, src_from_ref)
    assert torch.equal(valid, expected_valid)
    torch.testing.assert_close(warped, expected.to(low))


def test_bad_inputs_raise_clear_errors():
    src, depth, ref_K, src_K, src_from_ref = _scene(2, 3, 5, 6, 5, 6, behind=False)
    with pytest.raises(ValueError, match=r"ref_depth.*\(B, 1, H, W\).*\(2, 2, 5, 6\)"):
        warp_image(src, depth.expand(2, 2, 5, 6), ref_K, src_K, src_from_ref)
    with pytest.raises(ValueError, match=r"src_image.*\(B, C, Hs, Ws\).*\(3, 5, 6\)"):
        warp_image(src[0], depth, ref_K, src_K, src_from_ref)
    with pytest.raises(ValueError, match=r"ref_K.*\(2, 4, 4\)"):
        warp_image(src, depth, src_from_ref, src_K, src_from_ref)
    with pytest.raises(ValueError, match=r"src_from_ref.*\(2, 3, 3\)"):
        warp_image(src, depth, ref_K, src_K, ref_K)
    with pytest.raises(ValueError, match=r"batch sizes differ.*ref_depth B=1"):
        warp_image(src, depth[:1], ref_K, src_K, src_from_ref)
    with pytest.raises(TypeError, match="share one dtype.*float64.*float32"):
        warp_image(src, depth.float(), ref_K, src_K, src_from_ref)
    with pytest.raises(TypeError, match="int64"):
        warp_image(src.long(), depth.long(), ref_K, src_K, src_from_ref)
    with pytest.raises(TypeError, match="ndarray"):
        warp_image(src.numpy(), depth, ref_K, src_K, src_from_ref)
    # (B, 3, 4) poses are accepted and mean the same as (B, 4, 4).
    a = warp_image(src, depth, ref_K, src_K, src_from_ref)[0]
    b = warp_image(src, depth, ref_K, src_K, src_from_ref[:, :3])[0]
    assert torch.equal(a, b)


@pytest.mark.cuda
@pytest.mark.parametrize("shape", [(2, 3, 37, 29, 31, 41), (1, 1, 5, 4, 6, 7)], ids=lambda s: "x".join(map(str, s)))
def test_cuda_matches_cpu_reference(dtype, tolerance, shape):
    src, depth, ref_K, src_K, src_from_ref = _scene(*shape, seed=5)
    grad = torch.randn(shape[:2] + shape[2:4], generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    outs = []
    for device, fn in (("cuda", warp_image), ("cpu", warp_image_reference)):
        s = src.to(device=device, dtype=dtype).requires_grad_()
        d = depth.to(device=device, dtype=dtype).requires_grad_()
        warped, valid = fn(s, d, ref_K.to(device), src_K.to(device), src_from_ref.to(device))
        gs, gd = torch.autograd.grad(warped, (s, d), grad.to(warped))
        outs.append([t.cpu() for t in (warped, valid, gs, gd)])
    (w, v, gs, gd), (rw, rv, rs, rd) = outs
    atol, rtol = tolerance
    # CUDA fuses multiply-adds, so a sample a few ulp from the image edge may flip validity.
    assert (v != rv).double().mean() < 1e-3
    both = (v & rv).expand_as(w)
    torch.testing.assert_close(w[both], rw[both], atol=atol, rtol=rtol)
    torch.testing.assert_close(gs, rs, atol=atol * 10, rtol=rtol)
    scale = max(1.0, rd.abs().max().item())
    torch.testing.assert_close(gd[v & rv], rd[v & rv], atol=atol * scale, rtol=rtol * 10)


@pytest.mark.cuda
def test_gradcheck_cuda():
    src, depth, ref_K, src_K, src_from_ref = _scene(2, 2, 4, 5, 5, 6, seed=3)
    depth = _nudge_off_kinks(depth, ref_K, src_K, src_from_ref, 5, 6)
    cams = [c.cuda() for c in (ref_K, src_K, src_from_ref)]
    s = src.cuda().requires_grad_()
    d = depth.cuda().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: warp_image(a, b, *cams)[0], (s, d), eps=1e-6, atol=1e-6)
