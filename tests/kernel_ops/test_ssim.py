"""kernels.ssim against its plain-torch reference, plus properties that hold without it."""

from __future__ import annotations

import pytest
import torch

from kernels import ssim
from kernels.ssim import ssim_reference

from conftest import TOLERANCES  # tests/ is on sys.path (rootdir conftest, prepend import mode)

# Odd sizes, sizes that are not multiples of the CUDA tile (16), B > 1, the smallest legal images.
SHAPES = [(2, 3, 7, 9), (1, 1, 17, 33), (3, 2, 5, 4), (1, 1, 3, 3), (1, 2, 2, 2)]


def _inputs(shape, device, dtype, seed=0, non_contiguous=False):
    gen = torch.Generator().manual_seed(seed)
    if non_contiguous:  # (B, C, W, H) transposed: strides of a channels-last-like view
        b, c, h, w = shape
        x = torch.rand((b, c, w, h), generator=gen, dtype=torch.float64).transpose(-1, -2)
        y = torch.rand((b, c, w, h), generator=gen, dtype=torch.float64).transpose(-1, -2)
    else:
        x = torch.rand(shape, generator=gen, dtype=torch.float64)
        y = torch.rand(shape, generator=gen, dtype=torch.float64)
    return x.to(device=device, dtype=dtype), y.to(device=device, dtype=dtype)


def _forward_backward(fn, x, y, grad_seed, padding):
    x = x.detach().requires_grad_()
    y = y.detach().requires_grad_()
    out = fn(x, y, padding=padding)
    gen = torch.Generator().manual_seed(grad_seed)
    grad = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out)
    gx, gy = torch.autograd.grad(out, (x, y), grad)
    return out, gx, gy


@pytest.mark.parametrize("padding", ["reflect", "valid"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("non_contiguous", [False, True], ids=["contig", "noncontig"])
def test_matches_reference(device, dtype, tolerance, shape, padding, non_contiguous):
    if padding == "valid" and min(shape[2:]) < 3:
        pytest.skip("valid padding needs H, W >= 3")
    x, y = _inputs(shape, device, dtype, non_contiguous=non_contiguous)
    assert x.is_contiguous() != non_contiguous
    out, gx, gy = _forward_backward(ssim, x, y, 1, padding)
    # The reference in float64 is the ground truth for every dtype.
    ref, rx, ry = _forward_backward(ssim_reference, x.double(), y.double(), 1, padding)
    expected_hw = shape[2:] if padding == "reflect" else (shape[2] - 2, shape[3] - 2)
    assert out.shape == (*shape[:2], *expected_hw)
    assert out.dtype == dtype and gx.dtype == dtype and gy.dtype == dtype
    atol, rtol = tolerance
    torch.testing.assert_close(out.double(), ref, atol=atol, rtol=rtol)
    torch.testing.assert_close(gx.double(), rx, atol=atol, rtol=rtol)
    torch.testing.assert_close(gy.double(), ry, atol=atol, rtol=rtol)


def test_identical_images_give_one(device, dtype, tolerance):
    x, _ = _inputs((2, 3, 11, 13), device, dtype)
    atol, rtol = tolerance
    torch.testing.assert_close(ssim(x, x), torch.ones_like(x), atol=atol, rtol=rtol)
    # d SSIM(x, y) / d y vanishes at y = x (a maximum).
    y = x.clone().requires_grad_()
    (gy,) = torch.autograd.grad(ssim(x, y).sum(), y)
    torch.testing.assert_close(gy, torch.zeros_like(gy), atol=10 * atol, rtol=0)


def test_reflect_padding_matches_explicit_pad():
    """reflect == valid SSIM of the reflection-padded images (an independent route to the border)."""
    x, y = _inputs((1, 2, 6, 7), "cpu", torch.float64, seed=3)
    pad = torch.nn.functional.pad
    expected = ssim(pad(x, (1, 1, 1, 1), mode="reflect"), pad(y, (1, 1, 1, 1), mode="reflect"), padding="valid")
    torch.testing.assert_close(ssim(x, y), expected, atol=1e-12, rtol=0)


def test_lower_for_unrelated_images():
    x, y = _inputs((1, 1, 32, 32), "cpu", torch.float64, seed=4)
    s = ssim(x, y)
    assert s.mean() < 0.5 and s.max() <= 1 + 1e-12 and s.min() >= -1 - 1e-12


@pytest.mark.parametrize("padding", ["reflect", "valid"])
@pytest.mark.parametrize("which", ["both", "x", "y"])
def test_gradcheck_kernel_cpu(padding, which):
    x, y = _inputs((1, 2, 5, 6), "cpu", torch.float64, seed=5)
    x.requires_grad_(which in ("both", "x"))
    y.requires_grad_(which in ("both", "y"))
    assert torch.autograd.gradcheck(lambda a, b: ssim(a, b, padding=padding), (x, y), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("padding", ["reflect", "valid"])
def test_gradcheck_reference(padding):
    x, y = _inputs((1, 1, 4, 5), "cpu", torch.float64, seed=6)
    x.requires_grad_()
    y.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: ssim_reference(a, b, padding=padding), (x, y), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("low", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_low_precision_computes_in_float32(device, low):
    x, y = _inputs((1, 3, 9, 10), device, torch.float64, seed=7)
    xl, yl = x.to(low), y.to(low)
    out = ssim(xl, yl)
    assert out.dtype == low
    # Against float64 on the rounded inputs the only error left is the final rounding to `low`.
    expected = ssim_reference(xl.double(), yl.double())
    atol, rtol = TOLERANCES[str(low).replace("torch.", "")]
    torch.testing.assert_close(out.double(), expected, atol=atol, rtol=rtol)


def test_bad_inputs_raise_clear_errors():
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\).*\(3, 8, 8\)"):
        ssim(x[0], x[0])
    with pytest.raises(ValueError, match=r"same shape.*\(1, 3, 8, 8\).*\(1, 3, 8, 7\)"):
        ssim(x, x[..., :7])
    with pytest.raises(TypeError, match="int64"):
        ssim(x.long(), x.long())
    with pytest.raises(TypeError, match="float32.*float64|share one dtype"):
        ssim(x, x.double())
    with pytest.raises(TypeError, match="list"):
        ssim([1.0], x)
    with pytest.raises(ValueError, match="padding.*'same'"):
        ssim(x, x, padding="same")
    with pytest.raises(ValueError, match=r"at least 3.*\(1, 3, 2, 8\)"):
        ssim(x[:, :, :2], x[:, :, :2], padding="valid")
    with pytest.raises(ValueError, match=r"at least 2.*\(1, 3, 1, 8\)"):
        ssim(x[:, :, :1], x[:, :, :1])


@pytest.mark.cuda
@pytest.mark.parametrize("padding", ["reflect", "valid"])
@pytest.mark.parametrize("shape", [(2, 3, 37, 29), (1, 1, 16, 16), (1, 2, 3, 3)], ids=lambda s: "x".join(map(str, s)))
def test_cuda_matches_cpu_reference(dtype, tolerance, shape, padding):
    x, y = _inputs(shape, "cuda", dtype, seed=8, non_contiguous=True)
    out, gx, gy = _forward_backward(ssim, x, y, 2, padding)
    assert out.is_cuda
    ref, rx, ry = _forward_backward(ssim_reference, x.double().cpu(), y.double().cpu(), 2, padding)
    atol, rtol = tolerance
    torch.testing.assert_close(out.double().cpu(), ref, atol=atol, rtol=rtol)
    torch.testing.assert_close(gx.double().cpu(), rx, atol=atol, rtol=rtol)
    torch.testing.assert_close(gy.double().cpu(), ry, atol=atol, rtol=rtol)


@pytest.mark.cuda
@pytest.mark.parametrize("padding", ["reflect", "valid"])
def test_gradcheck_cuda(padding):
    x, y = _inputs((1, 2, 5, 6), "cuda", torch.float64, seed=9)
    x.requires_grad_()
    y.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: ssim(a, b, padding=padding), (x, y), eps=1e-6, atol=1e-7)
