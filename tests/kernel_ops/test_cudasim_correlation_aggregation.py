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

WARP_CORRELATION = """
import importlib, sys
import numpy as np, torch
from numba import cuda
sys.path.insert(0, {tests!r})
from test_warp_correlation import make_case
from kernels import warp_correlation
sim = importlib.import_module("kernels.warp_correlation.cuda")
# In the simulator, CPU tensors stand in for CUDA ones: numpy views instead of device arrays.
sim.as_numba_array = lambda t: t.detach().numpy()
sim.numba_stream = lambda device: 0
sim.device_index = lambda device: 0
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
        consts, centres = sim._constants(dtype, "cpu", src.shape[2], src.shape[3], C // G, max(H, W))
        consts, centres = consts.numpy(), centres.numpy()
        r, s, dep = ref.detach().numpy().copy(), src.detach().numpy().copy(), depth.numpy().copy()
        corr = np.full((B, G, D, H, W), 7.0, dtype=r.dtype)
        valid = np.full((B, D, H, W), 9, dtype=np.uint8)
        n = B * D * H * W
        cuda.jit(sim.warp_correlation_fwd_kernel)[(n + 63) // 64, 64](r, s, proj, consts, centres, dep, corr, valid)
        assert np.array_equal(valid.astype(bool), expected_valid.numpy()), "valid"
        assert np.allclose(corr, expected.detach().numpy(), atol=tol, rtol=tol), np.abs(corr - expected.detach().numpy()).max()
        g = upstream.numpy().copy()
        gref = np.full(r.shape, 5.0, dtype=r.dtype)
        cuda.jit(sim.warp_correlation_bwd_ref_kernel)[(B * C * H * W + 63) // 64, 64](g, s, proj, consts, centres, dep, gref)
        assert np.allclose(gref, grad_ref.numpy(), atol=tol, rtol=tol), np.abs(gref - grad_ref.numpy()).max()
        gsrc = np.zeros(s.shape, dtype=s.dtype)
        cuda.jit(sim.warp_correlation_bwd_src_kernel)[(n + 63) // 64, 64](g, r, proj, consts, centres, dep, gsrc)
        assert np.allclose(gsrc, grad_src.numpy(), atol=tol, rtol=tol), np.abs(gsrc - grad_src.numpy()).max()
        # the host glue (allocation, argument order, zeroing), with CPU tensors standing in
        host_corr, host_valid, saved = sim.forward(ref, src, torch.from_numpy(proj), depth, G)
        assert torch.equal(host_valid, expected_valid)
        assert torch.allclose(host_corr, expected.detach(), atol=tol, rtol=tol)
        host_ref, host_src = sim.backward(saved, upstream, True, True)
        assert torch.allclose(host_ref, grad_ref, atol=tol, rtol=tol)
        assert torch.allclose(host_src, grad_src, atol=tol, rtol=tol)
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
# In the simulator, CPU tensors stand in for CUDA ones: numpy views instead of device arrays.
sim.as_numba_array = lambda t: t.detach().numpy()
sim.numba_stream = lambda device: 0
sim.device_index = lambda device: 0

for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 2e-5)):
    cost, offsets, weights = make_case(2, 3, 4, 5, 3, "cpu", dtype, seed=11)
    offsets[0, 0, 0, 0] = 40.0  # one sample far outside the map
    inputs = [t.clone().requires_grad_() for t in (cost, offsets, weights)]
    expected = adaptive_aggregation(*inputs)
    upstream = torch.randn(expected.shape, dtype=dtype, generator=torch.Generator().manual_seed(3))
    grads = torch.autograd.grad(expected, inputs, upstream)
    B, D, H, W = cost.shape
    consts = np.array([0.0, 1.0, 1e-8], dtype=cost.numpy().dtype)
    coords = np.arange(max(H, W) + 1).astype(cost.numpy().dtype)
    c, o, w = (t.numpy().copy() for t in (cost, offsets, weights))
    out = np.full(c.shape, 3.0, dtype=c.dtype)
    n = B * D * H * W
    cuda.jit(sim.adaptive_aggregation_fwd_kernel)[(n + 31) // 32, 32](c, o, w, consts, coords, out)
    assert np.allclose(out, expected.detach().numpy(), atol=tol, rtol=tol), np.abs(out - expected.detach().numpy()).max()
    g = upstream.numpy().copy()
    gc, go, gw = np.zeros_like(c), np.zeros_like(o), np.full(w.shape, 4.0, dtype=w.dtype)
    cuda.jit(sim.adaptive_aggregation_bwd_kernel)[(n + 31) // 32, 32](g, out, c, o, w, consts, coords, gc, go, gw)
    for name, got, want in zip(("cost", "offsets", "weights"), (gc, go, gw), grads):
        assert np.allclose(got, want.numpy(), atol=10 * tol, rtol=tol), (name, np.abs(got - want.numpy()).max())
    # the host glue (allocation, argument order, zeroing), with CPU tensors standing in
    host_out, saved = sim.forward(cost, offsets, weights, 1e-8)
    assert torch.allclose(host_out, expected.detach(), atol=tol, rtol=tol)
    for got, want in zip(sim.backward(saved, upstream, 1e-8, True, True, True), grads):
        assert torch.allclose(got, want, atol=10 * tol, rtol=tol)
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
    assert checked == 5
