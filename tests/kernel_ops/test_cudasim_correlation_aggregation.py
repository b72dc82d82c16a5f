"""numba.cuda kernels of warp_correlation and adaptive_aggregation in numba's CUDA simulator.

Each case runs in a subprocess with ``NUMBA_ENABLE_CUDASIM=1`` set before numba.cuda is imported
(the simulator cannot be switched on in a process that has already imported it). The simulated
kernels get numpy inputs and must reproduce the CPU kernels (checked against the reference by
the other test files). Cases are small: every simulated thread is a Python thread.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Shared by both scripts: stand-ins for the CUDA plumbing that record what the host glue asks for,
# and a guard that makes every host-device synchronisation or per-call host-to-device copy raise.
HOST_GLUE = """
import contextlib
LAUNCHES = []  # (event, detail) in order
@contextlib.contextmanager
def fake_device(device):
    LAUNCHES.append(("enter", device))
    yield
    LAUNCHES.append(("exit", device))
def fake_stream(device):
    LAUNCHES.append(("stream", device))
    return 0
def recording(sim):
    real = sim._kernel
    def kernel(name, dtype, device):
        launcher = real(name, dtype, device)
        class Launch:
            def __getitem__(self, config):
                def run(*args):
                    LAUNCHES.append(("launch", name))
                    return launcher[config](*args)
                return run
        return Launch()
    return kernel
def patch(sim):
    # In the simulator, CPU tensors stand in for CUDA ones: numpy views instead of device arrays.
    sim.as_numba_array = lambda t: t.detach().numpy()
    sim.numba_stream = fake_stream
    sim.numba_device = fake_device
    sim.device_index = lambda device: 0
    sim._kernel = recording(sim)
def check_launches(device):
    # every launch inside the device context, with the stream taken there too
    depth, stream_seen = 0, False
    for event, detail in LAUNCHES:
        if event == "enter":
            assert detail == device, detail
            depth, stream_seen = depth + 1, False
        elif event == "exit":
            depth -= 1
        elif event == "stream":
            assert depth == 1 and detail == device, (event, detail)
            stream_seen = True
        else:
            assert depth == 1 and stream_seen, ("launch outside the device context", detail)
    assert depth == 0 and any(e == "launch" for e, _ in LAUNCHES)
    names = [d for e, d in LAUNCHES if e == "launch"]
    LAUNCHES.clear()
    return names
class Synchronises(Exception):
    pass
@contextlib.contextmanager
def no_sync():
    def refuse(what):
        def call(*args, **kwargs):
            raise Synchronises(what)
        return call
    saved = [(torch, "tensor", torch.tensor), (torch.linalg, "inv", torch.linalg.inv)]
    saved += [(torch.Tensor, name, getattr(torch.Tensor, name)) for name in ("item", "tolist", "cpu", "__bool__")]
    for owner, name, _ in saved:
        setattr(owner, name, refuse(name))
    try:
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)
"""

WARP_CORRELATION = """
import importlib, sys
import numpy as np, torch
from numba import cuda
sys.path.insert(0, {tests!r})
from test_warp_correlation import make_case
from kernels import warp_correlation
sim = importlib.import_module("kernels.warp_correlation.cuda")
""" + HOST_GLUE + """
patch(sim)
from kernels.warp_correlation.reference import projection_matrices

for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 2e-5)):
    for behind in (False, True):
        ref, src, ref_K, src_K, pose, depth, G = make_case(2, 4, 3, 5, 4, 6, 3, 2, "cpu", dtype, behind=behind, seed=7)
        ref.requires_grad_(); src.requires_grad_()
        expected, expected_valid = warp_correlation(ref, src, ref_K, src_K, pose, depth, G)
        upstream = torch.randn(expected.shape, dtype=dtype, generator=torch.Generator().manual_seed(2))
        grad_ref, grad_src = torch.autograd.grad(expected, (ref, src), upstream)
        B, C, H, W = ref.shape
        D = depth.shape[1]
        M, T = projection_matrices(ref_K, src_K, pose, dtype)
        proj = torch.cat((M.reshape(-1, 9), T), 1).contiguous().numpy()
        scalars = sim._scalars(dtype, src.shape[2], src.shape[3], C // G)
        assert all(type(v) is type(scalars[0]) and v.dtype == ref.detach().numpy().dtype for v in scalars)
        centres = (np.arange(max(H, W)) + 0.5).astype(ref.detach().numpy().dtype)
        r, s, dep = ref.detach().numpy().copy(), src.detach().numpy().copy(), depth.numpy().copy()
        corr = np.full((B, G, D, H, W), 7.0, dtype=r.dtype)
        valid = np.full((B, D, H, W), 9, dtype=np.uint8)
        n = B * D * H * W
        cuda.jit(sim.warp_correlation_fwd_kernel)[(n + 63) // 64, 64](r, s, proj, centres, dep, corr, valid, *scalars)
        assert np.array_equal(valid.astype(bool), expected_valid.numpy()), "valid"
        assert np.allclose(corr, expected.detach().numpy(), atol=tol, rtol=tol), np.abs(corr - expected.detach().numpy()).max()
        g = upstream.numpy().copy()
        gref = np.full(r.shape, 5.0, dtype=r.dtype)
        cuda.jit(sim.warp_correlation_bwd_ref_kernel)[(B * C * H * W + 63) // 64, 64](g, s, proj, centres, dep, gref, *scalars)
        assert np.allclose(gref, grad_ref.numpy(), atol=tol, rtol=tol), np.abs(gref - grad_ref.numpy()).max()
        gsrc = np.zeros(s.shape, dtype=s.dtype)
        cuda.jit(sim.warp_correlation_bwd_src_kernel)[(n + 63) // 64, 64](g, r, proj, centres, dep, gsrc, *scalars)
        assert np.allclose(gsrc, grad_src.numpy(), atol=tol, rtol=tol), np.abs(gsrc - grad_src.numpy()).max()
        # the host glue (allocation, argument order, zeroing, device and stream), with CPU tensors
        # standing in; it neither synchronises nor copies host numbers to the device
        with no_sync():
            host_corr, host_valid, saved = sim.forward(ref, src, torch.from_numpy(proj), depth, G)
            host_ref, host_src = sim.backward(saved, upstream, True, True)
        assert check_launches(ref.device) == [
            "warp_correlation_fwd_kernel", "warp_correlation_bwd_ref_kernel", "warp_correlation_bwd_src_kernel"
        ]
        assert torch.equal(host_valid, expected_valid)
        assert torch.allclose(host_corr, expected.detach(), atol=tol, rtol=tol)
        assert torch.allclose(host_ref, grad_ref, atol=tol, rtol=tol)
        assert torch.allclose(host_src, grad_src, atol=tol, rtol=tol)
        # deterministic algorithms on: no atomic kernel runs, the gradients agree, and a repeated
        # backward gives the very same bits
        torch.use_deterministic_algorithms(True)
        try:
            with no_sync():
                first = sim.backward(saved, upstream, True, True)
                again = sim.backward(saved, upstream, True, True)
        finally:
            torch.use_deterministic_algorithms(False)
        names = check_launches(ref.device)
        assert names == 2 * ["warp_correlation_bwd_ref_kernel", "warp_correlation_bwd_src_corners_kernel"], names
        for got, repeat, want in zip(first, again, (grad_ref, grad_src)):
            assert torch.equal(got, repeat)
            assert torch.allclose(got, want, atol=tol, rtol=tol), (got - want).abs().max()
print("ok")
"""

ADAPTIVE_AGGREGATION = """
import importlib, sys
import numpy as np, torch
from numba import cuda
sys.path.insert(0, {tests!r})
from test_adaptive_aggregation import make_case
from kernels import adaptive_aggregation
sim = importlib.import_module("kernels.adaptive_aggregation.cuda")
""" + HOST_GLUE + """
patch(sim)

for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 2e-5)):
    cost, offsets, weights = make_case(2, 3, 4, 5, 3, "cpu", dtype, seed=11)
    offsets[0, 0, 0, 0] = 40.0  # one sample far outside the map
    offsets[1, 3, 2, 1] = -0.6  # one sample with corners on both sides of the top border
    inputs = [t.clone().requires_grad_() for t in (cost, offsets, weights)]
    expected = adaptive_aggregation(*inputs)
    upstream = torch.randn(expected.shape, dtype=dtype, generator=torch.Generator().manual_seed(3))
    grads = torch.autograd.grad(expected, inputs, upstream)
    B, D, H, W = cost.shape
    K = weights.shape[1]
    scalars = sim._scalars(dtype, 1e-8)
    coords = np.arange(max(H, W) + 1).astype(cost.numpy().dtype)
    c, o, w = (t.numpy().copy() for t in (cost, offsets, weights))
    out = np.full(c.shape, 3.0, dtype=c.dtype)
    n = B * D * H * W
    cuda.jit(sim.adaptive_aggregation_fwd_kernel)[(n + 31) // 32, 32](c, o, w, coords, out, *scalars)
    assert np.allclose(out, expected.detach().numpy(), atol=tol, rtol=tol), np.abs(out - expected.detach().numpy()).max()
    g = upstream.numpy().copy()
    gc, go, gw = np.zeros_like(c), np.full(o.shape, 6.0, dtype=o.dtype), np.full(w.shape, 4.0, dtype=w.dtype)
    cuda.jit(sim.adaptive_aggregation_bwd_offsets_kernel)[(B * H * W + 31) // 32, 32](g, out, c, o, w, coords, go, gw, *scalars)
    cuda.jit(sim.adaptive_aggregation_bwd_cost_kernel)[(n + 31) // 32, 32](g, o, w, coords, gc, *scalars)
    for name, got, want in zip(("cost", "offsets", "weights"), (gc, go, gw), grads):
        assert np.allclose(got, want.numpy(), atol=10 * tol, rtol=tol), (name, np.abs(got - want.numpy()).max())
    terms = np.full((B, D, H, W, 4 * K), 8.0, dtype=c.dtype)
    index = np.full((B, D, H, W, 4 * K), -1, dtype=np.int64)
    cuda.jit(sim.adaptive_aggregation_bwd_cost_terms_kernel)[(n + 31) // 32, 32](g, o, w, coords, terms, index, *scalars)
    assert index.min() >= 0 and index.max() <= n
    summed = np.bincount(index.ravel(), weights=terms.ravel(), minlength=n + 1)[:n].reshape(c.shape)
    assert np.allclose(summed, grads[0].numpy(), atol=10 * tol, rtol=tol), np.abs(summed - grads[0].numpy()).max()
    # the host glue (allocation, argument order, zeroing, device and stream), with CPU tensors
    # standing in; it neither synchronises nor copies host numbers to the device
    with no_sync():
        host_out, saved = sim.forward(cost, offsets, weights, 1e-8)
        host_grads = sim.backward(saved, upstream, 1e-8, True, True, True)
    assert check_launches(cost.device) == [
        "adaptive_aggregation_fwd_kernel", "adaptive_aggregation_bwd_offsets_kernel", "adaptive_aggregation_bwd_cost_kernel"
    ]
    assert torch.allclose(host_out, expected.detach(), atol=tol, rtol=tol)
    for got, want in zip(host_grads, grads):
        assert torch.allclose(got, want, atol=10 * tol, rtol=tol)
    # deterministic algorithms on: no atomic kernel runs, the gradients agree, and a repeated
    # backward gives the very same bits
    torch.use_deterministic_algorithms(True)
    try:
        with no_sync():
            first = sim.backward(saved, upstream, 1e-8, True, True, True)
            again = sim.backward(saved, upstream, 1e-8, True, True, True)
    finally:
        torch.use_deterministic_algorithms(False)
    names = check_launches(cost.device)
    assert names == 2 * ["adaptive_aggregation_bwd_offsets_kernel", "adaptive_aggregation_bwd_cost_terms_kernel"], names
    for got, repeat, want in zip(first, again, grads):
        assert torch.equal(got, repeat)
        assert torch.allclose(got, want, atol=10 * tol, rtol=tol)
    # only some gradients asked for
    for need in ((True, False, False), (False, True, False), (False, False, True)):
        partial = sim.backward(saved, upstream, 1e-8, *need)
        for wanted, got, want in zip(need, partial, grads):
            assert (got is None) != wanted and (got is None or torch.allclose(got, want, atol=10 * tol, rtol=tol))
    LAUNCHES.clear()
print("ok")
"""


def run_simulated(script: str) -> None:
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    code = textwrap.dedent(script).format(tests=str(REPO / "tests" / "kernel_ops"))
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=300
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout[-2000:] + proc.stderr[-4000:]


@pytest.mark.parametrize("script", [WARP_CORRELATION, ADAPTIVE_AGGREGATION], ids=["warp_correlation", "adaptive_aggregation"])
def test_simulated_kernels_match_cpu(script):
    run_simulated(script)


def test_registry_signatures_match_the_kernels():
    """The compile-check registry must compile the signatures the modules launch with."""
    import importlib

    from kernels._backend import KERNEL_REGISTRY

    checked = 0
    for spec in KERNEL_REGISTRY:
        if spec.module in ("kernels.warp_correlation.cuda", "kernels.adaptive_aggregation.cuda"):
            module = importlib.import_module(spec.module)  # imports numba.cuda; queries no GPU
            expected = tuple(module._signature(module.SIGNATURES[spec.attr], t) for t in ("float32", "float64"))
            assert spec.signatures == expected, spec.name
            checked += 1
    assert checked == 8
