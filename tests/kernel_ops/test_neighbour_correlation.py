"""kernels.neighbour_correlation: the CPU forward (native or numba) against the grid_sample
reference, and the differentiable path."""

from __future__ import annotations

import pytest
import torch

from kernels import neighbour_correlation
from kernels.neighbour_correlation import neighbour_correlation_reference


@pytest.mark.parametrize("precision, atol", [(torch.float64, 1e-12), (torch.float32, 1e-5)], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", [(1, 16, 5, 7, 9, 4), (2, 8, 6, 3, 4, 8), (1, 6, 1, 9, 2, 3)], ids=lambda s: "x".join(map(str, s)))
def test_neighbour_correlation_kernel_matches_reference(shape, precision, atol):
    B, C, H, W, K, G = shape
    gen = torch.Generator().manual_seed(sum(shape))
    feature = torch.randn(B, C, H, W, generator=gen, dtype=torch.float64).to(precision)
    offsets = (3.0 * torch.randn(B, 2 * K, H, W, generator=gen, dtype=torch.float64)).to(precision)  # some outside
    with torch.no_grad():
        out = neighbour_correlation(feature, offsets, G)
    assert out.shape == (B, G, K, H, W)
    torch.testing.assert_close(out, neighbour_correlation_reference(feature, offsets, G), atol=atol, rtol=1e-5)


def test_neighbour_correlation_values_and_autograd_path():
    feature = torch.arange(1.0, 13.0, dtype=torch.float64).view(1, 2, 2, 3)  # channels 1..6 and 7..12
    offsets = torch.zeros(1, 4, 2, 3, dtype=torch.float64)
    offsets[:, 2] = 0.5  # neighbour 1: half a pixel to the right
    with torch.no_grad():
        out = neighbour_correlation(feature, offsets, 2)  # one channel per group
    torch.testing.assert_close(out[0, :, 0], feature[0] ** 2)  # neighbour 0: the pixel itself
    right = torch.cat([(feature[0, :, :, :-1] + feature[0, :, :, 1:]) / 2, feature[0, :, :, -1:]], dim=-1)  # clamped
    torch.testing.assert_close(out[0, :, 1], feature[0] * right)
    leaf = feature.clone().requires_grad_()
    grad_out = neighbour_correlation(leaf, offsets, 2)
    torch.testing.assert_close(grad_out.detach(), out)
    (grad,) = torch.autograd.grad(grad_out.sum(), leaf)
    assert grad.abs().sum() > 0


def test_neighbour_correlation_rejects_bad_input():
    feature, offsets = torch.zeros(1, 6, 3, 4), torch.zeros(1, 4, 3, 4)
    with pytest.raises(ValueError, match="num_groups must divide the 6 channels, got 4"):
        neighbour_correlation(feature, offsets, 4)
    with pytest.raises(ValueError, match=r"offsets \(1, 2K, 3, 4\) with K >= 1, got \(1, 3, 3, 4\)"):
        neighbour_correlation(feature, offsets[:, :3], 2)
    with pytest.raises(TypeError, match="offsets are torch.float64"):
        neighbour_correlation(feature, offsets.double(), 2)
    with pytest.raises(TypeError, match="feature must be float32 or float64"):
        neighbour_correlation(feature.long(), offsets, 2)
