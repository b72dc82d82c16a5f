"""Every CUDA kernel of the package compiles for sm_80 and sm_90 without a GPU.

The kernels to check come from ``kernels._backend.KERNEL_REGISTRY``: numba.cuda functions with
their signatures, compiled with ``cuda.compile_ptx`` (NVVM). The CUDA C kernels
(``kernels/<op>/kernels.cu``) are checked by tests/kernel_ops/test_cuda_c.py with NVRTC.
Their results are checked in numba's CUDA simulator (test_cudasim.py, test_cudasim_correlation_aggregation.py).

Cost: a numba compile takes 1-5 s on a 2-core machine, so the default run compiles each numba
kernel once (float32, sm_80); the other (dtype, arch) pairs run with ``KERNELS_COMPILE_ALL=1``
in the environment (they also carry ``@pytest.mark.slow``).
"""

from __future__ import annotations

import importlib
import os
import inspect
import pkgutil
import subprocess
import sys

import pytest

import kernels
from kernels._backend import KERNEL_REGISTRY, compile_ptx_numba

ARCHS = {"sm_80": (8, 0), "sm_90": (9, 0)}
_ALL_ONLY = pytest.mark.skipif(
    os.environ.get("KERNELS_COMPILE_ALL") != "1", reason="set KERNELS_COMPILE_ALL=1 for every (dtype, arch)"
)


def _numba_cases():
    for spec in KERNEL_REGISTRY:
        for sig_index, signature in enumerate(spec.signatures):
            for arch in ARCHS:
                default = sig_index == 0 and arch == "sm_80"
                marks = () if default else (pytest.mark.slow, _ALL_ONLY)
                dtype = "float32" if "float32" in signature else "float64" if "float64" in signature else f"sig{sig_index}"
                yield pytest.param(spec, signature, arch, marks=marks, id=f"{spec.name}-{dtype}-{arch}")


def test_import_and_cpu_ops_never_touch_cuda():
    """``import kernels`` and CPU calls load neither numba.cuda nor cupy (nor query a GPU)."""
    code = (
        "import sys, torch, kernels\n"
        "x = torch.rand(1, 1, 4, 5)\n"
        "kernels.ssim(x, x)\n"
        "K = torch.eye(3)[None]\n"
        "kernels.warp_image(x, torch.ones(1, 1, 4, 5), K, K, torch.eye(4)[None])\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('numba.cuda', 'cupy', 'numba_cuda')))\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"CUDA modules imported on a CPU path: {proc.stdout} {proc.stderr[-2000:]}"


def test_registry_is_well_formed():
    names = [s.name for s in KERNEL_REGISTRY]
    assert len(names) == len(set(names)), f"duplicate kernel names in KERNEL_REGISTRY: {names}"
    for spec in KERNEL_REGISTRY:
        assert len(spec.signatures) == 2, f"{spec.name}: expected a float32 and a float64 signature"
        assert "float32" in spec.signatures[0] and "float64" not in spec.signatures[0], spec.name
        assert "float64" in spec.signatures[1] and "float32" not in spec.signatures[1], spec.name


def test_every_cuda_kernel_is_registered():
    """Each public ``*_kernel`` function of a ``kernels.<op>.cuda`` module has a registry entry."""
    registered = {(s.module, s.attr) for s in KERNEL_REGISTRY}
    found = set()
    for info in pkgutil.iter_modules(kernels.__path__):
        if not info.ispkg:
            continue
        name = f"kernels.{info.name}.cuda"
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:
                continue  # this op has no CUDA module (yet)
            raise
        for attr, value in vars(module).items():
            if attr.endswith("_kernel") and not attr.startswith("_") and inspect.isfunction(value) and value.__module__ == name:
                found.add((name, attr))
    assert found, "no CUDA kernels found at all"
    missing = sorted(found - registered)
    assert not missing, f"CUDA kernels missing from kernels._backend.KERNEL_REGISTRY: {missing}"


@pytest.mark.parametrize(("spec", "signature", "arch"), list(_numba_cases()))
def test_numba_kernel_compiles(spec, signature, arch):
    ptx = compile_ptx_numba(spec, signature, ARCHS[arch])
    assert f".target {arch}" in ptx
    assert ".entry" in ptx
    if "float64" not in signature:
        # Precision policy: float32 kernels compute in float32 (a stray Python float literal
        # would silently promote to float64, 2-64x slower on GPUs).
        offending = [line.strip() for line in ptx.splitlines() if ".f64" in line]
        assert not offending, f"{spec.name}: float64 arithmetic in a float32 kernel: {offending[:5]}"


def test_numba_cuda_numpy_mismatch_is_named(monkeypatch):
    """A numba-cuda too old for the installed NumPy (numba-cuda 0.30.4 + NumPy 2.5 on a GPU
    machine) fails at the first compile; the error names both versions and the fix instead of a
    traceback from deep inside numba."""
    import contextlib

    from numba import cuda

    from kernels import _backend

    def broken_jit(*args, **kwargs):
        raise AttributeError("module 'numpy' has no attribute 'row_stack'")

    monkeypatch.delenv("NUMBA_ENABLE_CUDASIM", raising=False)
    monkeypatch.setattr(cuda, "simulator_enabled", False, raising=False)
    monkeypatch.setattr(cuda, "gpus", {0: contextlib.nullcontext()})
    monkeypatch.setattr(cuda, "jit", broken_jit)
    compile_uncached = _backend.numba_cuda_kernel.__wrapped__
    with pytest.raises(RuntimeError, match=r"numba-cuda .* cannot compile kernels\.ssim\.cuda\.ssim_fwd_kernel with NumPy .*row_stack.*numpy==2\.4\.6"):
        compile_uncached("kernels.ssim.cuda", "ssim_fwd_kernel", "void()", 0)
    monkeypatch.setattr(cuda, "jit", lambda *a, **k: (_ for _ in ()).throw(AttributeError("other")))
    with pytest.raises(AttributeError, match="other"):  # unrelated errors pass through unchanged
        compile_uncached("kernels.ssim.cuda", "ssim_fwd_kernel", "void()", 0)
