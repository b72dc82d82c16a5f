"""kernels.adaptive_aggregation: fused CPU/CUDA kernels against the grid_sample reference."""

from __future__ import annotations

import pytest
import torch

from kernels import adaptive_aggregation
from kernels.adaptive_aggregation import adaptive_aggregation_reference


def make_case(B, D, H, W, K, device, dtype, *, spread=2.5, contiguous=True, seed=0):
    """Random costs, offsets off integer positions (some reaching outside the map), weights > 0."""
    gen = torch.Generator().manual_seed(seed)
    cost = torch.randn(B, D, H, W, generator=gen, dtype=torch.float64)
    offsets = spread * torch.randn(B, 2 * K, H, W, generator=gen, dtype=torch.float64)
    weights = 0.05 + torch.rand(B, K, D, H, W, generator=gen, dtype=torch.float64)
    cost, offsets, weights = (t.to(device=device, dtype=dtype) for t in (cost, offsets, weights))
    if not contiguous:  # same values, other strides
        cost = cost.transpose(-1, -2).contiguous().transpose(-1, -2)
        offsets = torch.cat([offsets, offsets], dim=1)[:, ::2]
        weights = weights.permute(0, 2, 1, 3, 4).contiguous().permute(0, 2, 1, 3, 4)
    return cost, offsets, weights


SHAPES = [  # B, D, H, W, K
    (1, 3, 5, 7, 9),
    (2, 4, 6, 11, 4),
    (3, 1, 1, 13, 9),
    (2, 5, 9, 2, 1),
    (1, 16, 5, 9, 3),  # the CPU backward compiled for the exact hypothesis count (16 and more)
    (2, 17, 4, 7, 2),
]


@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference(shape, contiguous, device, dtype, tolerance):
    B, D, H, W, K = shape
    inputs = make_case(B, D, H, W, K, device, dtype, contiguous=contiguous, seed=sum(shape))
    if not contiguous:
        assert not all(t.is_contiguous() for t in inputs)
    a = [t.clone().requires_grad_() for t in inputs]
    b = [t.clone().requires_grad_() for t in inputs]
    out = adaptive_aggregation(*a)
    expected = adaptive_aggregation_reference(*b)
    atol, rtol = tolerance
    assert out.shape == (B, D, H, W) and out.dtype == dtype
    torch.testing.assert_close(out, expected, atol=atol, rtol=rtol)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    upstream = upstream.to(device=device, dtype=dtype)
    grads = torch.autograd.grad(out, a, upstream)
    expected_grads = torch.autograd.grad(expected, b, upstream)
    for name, got, want in zip(("cost", "offsets", "weights"), grads, expected_grads):
        # gradients are sums of up to K*D terms of size ~1: scale the absolute tolerance with them
        torch.testing.assert_close(got, want, atol=atol * 10, rtol=rtol, msg=lambda m: f"grad {name}: {m}")


def test_zero_offsets_give_the_cost_and_samples_outside_are_zero(device, dtype, tolerance):
    atol, rtol = tolerance
    cost, offsets, weights = make_case(2, 3, 4, 5, 9, device, dtype)
    out = adaptive_aggregation(cost, torch.zeros_like(offsets), weights)
    torch.testing.assert_close(out, cost, atol=atol, rtol=rtol)
    # all neighbours far outside the map: zero padding gives 0 whatever the weights
    far = torch.full_like(offsets, 100.0)
    assert (adaptive_aggregation(cost, far, weights) == 0).all()
    # an offset of exactly one pixel reads the neighbour, zero past the border
    shift = torch.zeros_like(offsets)
    shift[:, 0::2] = 1.0
    out = adaptive_aggregation(cost, shift, weights)
    torch.testing.assert_close(out[..., :-1], cost[..., 1:], atol=atol, rtol=rtol)
    assert (out[..., -1] == 0).all()


def test_half_pixel_offset_interpolates(device, dtype, tolerance):
    atol, rtol = tolerance
    cost = torch.arange(12, dtype=dtype, device=device).view(1, 1, 3, 4)
    offsets = torch.tensor([0.5, 0.25], dtype=dtype, device=device).view(1, 2, 1, 1).expand(1, 2, 3, 4)
    weights = torch.ones(1, 1, 1, 3, 4, dtype=dtype, device=device)
    out = adaptive_aggregation(cost, offsets, weights, eps=0.0)
    expected = cost + 0.5 + 0.25 * 4  # linear ramp: +1 per column, +4 per row
    expected[..., -1] = torch.tensor([3, 7, 11], dtype=dtype, device=device) * 0.5 * 0.75 + torch.tensor(
        [7, 11, 0], dtype=dtype, device=device
    ) * 0.5 * 0.25  # last column: right neighbours outside (zero)
    expected[..., -1, :-1] = (cost[..., -1, :-1] + 0.5) * 0.75  # last row: the row below is outside
    torch.testing.assert_close(out, expected, atol=atol, rtol=rtol)


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_gradcheck(impl):
    fn = adaptive_aggregation if impl == "fused" else adaptive_aggregation_reference
    cost, offsets, weights = make_case(2, 2, 3, 4, 3, "cpu", torch.float64, spread=1.3, seed=5)
    inputs = tuple(t.requires_grad_() for t in (cost, offsets, weights))
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7)


def test_gradient_to_a_subset_of_inputs(device):
    cost, offsets, weights = make_case(1, 2, 4, 5, 3, device, torch.float64)
    full = [t.clone().requires_grad_() for t in (cost, offsets, weights)]
    expected = torch.autograd.grad(adaptive_aggregation(*full).sum(), full)
    for index in range(3):
        inputs = [t.clone() for t in (cost, offsets, weights)]
        inputs[index].requires_grad_()
        (grad,) = torch.autograd.grad(adaptive_aggregation(*inputs).sum(), inputs[index])
        torch.testing.assert_close(grad, expected[index])


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(cost=torch.zeros(1, 3, 4)), ValueError, r"cost \(B, D, H, W\), got \(1, 3, 4\)"),
        (dict(offsets=torch.zeros(1, 5, 4, 5)), ValueError, r"offsets \(1, 2K, 4, 5\) with K >= 1, got \(1, 5, 4, 5\)"),
        (dict(offsets=torch.zeros(1, 4, 4, 6)), ValueError, r"got \(1, 4, 4, 6\)"),
        (dict(weights=torch.ones(1, 3, 3, 4, 5)), ValueError, r"weights \(1, 2, 3, 4, 5\), got \(1, 3, 3, 4, 5\)"),
        (dict(weights=torch.ones(1, 2, 3, 4, 5, dtype=torch.float64)), TypeError, "weights has dtype torch.float64"),
        (dict(cost=torch.zeros(1, 3, 4, 5, dtype=torch.int64)), TypeError, "cost must be float32 or float64"),
        (dict(eps=-1.0), ValueError, "eps must be a float >= 0, got -1.0"),
        (dict(offsets="offsets"), TypeError, "offsets must be a torch.Tensor, got str"),
    ],
)
def test_rejects_bad_input(change, error, match):
    args = dict(cost=torch.zeros(1, 3, 4, 5), offsets=torch.zeros(1, 4, 4, 5), weights=torch.ones(1, 2, 3, 4, 5))
    args.update(change)
    with pytest.raises(error, match=match):
        adaptive_aggregation(**args)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
def test_cuda_matches_cpu_kernel(dtype_name):
    dtype = getattr(torch, dtype_name)
    inputs = make_case(2, 5, 9, 13, 9, "cpu", dtype, seed=4)
    a = [t.clone().requires_grad_() for t in inputs]
    c = [t.cuda().requires_grad_() for t in inputs]
    out, out_c = adaptive_aggregation(*a), adaptive_aggregation(*c)
    atol, rtol = {"float32": (1e-5, 1e-4), "float64": (1e-10, 1e-8)}[dtype_name]
    torch.testing.assert_close(out_c.cpu(), out, atol=atol, rtol=rtol)
    upstream = torch.randn_like(out)
    for got, want in zip(torch.autograd.grad(out_c, c, upstream.cuda()), torch.autograd.grad(out, a, upstream)):
        torch.testing.assert_close(got.cpu(), want, atol=atol * 10, rtol=rtol)


def test_cpu_gradients_do_not_depend_on_the_thread_count():
    """The CPU backward's tasks are a fixed number of row bands, each scattering into a cost
    gradient of its own, summed band by band (no per-thread partial gradients), so 1 and 2
    threads agree bit for bit."""
    import numba

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has a single thread here")
    inputs = make_case(1, 5, 16, 11, 9, torch.device("cpu"), torch.float32, seed=5)
    grads = []
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            leaves = [t.clone().requires_grad_() for t in inputs]
            out = adaptive_aggregation(*leaves)
            grads.append(torch.autograd.grad((out * out).sum(), leaves))
    finally:
        torch.set_num_threads(previous)
    for one, two in zip(*grads):
        assert torch.equal(one, two)
