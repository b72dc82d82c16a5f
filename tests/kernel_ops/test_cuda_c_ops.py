"""CUDA C kernels of ssim, adaptive_aggregation and spn_propagation (``kernels/<op>/kernels.cu``).

Without a GPU each op's ``cuda_c.py`` launch code runs its kernels in the CPU emulation of
``kernels/_cuda_c`` (the same source built by the system C++ compiler), compared with the torch
reference on tiny inputs: forwards in float64 and float32, backwards in float64 against autograd of
the reference, and a ``gradcheck`` of each public op with its CUDA backend swapped for ``cuda_c``
(so the autograd wiring is exercised as well). The NVRTC compiles for sm_80/sm_90 of these sources
are in test_cuda_c.py (every registered source). Tests marked ``cuda`` run the public ops with
``SELFMVS_CUDA_BACKEND=<op>=cuda_c`` on a GPU (skipped without one).
"""

from __future__ import annotations

import importlib

import pytest
import torch

from kernels import adaptive_aggregation, spn_propagate, ssim
from kernels.adaptive_aggregation import adaptive_aggregation_reference
from kernels.spn_propagation import spn_propagate_reference
from kernels.ssim import ssim_reference
from conftest import TOLERANCES  # tests/ is on sys.path (rootdir conftest, prepend import mode)

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@pytest.fixture(autouse=True)
def _needs_compiler():
    from kernels._cuda_c import emulate

    if emulate.compiler() is None:
        pytest.skip("no C++ compiler ($CXX, c++, g++, clang++): the CUDA C emulation cannot be built")


def _close(got, want, dtype, what, atol_scale=1.0):
    atol, rtol = TOLERANCES[str(dtype).replace("torch.", "")]
    torch.testing.assert_close(got, want, atol=atol * atol_scale, rtol=rtol, msg=lambda m: f"{what}: {m}")


def _rand(shape, seed, dtype=torch.float64, scale=1.0, shift=0.0):
    gen = torch.Generator().manual_seed(seed)
    return (scale * (torch.rand(shape, generator=gen, dtype=torch.float64) + shift)).to(dtype)


@pytest.fixture
def reverse_threads(monkeypatch):
    """Run every emulated grid last thread first."""
    from kernels._cuda_c import emulate

    def enable():
        monkeypatch.setattr(emulate, "REVERSE_THREAD_ORDER", True)

    return enable


# ---------------------------------------------------------------------------------------------
# ssim
# ---------------------------------------------------------------------------------------------

# (B, C, H, W): odd and non-square sizes, the smallest per padding; H = 4 makes input rows 1 and
# n - 2 neighbours, each read twice by a border window under reflection.
SSIM_CASES = [((2, 3, 5, 7), "reflect"), ((1, 2, 4, 3), "reflect"), ((1, 1, 2, 2), "reflect"),
              ((2, 1, 6, 5), "valid"), ((1, 1, 3, 3), "valid")]


def _ssim_inputs(shape, dtype, seed):
    return _rand(shape, seed, dtype), _rand(shape, seed + 1, dtype)


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("shape,padding", SSIM_CASES, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else v)
def test_ssim_forward_emulated(shape, padding, dtype_name):
    from kernels.ssim import cuda_c

    dtype = DTYPES[dtype_name]
    x, y = _ssim_inputs(shape, dtype, seed=sum(shape))
    B, C, H, W = shape
    out = cuda_c.ssim_forward(x.reshape(B * C, H, W), y.reshape(B * C, H, W), padding == "valid")
    want = ssim_reference(x, y, padding=padding)
    _close(out.reshape(want.shape), want, dtype, "ssim map")


@pytest.mark.parametrize("shape,padding", SSIM_CASES, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else v)
def test_ssim_backward_emulated(shape, padding):
    from kernels.ssim import cuda_c

    dtype = torch.float64
    x, y = _ssim_inputs(shape, dtype, seed=3 * sum(shape))
    xl, yl = x.clone().requires_grad_(), y.clone().requires_grad_()
    want = ssim_reference(xl, yl, padding=padding)
    grad_out = _rand(want.shape, 7, dtype, scale=2.0, shift=-0.5)
    want_x, want_y = torch.autograd.grad(want, (xl, yl), grad_out)
    B, C, H, W = shape
    grad_x, grad_y = cuda_c.ssim_backward(x.reshape(B * C, H, W), y.reshape(B * C, H, W),
                                          grad_out.reshape(B * C, *want.shape[2:]), padding == "valid")
    _close(grad_x.reshape(shape), want_x, dtype, "grad x")
    _close(grad_y.reshape(shape), want_y, dtype, "grad y")


def test_ssim_backward_is_a_gather(reverse_threads):
    """No thread reads what another writes: last thread first gives the same bits."""
    from kernels.ssim import cuda_c

    x, y = _ssim_inputs((3, 6, 5), torch.float32, seed=11)
    grad_out = _rand((3, 6, 5), 12, torch.float32)
    first = cuda_c.ssim_backward(x, y, grad_out, False)
    reverse_threads()
    second = cuda_c.ssim_backward(x, y, grad_out, False)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("padding", ["reflect", "valid"])
def test_ssim_gradcheck_through_the_public_op(monkeypatch, padding):
    op = importlib.import_module("kernels.ssim")  # the package, not the function of that name
    from kernels.ssim import cuda_c

    monkeypatch.setattr(op, "_backend_module", lambda device: cuda_c)
    x, y = _ssim_inputs((1, 2, 4, 5), torch.float64, seed=5)
    x.requires_grad_()
    y.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: ssim(a, b, padding=padding), (x, y))


# ---------------------------------------------------------------------------------------------
# spn_propagation
# ---------------------------------------------------------------------------------------------

SPN_SHAPES = [(2, 5, 6), (1, 1, 7), (1, 4, 1), (1, 2, 2)]


def _spn_inputs(shape, dtype, seed):
    batch, height, width = shape
    depth = _rand((batch, 1, height, width), seed, dtype)
    raw = torch.tanh(_rand((batch, 8, height, width), seed + 1, scale=4.0, shift=-0.5))
    affinity = raw / raw.abs().sum(dim=1, keepdim=True).clamp(min=1.0)  # signed, sum_k |a_k| <= 1
    return depth, affinity.to(dtype)


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("steps", [0, 1, 3])
@pytest.mark.parametrize("shape", SPN_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_spn_forward_emulated(shape, steps, dtype_name):
    from kernels.spn_propagation import cuda_c

    dtype = DTYPES[dtype_name]
    depth, affinity = _spn_inputs(shape, dtype, seed=sum(shape) + steps)
    want = spn_propagate_reference(depth.double(), affinity.double(), steps=steps)
    for keep in (False, True):
        out, history = cuda_c.spn_forward(depth.reshape(shape), affinity, steps, keep)
        assert (history is not None) == (keep and steps > 0)
        _close(out.reshape(want.shape), want.to(dtype), dtype, f"spn output (keep_history={keep})")


@pytest.mark.parametrize("steps", [0, 1, 3])
@pytest.mark.parametrize("shape", SPN_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_spn_backward_emulated(shape, steps):
    from kernels.spn_propagation import cuda_c

    dtype = torch.float64
    depth, affinity = _spn_inputs(shape, dtype, seed=2 * sum(shape) + steps)
    dl, al = depth.clone().requires_grad_(), affinity.clone().requires_grad_()
    want = spn_propagate_reference(dl, al, steps=steps)
    grad_out = _rand(want.shape, 9, dtype, shift=-0.5)
    want_depth, want_affinity = torch.autograd.grad(want, (dl, al), grad_out, allow_unused=True)
    _, history = cuda_c.spn_forward(depth.reshape(shape), affinity, steps, True)
    grad_depth, grad_affinity = cuda_c.spn_backward(history, affinity, grad_out.reshape(shape).contiguous())
    _close(grad_depth.reshape(want.shape), want_depth, dtype, "grad depth")
    _close(grad_affinity, want_affinity if want_affinity is not None else torch.zeros_like(affinity), dtype,
           "grad affinity")


def test_spn_backward_is_a_gather(reverse_threads):
    from kernels.spn_propagation import cuda_c

    shape = (2, 5, 4)
    depth, affinity = _spn_inputs(shape, torch.float32, seed=21)
    grad_out = _rand(shape, 22, torch.float32)
    _, history = cuda_c.spn_forward(depth.reshape(shape), affinity, 2, True)
    first = cuda_c.spn_backward(history, affinity, grad_out)
    reverse_threads()
    second = cuda_c.spn_backward(history, affinity, grad_out)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_spn_gradcheck_through_the_public_op(monkeypatch):
    op = importlib.import_module("kernels.spn_propagation")  # the package, not the function of that name
    from kernels.spn_propagation import cuda_c

    monkeypatch.setattr(op, "_backend_module", lambda device: cuda_c)
    depth, affinity = _spn_inputs((1, 3, 4), torch.float64, seed=31)
    depth.requires_grad_()
    affinity.requires_grad_()
    assert torch.autograd.gradcheck(lambda d, a: spn_propagate(d, a, steps=2), (depth, affinity))


# ---------------------------------------------------------------------------------------------
# adaptive_aggregation
# ---------------------------------------------------------------------------------------------

AA_SHAPES = [(1, 3, 5, 7, 9), (2, 2, 4, 3, 4), (1, 2, 1, 6, 2)]  # B, D, H, W, K


def _aa_inputs(shape, dtype, seed):
    """Costs, offsets off integer positions (many samples partly or wholly outside), weights > 0."""
    B, D, H, W, K = shape
    gen = torch.Generator().manual_seed(seed)
    cost = torch.randn(B, D, H, W, generator=gen, dtype=torch.float64)
    offsets = 2.5 * torch.randn(B, 2 * K, H, W, generator=gen, dtype=torch.float64)
    weights = 0.05 + torch.rand(B, K, D, H, W, generator=gen, dtype=torch.float64)
    return tuple(t.to(dtype) for t in (cost, offsets, weights))


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("shape", AA_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_adaptive_aggregation_forward_emulated(shape, dtype_name):
    from kernels.adaptive_aggregation import cuda_c

    dtype = DTYPES[dtype_name]
    cost, offsets, weights = _aa_inputs(shape, dtype, seed=sum(shape))
    out, saved = cuda_c.forward(cost, offsets, weights, 1e-8)
    want = adaptive_aggregation_reference(cost.double(), offsets.double(), weights.double(), 1e-8)
    _close(out, want.to(dtype), dtype, "aggregated cost")
    assert saved[-1] is out


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("shape", AA_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_adaptive_aggregation_backward_emulated(shape, deterministic):
    from kernels.adaptive_aggregation import cuda_c

    dtype = torch.float64
    inputs = _aa_inputs(shape, dtype, seed=2 * sum(shape))
    leaves = [t.clone().requires_grad_() for t in inputs]
    want = adaptive_aggregation_reference(*leaves, 1e-3)
    grad_out = torch.randn(want.shape, generator=torch.Generator().manual_seed(4), dtype=dtype)
    wanted = torch.autograd.grad(want, leaves, grad_out)
    _, saved = cuda_c.forward(*inputs, 1e-3)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        got = cuda_c.backward(saved, grad_out, 1e-3, True, True, True)
        only_cost = cuda_c.backward(saved, grad_out, 1e-3, True, False, False)
        no_cost = cuda_c.backward(saved, grad_out, 1e-3, False, True, True)
    finally:
        torch.use_deterministic_algorithms(previous)
    for name, g, w in zip(("cost", "offsets", "weights"), got, wanted):
        _close(g, w, dtype, f"grad {name}", atol_scale=10)  # sums of up to K*D terms of size ~1
    assert only_cost[1] is None and only_cost[2] is None and torch.equal(only_cost[0], got[0])
    assert no_cost[0] is None and torch.equal(no_cost[1], got[1]) and torch.equal(no_cost[2], got[2])


def test_adaptive_aggregation_offset_gradients_are_a_gather(reverse_threads):
    """The offset/weight gradients do not depend on thread order (one writer per cell); the atomic
    cost gradient may differ in its last bits, and agrees with the deterministic one closely."""
    from kernels.adaptive_aggregation import cuda_c

    inputs = _aa_inputs((2, 3, 4, 5, 4), torch.float32, seed=41)
    grad_out = torch.randn((2, 3, 4, 5), generator=torch.Generator().manual_seed(42))
    _, saved = cuda_c.forward(*inputs, 1e-8)
    first = cuda_c.backward(saved, grad_out, 1e-8, True, True, True)
    reverse_threads()
    second = cuda_c.backward(saved, grad_out, 1e-8, True, True, True)
    assert torch.equal(first[1], second[1]) and torch.equal(first[2], second[2])
    _close(second[0], first[0], torch.float32, "atomic cost gradient, reversed thread order")


def test_adaptive_aggregation_gradcheck_through_the_public_op(monkeypatch):
    op = importlib.import_module("kernels.adaptive_aggregation")  # the package, not the function of that name
    from kernels.adaptive_aggregation import cuda_c

    monkeypatch.setattr(op, "_backend", lambda device: cuda_c)
    cost, offsets, weights = (t.requires_grad_() for t in _aa_inputs((1, 2, 3, 4, 2), torch.float64, seed=51))
    assert torch.autograd.gradcheck(lambda c, o, w: adaptive_aggregation(c, o, w, 1e-3), (cost, offsets, weights))


def test_launchers_refuse_sizes_beyond_32_bit_indices():
    """Sizes are checked before any allocation or launch (meta tensors: no memory)."""
    from kernels.adaptive_aggregation import cuda_c as aa_c
    from kernels.ssim import cuda_c as ssim_c

    big = torch.empty((2, 2**15, 2**15), device="meta")
    with pytest.raises(ValueError, match="32-bit"):
        ssim_c.ssim_forward(big, big, False)
    cost = torch.empty((1, 2**11, 2**10, 2**10), device="meta")
    offsets = torch.empty((1, 2, 2**10, 2**10), device="meta")
    weights = torch.empty((1, 1, 2**11, 2**10, 2**10), device="meta")
    with pytest.raises(ValueError, match="32-bit"):
        aa_c.forward(cost, offsets, weights, 1e-8)


# ---------------------------------------------------------------------------------------------
# On a GPU: the public ops with the cuda_c backend
# ---------------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_cuda_ssim_cuda_c_matches_reference_and_numba(monkeypatch, dtype_name):
    dtype = DTYPES[dtype_name]
    x, y = (t.cuda().requires_grad_() for t in _ssim_inputs((2, 3, 37, 45), dtype, seed=61))
    grad_out = _rand((2, 3, 37, 45), 62, dtype).cuda()
    results = {}
    for backend in ("numba", "cuda_c"):
        monkeypatch.setenv("SELFMVS_CUDA_BACKEND", f"ssim={backend}")
        out = ssim(x, y)
        results[backend] = (out, *torch.autograd.grad(out, (x, y), grad_out))
    xr, yr = x.detach().double().requires_grad_(), y.detach().double().requires_grad_()
    want = ssim_reference(xr, yr)
    wanted = (want, *torch.autograd.grad(want, (xr, yr), grad_out.double()))
    for name, got, numba_value, w in zip(("map", "grad x", "grad y"), results["cuda_c"], results["numba"], wanted):
        _close(got, w.to(dtype), dtype, f"cuda_c {name}")
        _close(got, numba_value, dtype, f"cuda_c vs numba {name}")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_cuda_spn_cuda_c_matches_reference(monkeypatch, dtype_name):
    dtype = DTYPES[dtype_name]
    monkeypatch.setenv("SELFMVS_CUDA_BACKEND", "spn_propagation=cuda_c")
    depth, affinity = _spn_inputs((2, 33, 47), dtype, seed=71)
    d, a = depth.cuda().requires_grad_(), affinity.cuda().requires_grad_()
    out = spn_propagate(d, a, steps=4)
    grad_out = _rand(out.shape, 72, dtype).cuda()
    got = (out, *torch.autograd.grad(out, (d, a), grad_out))
    dr, ar = depth.double().requires_grad_(), affinity.double().requires_grad_()
    want = spn_propagate_reference(dr, ar, steps=4)
    wanted = (want, *torch.autograd.grad(want, (dr, ar), grad_out.double().cpu()))
    for name, g, w in zip(("output", "grad depth", "grad affinity"), got, wanted):
        _close(g.cpu(), w.to(dtype), dtype, name)


@pytest.mark.cuda
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
def test_cuda_adaptive_aggregation_cuda_c_matches_reference(monkeypatch, deterministic):
    dtype = torch.float64
    monkeypatch.setenv("SELFMVS_CUDA_BACKEND", "adaptive_aggregation=cuda_c")
    inputs = _aa_inputs((2, 8, 19, 23, 9), dtype, seed=81)
    leaves = [t.cuda().requires_grad_() for t in inputs]
    grad_out = torch.randn((2, 8, 19, 23), generator=torch.Generator().manual_seed(82), dtype=dtype).cuda()
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        out = adaptive_aggregation(*leaves)
        got = (out, *torch.autograd.grad(out, leaves, grad_out))
        again = torch.autograd.grad(adaptive_aggregation(*leaves), leaves, grad_out)
    finally:
        torch.use_deterministic_algorithms(previous)
    refs = [t.clone().requires_grad_() for t in inputs]
    want = adaptive_aggregation_reference(*refs)
    wanted = (want, *torch.autograd.grad(want, refs, grad_out.cpu()))
    for name, g, w in zip(("output", "grad cost", "grad offsets", "grad weights"), got, wanted):
        _close(g.cpu(), w, dtype, name, atol_scale=10)
    if deterministic:
        assert all(torch.equal(a, b) for a, b in zip(got[1:], again))
