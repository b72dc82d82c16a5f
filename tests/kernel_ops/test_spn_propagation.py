"""kernels.spn_propagation against its plain-torch reference, plus properties that hold without it.

The CUDA kernels run here under numba's CUDA simulator on tiny cases: ``NUMBA_ENABLE_CUDASIM=1``
must be set before ``numba.cuda`` is first imported (and turns every later CUDA use of the process
into simulation), so that case runs this file as a script in a fresh interpreter
(``python test_spn_propagation.py cudasim``), which prints its error figures as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from kernels.spn_propagation import NEIGHBOUR_OFFSETS, spn_propagate, spn_propagate_reference

# Odd sizes, single rows and columns, sizes that cross the CUDA block (256 threads), B > 1.
SHAPES = [(2, 7, 9), (1, 1, 6), (1, 5, 1), (3, 17, 19), (1, 2, 2), (1, 1, 1)]


def normalised_affinity(raw: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Signed affinities with sum_k |a_k| <= 1: tanh(raw) / max(1, sum_k |tanh(raw)|)."""
    t = torch.tanh(raw)
    return t / t.abs().sum(dim=dim, keepdim=True).clamp(min=1.0)


def _inputs(shape, device, dtype, seed=0, non_contiguous=False, scale=2.0):
    batch, height, width = shape
    gen = torch.Generator().manual_seed(seed)
    if non_contiguous:
        # depth stored (B, 1, W, H) and transposed; affinity stored (B, H, W, 8) and permuted.
        depth = torch.rand((batch, 1, width, height), generator=gen, dtype=torch.float64).transpose(-1, -2)
        raw = scale * torch.randn((batch, height, width, 8), generator=gen, dtype=torch.float64)
        affinity = normalised_affinity(raw, dim=3).permute(0, 3, 1, 2)
    else:
        depth = torch.rand((batch, 1, height, width), generator=gen, dtype=torch.float64)
        raw = scale * torch.randn((batch, 8, height, width), generator=gen, dtype=torch.float64)
        affinity = normalised_affinity(raw)
    return depth.to(device=device, dtype=dtype), affinity.to(device=device, dtype=dtype)


def _forward_backward(fn, depth, affinity, steps, grad_seed):
    depth = depth.detach().requires_grad_()
    affinity = affinity.detach().requires_grad_()
    out = fn(depth, affinity, steps=steps)
    gen = torch.Generator().manual_seed(grad_seed)
    grad = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out)
    grad_depth, grad_affinity = torch.autograd.grad(out, (depth, affinity), grad)
    return out, grad_depth, grad_affinity


@pytest.mark.parametrize("steps", [1, 7])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("non_contiguous", [False, True], ids=["contig", "noncontig"])
def test_matches_reference(device, dtype, tolerance, shape, steps, non_contiguous):
    depth, affinity = _inputs(shape, device, dtype, non_contiguous=non_contiguous)
    if min(shape[1:]) > 1:
        assert depth.is_contiguous() != non_contiguous and affinity.is_contiguous() != non_contiguous
    out, grad_depth, grad_affinity = _forward_backward(spn_propagate, depth, affinity, steps, 1)
    # The reference in float64 is the ground truth for every dtype.
    ref, ref_depth, ref_affinity = _forward_backward(
        spn_propagate_reference, depth.double().cpu(), affinity.double().cpu(), steps, 1
    )
    assert out.shape == depth.shape and grad_affinity.shape == affinity.shape
    assert out.dtype == dtype and grad_depth.dtype == dtype and grad_affinity.dtype == dtype
    atol, rtol = tolerance
    torch.testing.assert_close(out.double().cpu(), ref, atol=atol, rtol=rtol)
    torch.testing.assert_close(grad_depth.double().cpu(), ref_depth, atol=atol, rtol=rtol)
    torch.testing.assert_close(grad_affinity.double().cpu(), ref_affinity, atol=atol, rtol=rtol)


def test_float32_error_within_twice_the_reference_float32_error():
    """flash-attention's rule: the kernel's float32 error against float64 is at most twice that
    of the plain torch float32 path (here 24 steps at the network's default-like depth)."""
    depth, affinity = _inputs((2, 33, 41), "cpu", torch.float64, seed=11)
    exact, exact_depth, exact_affinity = _forward_backward(spn_propagate_reference, depth, affinity, 24, 3)
    kernel = _forward_backward(spn_propagate, depth.float(), affinity.float(), 24, 3)
    plain = _forward_backward(spn_propagate_reference, depth.float(), affinity.float(), 24, 3)
    for got, base, truth in zip(kernel, plain, (exact, exact_depth, exact_affinity)):
        kernel_error = (got.double() - truth).abs().max().item()
        plain_error = (base.double() - truth).abs().max().item()
        assert kernel_error <= 2 * plain_error + 1e-7, (kernel_error, plain_error)


@pytest.mark.parametrize("which", ["both", "depth", "affinity"])
def test_gradcheck_kernel_cpu(which):
    depth, affinity = _inputs((2, 4, 5), "cpu", torch.float64, seed=5)
    depth.requires_grad_(which in ("both", "depth"))
    affinity.requires_grad_(which in ("both", "affinity"))
    assert torch.autograd.gradcheck(lambda d, a: spn_propagate(d, a, steps=3), (depth, affinity), eps=1e-6, atol=1e-8)


def test_gradcheck_reference():
    depth, affinity = _inputs((1, 3, 4), "cpu", torch.float64, seed=6)
    depth.requires_grad_()
    affinity.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda d, a: spn_propagate_reference(d, a, steps=2), (depth, affinity), eps=1e-6, atol=1e-8
    )


def test_zero_affinities_leave_depth_unchanged(device, dtype):
    depth, _ = _inputs((2, 9, 11), device, dtype, seed=2)
    zero = torch.zeros((2, 8, 9, 11), device=device, dtype=dtype)
    for fn in (spn_propagate, spn_propagate_reference):
        out, grad_depth, grad_affinity = _forward_backward(fn, depth, zero, 5, 4)
        assert torch.equal(out, depth)
        upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64).to(out)
        assert torch.equal(grad_depth, upstream)  # identity map: the gradient passes unchanged
        assert grad_affinity.abs().sum() > 0  # but the affinities still learn from it


def test_zero_steps_is_the_identity():
    depth, affinity = _inputs((1, 5, 6), "cpu", torch.float64, seed=3)
    out, grad_depth, grad_affinity = _forward_backward(spn_propagate, depth, affinity, 0, 4)
    assert torch.equal(out, depth)
    assert torch.equal(grad_affinity, torch.zeros_like(affinity))
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert torch.equal(grad_depth, upstream)


def test_maximum_principle_under_nonnegative_normalised_affinities(dtype):
    """a_k >= 0 and sum_k a_k <= 1: each step is a convex combination, so max never grows and
    min never shrinks, step after step (up to one rounding per step)."""
    gen = torch.Generator().manual_seed(7)
    depth = (torch.rand((2, 1, 23, 29), generator=gen, dtype=torch.float64) * 10 + 1).to(dtype)
    weights = torch.rand((2, 8, 23, 29), generator=gen, dtype=torch.float64)
    budget = torch.rand((2, 1, 23, 29), generator=gen, dtype=torch.float64)  # sum_k a_k in [0, 1)
    affinity = (weights / weights.sum(dim=1, keepdim=True) * budget).to(dtype)
    ulp = torch.finfo(dtype).eps * 11
    current = depth
    for _ in range(30):
        following = spn_propagate(current, affinity, steps=1)
        assert following.max() <= current.max() + ulp
        assert following.min() >= current.min() - ulp
        current = following
    assert current.max() < depth.max() - 0.1 and current.min() > depth.min() + 0.1  # it does smooth
    torch.testing.assert_close(spn_propagate(depth, affinity, steps=30), current, atol=1e-5, rtol=0)


def test_signed_affinities_can_overshoot():
    """The maximum principle needs a_k >= 0: a negative weight towards a lower neighbour lifts
    a maximum (centre weight 1.5), which is why the test above restricts the sign."""
    depth = torch.zeros((1, 1, 3, 3), dtype=torch.float64)
    depth[0, 0, 1, 1] = 1.0
    affinity = torch.zeros((1, 8, 3, 3), dtype=torch.float64)
    affinity[0, 4, 1, 1] = -0.5  # towards (1, 2), depth 0
    assert spn_propagate(depth, affinity, steps=1)[0, 0, 1, 1] == 1.5


def test_constant_and_affine_depth_maps():
    """Weights sum to one: a constant map is a fixed point and the op commutes with d -> s d + c."""
    depth, affinity = _inputs((2, 8, 7), "cpu", torch.float64, seed=8)
    constant = torch.full_like(depth, 3.25)
    torch.testing.assert_close(spn_propagate(constant, affinity, steps=9), constant, atol=1e-12, rtol=0)
    torch.testing.assert_close(
        spn_propagate(2.5 * depth + 4.0, affinity, steps=9), 2.5 * spn_propagate(depth, affinity, steps=9) + 4.0,
        atol=1e-12, rtol=0,
    )


def test_neighbour_order_and_border():
    """Affinity channel k pulls from offset NEIGHBOUR_OFFSETS[k]; neighbours outside contribute 0."""
    depth = torch.arange(12, dtype=torch.float64).view(1, 1, 3, 4)
    for k, (di, dj) in enumerate(NEIGHBOUR_OFFSETS):
        affinity = torch.zeros((1, 8, 3, 4), dtype=torch.float64)
        affinity[0, k] = 1.0  # every pixel copies neighbour k where it exists
        out = spn_propagate(depth, affinity, steps=1)[0, 0]
        for i in range(3):
            for j in range(4):
                inside = 0 <= i + di < 3 and 0 <= j + dj < 4
                expected = depth[0, 0, i + di, j + dj] if inside else depth[0, 0, i, j]
                assert out[i, j] == expected, (k, i, j)


def test_deterministic():
    depth, affinity = _inputs((2, 31, 37), "cpu", torch.float32, seed=9)
    first = _forward_backward(spn_propagate, depth, affinity, 12, 5)
    second = _forward_backward(spn_propagate, depth, affinity, 12, 5)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_no_grad_matches_grad_path():
    depth, affinity = _inputs((1, 13, 10), "cpu", torch.float32, seed=10)
    with torch.no_grad():
        plain = spn_propagate(depth, affinity, steps=6)
    tracked = spn_propagate(depth.requires_grad_(), affinity, steps=6)
    assert torch.equal(plain, tracked.detach())


@pytest.mark.parametrize("low", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_low_precision_computes_in_float32(low):
    depth, affinity = _inputs((1, 9, 10), "cpu", torch.float64, seed=7)
    depth_low, affinity_low = depth.to(low), affinity.to(low)
    out = spn_propagate(depth_low, affinity_low, steps=4)
    assert out.dtype == low
    expected = spn_propagate_reference(depth_low.double(), affinity_low.double(), steps=4)
    tol = 2e-3 if low == torch.float16 else 2e-2
    torch.testing.assert_close(out.double(), expected, atol=tol, rtol=tol)


def test_bad_inputs_raise_clear_errors():
    depth = torch.rand(2, 1, 8, 9)
    affinity = torch.zeros(2, 8, 8, 9)
    with pytest.raises(ValueError, match=r"depth.*\(B, 1, H, W\).*\(2, 3, 8, 9\)"):
        spn_propagate(torch.rand(2, 3, 8, 9), affinity, steps=1)
    with pytest.raises(ValueError, match=r"depth.*\(B, 1, H, W\).*\(1, 8, 9\)"):
        spn_propagate(depth[0], affinity, steps=1)
    with pytest.raises(ValueError, match=r"affinity.*\(B, 8, H, W\).*\(2, 4, 8, 9\)"):
        spn_propagate(depth, affinity[:, :4], steps=1)
    with pytest.raises(ValueError, match=r"share \(H, W\).*\(2, 1, 8, 9\).*\(2, 8, 8, 7\)"):
        spn_propagate(depth, affinity[..., :7], steps=1)
    with pytest.raises(ValueError, match="batch sizes differ.*depth B=2.*affinity B=1"):
        spn_propagate(depth, affinity[:1], steps=1)
    with pytest.raises(TypeError, match="share one dtype"):
        spn_propagate(depth, affinity.double(), steps=1)
    with pytest.raises(TypeError, match="int64"):
        spn_propagate(depth.long(), affinity.long(), steps=1)
    with pytest.raises(TypeError, match="steps must be an integer.*float"):
        spn_propagate(depth, affinity, steps=2.0)
    with pytest.raises(TypeError, match="steps must be an integer.*bool"):
        spn_propagate(depth, affinity, steps=True)
    with pytest.raises(ValueError, match="steps must be >= 0, got -1"):
        spn_propagate(depth, affinity, steps=-1)
    with pytest.raises(TypeError, match="list"):
        spn_propagate([1.0], affinity, steps=1)


def test_cpu_path_never_touches_cuda():
    """The op and its backward on CPU tensors load neither numba.cuda nor cupy."""
    code = (
        "import sys, torch\n"
        "from kernels.spn_propagation import spn_propagate\n"
        "d = torch.rand(1, 1, 4, 5, requires_grad=True)\n"
        "spn_propagate(d, torch.zeros(1, 8, 4, 5), steps=2).sum().backward()\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('numba.cuda', 'cupy', 'numba_cuda')))\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"CUDA modules imported on a CPU path: {proc.stdout} {proc.stderr[-2000:]}"


def test_cuda_kernels_in_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    proc = subprocess.run(
        [sys.executable, __file__, "cudasim"], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"simulated case failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    errors = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(errors) == 12
    for key, (error, tol) in errors.items():
        assert error <= tol, f"{key}: max error {error} > {tol}"


@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
@pytest.mark.parametrize("kernel", ["spn_fwd_step_kernel", "spn_bwd_step_kernel"])
def test_cuda_kernels_compile_without_atomics(kernel, dtype_name):
    """Each kernel compiles for sm_80 without a GPU (NVVM only), and its PTX holds no atomic
    instruction: the backward is a gather."""
    code = (
        "import sys\n"
        "from numba import cuda\n"
        "from kernels.spn_propagation import cuda as kc\n"
        f"sig = kc.SIGNATURES[{dtype_name!r}][{int(kernel == 'spn_bwd_step_kernel')}]\n"
        f"ptx, _ = cuda.compile_ptx(kc.{kernel}, sig, cc=(8, 0))\n"
        "print('ATOMIC' if 'atom.' in ptx else 'CLEAN', len(ptx))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and "NVVM" in proc.stderr:
        pytest.skip("NVVM not installed")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[0] == "CLEAN"


@pytest.mark.cuda
@pytest.mark.parametrize("shape", [(2, 37, 29), (1, 16, 16), (1, 3, 300)], ids=lambda s: "x".join(map(str, s)))
def test_cuda_matches_reference(dtype, tolerance, shape):
    depth, affinity = _inputs(shape, "cuda", dtype, seed=8, non_contiguous=True)
    out, grad_depth, grad_affinity = _forward_backward(spn_propagate, depth, affinity, 9, 2)
    assert out.is_cuda
    ref, ref_depth, ref_affinity = _forward_backward(
        spn_propagate_reference, depth.double().cpu(), affinity.double().cpu(), 9, 2
    )
    atol, rtol = tolerance
    torch.testing.assert_close(out.double().cpu(), ref, atol=atol, rtol=rtol)
    torch.testing.assert_close(grad_depth.double().cpu(), ref_depth, atol=atol, rtol=rtol)
    torch.testing.assert_close(grad_affinity.double().cpu(), ref_affinity, atol=atol, rtol=rtol)


@pytest.mark.cuda
def test_gradcheck_cuda():
    depth, affinity = _inputs((2, 4, 5), "cuda", torch.float64, seed=5)
    depth.requires_grad_()
    affinity.requires_grad_()
    assert torch.autograd.gradcheck(lambda d, a: spn_propagate(d, a, steps=3), (depth, affinity), eps=1e-6, atol=1e-8)


@pytest.mark.cuda
def test_cuda_deterministic():
    depth, affinity = _inputs((2, 64, 80), "cuda", torch.float32, seed=9)
    first = _forward_backward(spn_propagate, depth, affinity, 12, 5)
    second = _forward_backward(spn_propagate, depth, affinity, 12, 5)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------
# Script side: runs in the simulated interpreter.
# ---------------------------------------------------------------------------------------------

_SIM_TOL = {"float64": 1e-12, "float32": 2e-5}


def _case_cudasim() -> dict:
    import numpy as np
    from numba import cuda

    from kernels.spn_propagation import cuda as kc

    if "simulator" not in type(cuda.jit(kc.spn_fwd_step_kernel)).__module__:
        raise RuntimeError("not running under the CUDA simulator")
    forward = cuda.jit(kc.spn_fwd_step_kernel)
    backward = cuda.jit(kc.spn_bwd_step_kernel)
    results = {}
    # Crosses one block of 64 threads (3 * 5 * 6 = 90 pixels), odd sizes, a single column.
    for shape, steps in (((3, 5, 6), 3), ((1, 7, 1), 2)):
        for dtype in ("float64", "float32"):
            depth, affinity = _inputs(shape, "cpu", torch.float64, seed=12)
            d = depth[:, 0].numpy().astype(dtype)
            a = affinity.numpy().astype(dtype)
            threads = 64
            blocks = (d.size + threads - 1) // threads
            history = [d.copy()]
            for _ in range(steps):
                nxt = np.zeros_like(d)
                forward[blocks, threads](history[-1], a, nxt)
                history.append(nxt)
            gen = torch.Generator().manual_seed(13)
            upstream = torch.randn(depth.shape, generator=gen, dtype=torch.float64)
            grad = upstream[:, 0].numpy().astype(dtype)
            grad_affinity = np.zeros_like(a)
            for step in range(steps - 1, -1, -1):
                grad_prev = np.zeros_like(d)
                backward[blocks, threads](history[step], a, grad, grad_prev, grad_affinity)
                grad = grad_prev
            ref, ref_depth, ref_affinity = _forward_backward(
                spn_propagate_reference,
                torch.tensor(d, dtype=torch.float64)[:, None],
                torch.tensor(a, dtype=torch.float64),
                steps,
                13,
            )
            tol = _SIM_TOL[dtype]
            name = f"{'x'.join(map(str, shape))}-{dtype}"
            results[f"{name}-forward"] = (float(np.abs(history[-1] - ref[:, 0].detach().numpy()).max()), tol)
            results[f"{name}-grad_depth"] = (float(np.abs(grad - ref_depth[:, 0].numpy()).max()), tol)
            results[f"{name}-grad_affinity"] = (float(np.abs(grad_affinity - ref_affinity.numpy()).max()), tol)
    return results


if __name__ == "__main__":
    if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        sys.exit("run with NUMBA_ENABLE_CUDASIM=1")
    print(json.dumps({"cudasim": _case_cudasim}[sys.argv[1]]()))
