"""kernels.depth_weighted_aggregation: the fused CPU forward (native or numba) against the reference,
and the differentiable path (eq. 7 weights in torch, then kernels.adaptive_aggregation)."""

from __future__ import annotations

import math

import pytest
import torch

from kernels import depth_weighted_aggregation
from kernels.depth_weighted_aggregation import depth_weighted_aggregation_reference


def make_depth_case(B, D, H, W, K, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    cost = torch.randn(B, D, H, W, generator=gen, dtype=torch.float64)
    offsets = 2.5 * torch.randn(B, 2 * K, H, W, generator=gen, dtype=torch.float64)
    inverse = 0.1 + 0.5 * torch.rand(B, D, H, W, generator=gen, dtype=torch.float64)
    feature_weight = 0.05 + torch.rand(B, K, H, W, generator=gen, dtype=torch.float64)
    scale = 5.0 + 30.0 * torch.rand(B, generator=gen, dtype=torch.float64)
    return tuple(t.to(dtype) for t in (cost, offsets, inverse, feature_weight, scale))


@pytest.mark.parametrize("precision, atol", [(torch.float64, 1e-6), (torch.float32, 1e-5)], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", [(1, 3, 5, 7, 9), (2, 4, 6, 11, 4), (2, 5, 9, 2, 1)], ids=lambda s: "x".join(map(str, s)))
def test_depth_weighted_kernel_matches_reference(shape, precision, atol):
    inputs = make_depth_case(*shape, precision, seed=sum(shape))
    with torch.no_grad():  # the fused CPU kernel (inference only)
        out = depth_weighted_aggregation(*inputs)
    expected = depth_weighted_aggregation_reference(*inputs)
    # the kernel's sigmoid is a polynomial (relative error < 3e-7): that, not rounding, sets atol
    torch.testing.assert_close(out, expected, atol=atol, rtol=1e-5)


def test_depth_weighted_with_autograd_takes_the_differentiable_path():
    inputs = [t.requires_grad_() for t in make_depth_case(1, 2, 4, 5, 3, torch.float64, seed=3)]
    out = depth_weighted_aggregation(*inputs)
    expected = depth_weighted_aggregation_reference(*inputs)
    torch.testing.assert_close(out, expected)
    grads = torch.autograd.grad(out.sum(), inputs)
    expected_grads = torch.autograd.grad(expected.sum(), inputs)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want)


def test_depth_weight_ignores_neighbours_at_other_depths():
    """A neighbour whose inverse depth is far from the centre's (> 8 / scale) gets weight
    sigmoid(-4) = 0.018 of a neighbour at the same depth; the border clamp reads the edge."""
    cost = torch.tensor([[[[1.0, 100.0, 5.0]]]], dtype=torch.float64)  # (1, 1, 1, 3)
    inverse = torch.tensor([[[[0.5, 0.9, 0.5]]]], dtype=torch.float64)
    offsets = torch.zeros(1, 4, 1, 3, dtype=torch.float64)  # K = 2: the pixel itself, one to the right
    offsets[:, 2] = 1.0
    feature_weight = torch.ones(1, 2, 1, 3, dtype=torch.float64)
    scale = torch.tensor([100.0], dtype=torch.float64)  # |0.9 - 0.5| * 100 = 40 -> clamped to 8
    with torch.no_grad():
        out = depth_weighted_aggregation(cost, offsets, inverse, feature_weight, scale, eps=0.0)
    same, far = 1 / (1 + math.exp(-4.0)), 1 / (1 + math.exp(4.0))
    # pixel 0: itself (same depth) and pixel 1 (far): mostly its own cost
    assert out[0, 0, 0, 0].item() == pytest.approx((same * 1.0 + far * 100.0) / (same + far), rel=1e-6)
    # pixel 2: its right neighbour is outside; the cost reads 0 there, the inverse depth the
    # clamped border (its own, distance 0 -> full weight)
    assert out[0, 0, 0, 2].item() == pytest.approx((same * 5.0 + same * 0.0) / (2 * same), rel=1e-6)


def test_depth_weighted_rejects_bad_input():
    cost, offsets, inverse, feature_weight, scale = make_depth_case(1, 2, 3, 4, 3, torch.float32)
    with pytest.raises(ValueError, match=r"expected inverse \(1, 2, 3, 4\), got \(1, 2, 3, 5\)"):
        depth_weighted_aggregation(cost, offsets, torch.zeros(1, 2, 3, 5), feature_weight, scale)
    with pytest.raises(ValueError, match=r"expected feature_weight \(1, 3, 3, 4\)"):
        depth_weighted_aggregation(cost, offsets, inverse, feature_weight[:, :2], scale)
    with pytest.raises(TypeError, match="scale is torch.float64"):
        depth_weighted_aggregation(cost, offsets, inverse, feature_weight, scale.double())
    with pytest.raises(TypeError, match="must be torch.Tensors"):
        depth_weighted_aggregation(cost, offsets, inverse, feature_weight, 3.0)
