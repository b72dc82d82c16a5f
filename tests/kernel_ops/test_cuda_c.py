"""The CUDA C backend (kernels/_cuda_c): registry, NVRTC compiles, CPU emulation against the references.

Without a GPU: every registered ``kernels/<op>/kernels.cu`` compiles with the pinned NVRTC wheel for
sm_80 and sm_90 in both dtypes, and each kernel runs in the CPU emulation (the same source built by
the system C++ compiler) through the op's own ``cuda_c.py`` launch code, compared with the torch
reference on tiny inputs that include samples outside the source map, points behind the source
camera, non-square maps and a source of another size. Tests marked ``cuda`` run the public ops
with ``SELFMVS_CUDA_BACKEND=cuda_c`` on a GPU (skipped here).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from kernels import _cuda_c
from kernels._cuda_c import SOURCES, kernel_names_in_source, kernel_params, source_text
from conftest import TOLERANCES  # tests/ is on sys.path (rootdir conftest, prepend import mode)

REPO = Path(__file__).resolve().parents[2]
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _needs_compiler():
    from kernels._cuda_c import emulate

    if emulate.compiler() is None:
        pytest.skip("no C++ compiler ($CXX, c++, g++, clang++): the CUDA C emulation cannot be built")


def _needs_nvrtc():
    from kernels._cuda_c import nvrtc

    if nvrtc.library_path() is None:
        pytest.skip("no libnvrtc.so (pinned nvidia-cuda-nvrtc wheel not installed, SELFMVS_NVRTC unset)")


def _close(got, want, dtype, what):
    atol, rtol = TOLERANCES[str(dtype).replace("torch.", "")]
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


# ---------------------------------------------------------------------------------------------
# Registry and harness
# ---------------------------------------------------------------------------------------------


def test_every_cu_file_is_registered():
    """Each kernels/<op>/kernels.cu is in SOURCES, with exactly the kernels the file defines."""
    on_disk = {p.parent.name for p in (REPO / "kernels").glob("*/kernels.cu")}
    assert on_disk == set(SOURCES), (
        f"kernels.cu files {sorted(on_disk)} differ from kernels/_cuda_c SOURCES {sorted(SOURCES)}"
    )
    for op, names in SOURCES.items():
        assert sorted(kernel_names_in_source(source_text(op))) == sorted(names), op
    for op in SOURCES:
        assert (REPO / "kernels" / op / "cuda_c.py").is_file(), f"kernels/{op}/cuda_c.py (the launches) is missing"


def test_parameter_parsing_and_argument_checks():
    text = 'extern "C" __global__ void k(const scalar_t* __restrict__ a, long long* idx, int n, scalar_t s) {}'
    assert kernel_names_in_source("// extern \"C\" __global__ void gone(int n)\n" + text) == ["k"]
    params = _cuda_c._all_params("test", text)["k"]
    assert [(p.name, p.c_type, p.pointer, p.const) for p in params] == [
        ("a", "scalar_t", True, True), ("idx", "long long", True, False), ("n", "int", False, False),
        ("s", "scalar_t", False, False),
    ]
    with pytest.raises(ValueError, match="outside the subset"):
        _cuda_c._all_params("test", 'extern "C" __global__ void k(size_t n) {}')
    src = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    cpu = torch.device("cpu")
    with pytest.raises(TypeError, match="expected 12 arguments"):
        _cuda_c.pack_args("warp_image", "warp_image_fwd", torch.float64, cpu, [src])
    args = [src, src, src, src, torch.zeros(1, dtype=torch.uint8), 1, 1, 2, 2, 2, 2, 1e-6]
    _cuda_c.pack_args("warp_image", "warp_image_fwd", torch.float64, cpu, args)
    with pytest.raises(TypeError, match="argument depth must be torch.float32"):
        _cuda_c.pack_args("warp_image", "warp_image_fwd", torch.float32, cpu, [src.float(), *args[1:]])
    with pytest.raises(ValueError, match="must be contiguous"):
        _cuda_c.pack_args("warp_image", "warp_image_fwd", torch.float64, cpu, [src.transpose(2, 3), *args[1:]])
    with pytest.raises(TypeError, match="must be an integer"):
        _cuda_c.pack_args("warp_image", "warp_image_fwd", torch.float64, cpu, [*args[:5], 1.5, *args[6:]])


def test_int32_size_check():
    huge = torch.empty(1).expand(2**31)  # a view: no memory
    with pytest.raises(ValueError, match="warp_image: big has 2147483648 elements"):
        _cuda_c.check_int32_sizes("warp_image", small=torch.empty(3), big=huge)
    _cuda_c.check_int32_sizes("warp_image", small=torch.empty(3))


def test_backend_setting(monkeypatch):
    monkeypatch.delenv(_cuda_c.ENV_VAR, raising=False)
    assert _cuda_c.cuda_backend("warp_image", "numba") == "numba"
    monkeypatch.setenv(_cuda_c.ENV_VAR, "cuda_c")
    assert _cuda_c.cuda_backend("warp_image", "numba") == "cuda_c"
    assert _cuda_c.cuda_backend("ssim_without_cuda_c", "numba") == "numba"
    monkeypatch.setenv(_cuda_c.ENV_VAR, "ssim=cuda_c, warp_image=numba")
    assert _cuda_c.cuda_backend("warp_image", "cuda_c") == "numba"
    monkeypatch.setenv(_cuda_c.ENV_VAR, "ssim=numba, warp_image=cuda_c")
    assert _cuda_c.cuda_backend("warp_image", "numba") == "cuda_c"
    monkeypatch.setenv(_cuda_c.ENV_VAR, "warp_image=triton")
    with pytest.raises(ValueError, match="SELFMVS_CUDA_BACKEND"):
        _cuda_c.cuda_backend("warp_image", "numba")


@pytest.mark.parametrize("arch", _cuda_c.ARCHS)
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("op", sorted(SOURCES))
def test_nvrtc_compiles(op, dtype_name, arch):
    """The pinned NVRTC wheel compiles the source to a CUBIN, without warnings."""
    _needs_nvrtc()
    from kernels._cuda_c import nvrtc

    result = nvrtc.compile_source(source_text(op), f"{op}/kernels.cu", arch, DTYPES[dtype_name])
    assert result.ok, f"kernels/{op}/kernels.cu ({dtype_name}, {arch}) does not compile:\n{result.log}"
    assert "warning" not in result.log.lower(), result.log
    assert result.cubin_bytes > 0


def test_nvrtc_reports_errors():
    _needs_nvrtc()
    from kernels._cuda_c import nvrtc

    result = nvrtc.compile_source('extern "C" __global__ void k(scalar_t* x) { x[0] = undefined_name; }',
                                  "broken.cu", "sm_80", torch.float32)
    assert not result.ok and "undefined_name" in result.log


def _spy_gpu_launches(monkeypatch) -> list[str]:
    """Record the kernels launched through cupy (a test then knows the CUDA C path ran)."""
    from kernels._cuda_c import gpu

    launched = []
    real = gpu.launch

    def spy(op, kernel, *args):
        launched.append(kernel)
        return real(op, kernel, *args)

    monkeypatch.setattr(gpu, "launch", spy)
    return launched


# ---------------------------------------------------------------------------------------------
# Shared scenes
# ---------------------------------------------------------------------------------------------


def _cameras(batch, ref_hw, src_hw, dtype, yaw=0.1, shift=0.15):
    """Reference and source intrinsics (different sizes) and a pose turned and shifted enough that
    part of the reference view falls outside the source map."""
    (h, w), (hs, ws) = ref_hw, src_hw
    ref_K = torch.tensor([[0.9 * w, 0.0, w / 2], [0.0, 0.8 * h, h / 2], [0.0, 0.0, 1.0]], dtype=dtype)
    src_K = torch.tensor([[1.1 * ws, 0.05, ws / 2 + 0.3], [0.0, 1.0 * hs, hs / 2 - 0.2], [0.0, 0.0, 1.0]], dtype=dtype)
    poses = []
    for b in range(batch):
        angle = yaw * (1 + b)
        pose = torch.eye(4, dtype=dtype)
        pose[0, 0] = pose[2, 2] = math.cos(angle)
        pose[0, 2], pose[2, 0] = math.sin(angle), -math.sin(angle)
        pose[:3, 3] = torch.tensor([shift * (1 - 2 * b), 0.1, 0.2 * b], dtype=dtype)
        poses.append(pose)
    return ref_K.expand(batch, 3, 3).contiguous(), src_K.expand(batch, 3, 3).contiguous(), torch.stack(poses)


def _depths(gen, shape, dtype):
    """Depths around 2, a few negative or near zero (behind the source camera)."""
    depth = 1.0 + 2.0 * torch.rand(shape, generator=gen, dtype=dtype)
    flat = depth.view(-1)
    flat[::7] = -1.0
    flat[3::11] = 1e-9
    return depth


# ---------------------------------------------------------------------------------------------
# warp_image
# ---------------------------------------------------------------------------------------------

# (batch, channels, (H, W), (Hs, Ws)): non-square, a source larger and one smaller than the reference
WARP_IMAGE_CASES = {
    "b2-c3-5x7-from-6x9": (2, 3, (5, 7), (6, 9)),
    "b1-c2-8x3-from-4x5": (1, 2, (8, 3), (4, 5)),
}


def _warp_image_inputs(case, dtype, seed=0):
    from kernels.warp_image import projection_matrix

    batch, channels, ref_hw, src_hw = WARP_IMAGE_CASES[case]
    gen = torch.Generator().manual_seed(seed)
    src = torch.rand((batch, channels, *src_hw), generator=gen, dtype=dtype)
    depth = _depths(gen, (batch, 1, *ref_hw), dtype)
    ref_K, src_K, pose = _cameras(batch, ref_hw, src_hw, dtype)
    return src, depth, ref_K, src_K, pose, projection_matrix(ref_K, src_K, pose, dtype)


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("case", list(WARP_IMAGE_CASES))
def test_warp_image_forward_emulated(case, dtype_name):
    _needs_compiler()
    from kernels.warp_image import cuda_c, warp_image_reference

    dtype = DTYPES[dtype_name]
    src, depth, ref_K, src_K, pose, proj = _warp_image_inputs(case, dtype)
    depth.view(-1)[5] = float("nan")  # a NaN depth is invalid
    warped, valid = cuda_c.warp_image_forward(src, depth, proj)
    want, want_valid = warp_image_reference(src, depth, ref_K, src_K, pose)
    assert torch.equal(valid.bool(), want_valid)
    assert 0.15 < want_valid.double().mean() < 0.9, "the scene should mix valid and invalid pixels"
    _close(warped, want, dtype, "warped")


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("case", list(WARP_IMAGE_CASES))
def test_warp_image_backward_emulated(case, deterministic):
    _needs_compiler()
    from kernels.warp_image import cuda_c, warp_image_reference

    dtype = torch.float64
    src, depth, ref_K, src_K, pose, proj = _warp_image_inputs(case, dtype, seed=1)
    grad_out = torch.randn((src.shape[0], src.shape[1], *depth.shape[2:]), generator=torch.Generator().manual_seed(2),
                           dtype=dtype)
    src_leaf, depth_leaf = src.clone().requires_grad_(), depth.clone().requires_grad_()
    want, _ = warp_image_reference(src_leaf, depth_leaf, ref_K, src_K, pose)
    want_src, want_depth = torch.autograd.grad(want, (src_leaf, depth_leaf), grad_out)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        grad_src, grad_depth = cuda_c.warp_image_backward(src, depth, proj, grad_out, True, True)
    finally:
        torch.use_deterministic_algorithms(previous)
    _close(grad_src, want_src, dtype, "grad src_image")
    _close(grad_depth, want_depth, dtype, "grad ref_depth")
    only_depth = cuda_c.warp_image_backward(src, depth, proj, grad_out, False, True)
    assert only_depth[0] is None
    torch.testing.assert_close(only_depth[1], grad_depth, rtol=0, atol=0)


def test_warp_image_emulated_thread_order(monkeypatch):
    """The forward is a pure gather: running the grid last thread first gives the same bits."""
    _needs_compiler()
    from kernels._cuda_c import emulate
    from kernels.warp_image import cuda_c

    src, depth, _, _, _, proj = _warp_image_inputs("b2-c3-5x7-from-6x9", torch.float32)
    first = cuda_c.warp_image_forward(src, depth, proj)
    monkeypatch.setattr(emulate, "REVERSE_THREAD_ORDER", True)
    second = cuda_c.warp_image_forward(src, depth, proj)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


@pytest.mark.cuda
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_warp_image_cupy_matches_reference(monkeypatch, dtype_name, deterministic):
    """The public op with SELFMVS_CUDA_BACKEND=warp_image=cuda_c on a GPU: forward and backward."""
    import kernels
    from kernels.warp_image import warp_image_reference

    monkeypatch.setenv(_cuda_c.ENV_VAR, "warp_image=cuda_c")
    launched = _spy_gpu_launches(monkeypatch)
    dtype = DTYPES[dtype_name]
    src, depth, ref_K, src_K, pose, _ = _warp_image_inputs("b2-c3-5x7-from-6x9", dtype)
    grad_out = torch.randn((2, 3, 5, 7), dtype=dtype, generator=torch.Generator().manual_seed(3))
    results = []
    for fn, device in ((kernels.warp_image, "cuda"), (warp_image_reference, "cpu")):
        s, d = src.to(device).requires_grad_(), depth.to(device).requires_grad_()
        warped, valid = fn(s, d, ref_K.to(device), src_K.to(device), pose.to(device))
        previous = torch.are_deterministic_algorithms_enabled()
        # the backward only: the forward's cuBLAS 3x3 products would need CUBLAS_WORKSPACE_CONFIG
        torch.use_deterministic_algorithms(deterministic and device == "cuda")
        try:
            warped.backward(grad_out.to(device))
        finally:
            torch.use_deterministic_algorithms(previous)
        results.append([t.detach().cpu() for t in (warped, valid, s.grad, d.grad)])
    assert launched, "the op did not launch the CUDA C kernels"
    (warped, valid, g_src, g_depth), (want, want_valid, want_src, want_depth) = results
    assert torch.equal(valid, want_valid)
    _close(warped, want, dtype, "warped")
    _close(g_src, want_src, dtype, "grad src_image")
    _close(g_depth, want_depth, dtype, "grad ref_depth")


# ---------------------------------------------------------------------------------------------
# warp_correlation
# ---------------------------------------------------------------------------------------------

# (batch, channels, groups, depths, (H, W), (Hs, Ws))
CORRELATION_CASES = {
    "b2-c4-g2-d3-5x6-from-7x4": (2, 4, 2, 3, (5, 6), (7, 4)),
    "b1-c6-g3-d2-3x7-from-5x5": (1, 6, 3, 2, (3, 7), (5, 5)),
}


def _correlation_inputs(case, dtype, seed=0):
    from kernels.warp_correlation import projection_matrices

    batch, channels, groups, depths, ref_hw, src_hw = CORRELATION_CASES[case]
    gen = torch.Generator().manual_seed(seed)
    ref = torch.randn((batch, channels, *ref_hw), generator=gen, dtype=dtype)
    src = torch.randn((batch, channels, *src_hw), generator=gen, dtype=dtype)
    depth = _depths(gen, (batch, depths, *ref_hw), dtype)
    ref_K, src_K, pose = _cameras(batch, ref_hw, src_hw, dtype)
    M, T = projection_matrices(ref_K, src_K, pose, dtype)
    proj = torch.cat((M.reshape(-1, 9), T), dim=1).contiguous()
    return ref, src, ref_K, src_K, pose, depth, groups, proj


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("case", list(CORRELATION_CASES))
def test_warp_correlation_forward_emulated(case, dtype_name):
    _needs_compiler()
    from kernels.warp_correlation import cuda_c, warp_correlation_reference

    dtype = DTYPES[dtype_name]
    ref, src, ref_K, src_K, pose, depth, groups, proj = _correlation_inputs(case, dtype)
    depth.view(-1)[4] = float("nan")  # a NaN depth is invalid
    correlation, valid, _ = cuda_c.forward(ref, src, proj, depth, groups)
    want, want_valid = warp_correlation_reference(ref, src, ref_K, src_K, pose, depth, groups)
    assert torch.equal(valid, want_valid)
    assert 0.15 < want_valid.double().mean() < 0.9, "the scene should mix valid and invalid samples"
    _close(correlation, want, dtype, "correlation")


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("case", list(CORRELATION_CASES))
def test_warp_correlation_backward_emulated(case, deterministic):
    _needs_compiler()
    from kernels.warp_correlation import cuda_c, warp_correlation_reference

    dtype = torch.float64
    ref, src, ref_K, src_K, pose, depth, groups, proj = _correlation_inputs(case, dtype, seed=1)
    ref_leaf, src_leaf = ref.clone().requires_grad_(), src.clone().requires_grad_()
    want, _ = warp_correlation_reference(ref_leaf, src_leaf, ref_K, src_K, pose, depth, groups)
    grad = torch.randn(want.shape, generator=torch.Generator().manual_seed(2), dtype=dtype)
    grad.view(-1)[::5] = 0.0  # zero group gradients are skipped by the scatter
    want_ref, want_src = torch.autograd.grad(want, (ref_leaf, src_leaf), grad)
    _, _, saved = cuda_c.forward(ref, src, proj, depth, groups)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        grad_ref, grad_src = cuda_c.backward(saved, grad, True, True)
        only_src = cuda_c.backward(saved, grad, False, True)
    finally:
        torch.use_deterministic_algorithms(previous)
    _close(grad_ref, want_ref, dtype, "grad ref_feature")
    _close(grad_src, want_src, dtype, "grad src_feature")
    assert only_src[0] is None
    torch.testing.assert_close(only_src[1], grad_src, rtol=0, atol=0)


def test_warp_correlation_emulated_thread_order(monkeypatch):
    """Forward and reference gradient are gathers (same bits in any thread order); the scattered
    source gradient only changes its summation order."""
    _needs_compiler()
    from kernels._cuda_c import emulate
    from kernels.warp_correlation import cuda_c

    ref, src, _, _, _, depth, groups, proj = _correlation_inputs("b2-c4-g2-d3-5x6-from-7x4", torch.float32)
    runs = []
    for reverse in (False, True):
        monkeypatch.setattr(emulate, "REVERSE_THREAD_ORDER", reverse)
        correlation, valid, saved = cuda_c.forward(ref, src, proj, depth, groups)
        grads = cuda_c.backward(saved, torch.ones_like(correlation), True, True)
        runs.append((correlation, valid, *grads))
    (c0, v0, r0, s0), (c1, v1, r1, s1) = runs
    assert torch.equal(c0, c1) and torch.equal(v0, v1) and torch.equal(r0, r1)
    _close(s1, s0, torch.float32, "grad src_feature, reversed order")


@pytest.mark.cuda
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_warp_correlation_cupy_matches_reference(monkeypatch, dtype_name, deterministic):
    """The public op with SELFMVS_CUDA_BACKEND=warp_correlation=cuda_c on a GPU: forward and backward."""
    import kernels
    from kernels.warp_correlation import warp_correlation_reference

    monkeypatch.setenv(_cuda_c.ENV_VAR, "warp_correlation=cuda_c")
    launched = _spy_gpu_launches(monkeypatch)
    dtype = DTYPES[dtype_name]
    ref, src, ref_K, src_K, pose, depth, groups, _ = _correlation_inputs("b2-c4-g2-d3-5x6-from-7x4", dtype)
    grad = torch.randn((2, groups, 3, 5, 6), dtype=dtype, generator=torch.Generator().manual_seed(3))
    results = []
    for fn, device in ((kernels.warp_correlation, "cuda"), (warp_correlation_reference, "cpu")):
        r, s = ref.to(device).requires_grad_(), src.to(device).requires_grad_()
        correlation, valid = fn(r, s, *(t.to(device) for t in (ref_K, src_K, pose, depth)), groups)
        previous = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(deterministic and device == "cuda")  # the backward only
        try:
            correlation.backward(grad.to(device))
        finally:
            torch.use_deterministic_algorithms(previous)
        results.append([t.detach().cpu() for t in (correlation, valid, r.grad, s.grad)])
    assert launched, "the op did not launch the CUDA C kernels"
    (correlation, valid, g_ref, g_src), (want, want_valid, want_ref, want_src) = results
    assert torch.equal(valid, want_valid)
    _close(correlation, want, dtype, "correlation")
    _close(g_ref, want_ref, dtype, "grad ref_feature")
    _close(g_src, want_src, dtype, "grad src_feature")


# ---------------------------------------------------------------------------------------------
# Samples exactly on the last source pixel centre
# ---------------------------------------------------------------------------------------------


def _shift_cameras(batch, dtype):
    """Cameras whose composed projection is exact in binary: focal 4, the source 0.25 to the left
    and 0.25 up, so at depth 1 the reference pixel (i, j) samples the source at (j - 1, i - 1) exactly
    (the last reference row and column hit the last centres of a source one pixel smaller each way;
    row and column 0 fall outside)."""
    K = torch.tensor([[4.0, 0.0, 2.0], [0.0, 4.0, 2.0], [0.0, 0.0, 1.0]], dtype=dtype).expand(batch, 3, 3)
    pose = torch.eye(4, dtype=dtype).repeat(batch, 1, 1)
    pose[:, 0, 3] = -0.25
    pose[:, 1, 3] = -0.25
    return K.contiguous(), K.contiguous(), pose


def test_warp_image_last_pixel_centre_emulated():
    """Samples on the last source column interpolate with weight 1 on it and take the one-sided
    derivative from inside (the tap clamp of _formulas.bilinear_setup)."""
    _needs_compiler()
    from kernels.warp_image import cuda_c, projection_matrix, warp_image_reference

    dtype = torch.float64
    ref_K, src_K, pose = _shift_cameras(1, dtype)
    gen = torch.Generator().manual_seed(4)
    src = torch.rand((1, 2, 3, 5), generator=gen, dtype=dtype)
    depth = torch.ones((1, 1, 4, 6), dtype=dtype)
    warped, valid = cuda_c.warp_image_forward(src, depth, projection_matrix(ref_K, src_K, pose, dtype))
    assert valid[..., 0].eq(0).all() and valid[..., 0, :].eq(0).all() and valid[..., 1:, 1:].eq(1).all()
    assert torch.equal(warped[..., 1:, 1:], src)
    grad_out = torch.randn((1, 2, 4, 6), generator=gen, dtype=dtype)
    grad_src, grad_depth = cuda_c.warp_image_backward(src, depth, projection_matrix(ref_K, src_K, pose, dtype),
                                                      grad_out, True, True)
    s, d = src.clone().requires_grad_(), depth.clone().requires_grad_()
    want, _ = warp_image_reference(s, d, ref_K, src_K, pose)
    want_src, want_depth = torch.autograd.grad(want, (s, d), grad_out)
    assert want_depth[..., 1:, -1].abs().min() > 0, "the last column's depth gradient should be one-sided, not 0"
    _close(grad_src, want_src, dtype, "grad src_image")
    _close(grad_depth, want_depth, dtype, "grad ref_depth")


def test_warp_correlation_last_pixel_centre_emulated():
    _needs_compiler()
    from kernels.warp_correlation import cuda_c, projection_matrices, warp_correlation_reference

    dtype = torch.float64
    ref_K, src_K, pose = _shift_cameras(1, dtype)
    gen = torch.Generator().manual_seed(5)
    ref = torch.randn((1, 4, 4, 6), generator=gen, dtype=dtype)
    src = torch.randn((1, 4, 3, 5), generator=gen, dtype=dtype)
    depth = torch.tensor([1.0, 2.0], dtype=dtype).view(1, 2, 1, 1).expand(1, 2, 4, 6).contiguous()
    M, T = projection_matrices(ref_K, src_K, pose, dtype)
    correlation, valid, saved = cuda_c.forward(ref, src, torch.cat((M.reshape(-1, 9), T), 1), depth, 2)
    r, s = ref.clone().requires_grad_(), src.clone().requires_grad_()
    want, want_valid = warp_correlation_reference(r, s, ref_K, src_K, pose, depth, 2)
    assert torch.equal(valid, want_valid) and want_valid[0, 0, 1:, -1].all() and want_valid[0, 0, -1, 1:].all()
    _close(correlation, want, dtype, "correlation")
    grad = torch.randn(want.shape, generator=gen, dtype=dtype)
    want_ref, want_src = torch.autograd.grad(want, (r, s), grad)
    grad_ref, grad_src = cuda_c.backward(saved, grad, True, True)
    _close(grad_ref, want_ref, dtype, "grad ref_feature")
    _close(grad_src, want_src, dtype, "grad src_feature")


# ---------------------------------------------------------------------------------------------
# Memory safety
# ---------------------------------------------------------------------------------------------


def test_emulated_kernels_under_address_sanitizer():
    """The float64 emulated cases again, in a process whose kernels are built with
    ``-fsanitize=address,undefined`` (SELFMVS_CUDA_C_SANITIZE=1): a read or write outside any tensor
    (e.g. a tap index one past the last row) or a signed 32-bit overflow aborts with the line of
    kernels.cu, which the numeric comparisons alone can miss (a tap with weight 0)."""
    _needs_compiler()
    import os
    import subprocess
    import sys

    from kernels._cuda_c import emulate

    runtime = subprocess.run([emulate.compiler(), "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(runtime):
        pytest.skip(f"{emulate.compiler()} has no address sanitizer runtime (libasan.so)")
    env = {**os.environ, "SELFMVS_CUDA_C_SANITIZE": "1", "LD_PRELOAD": runtime, "ASAN_OPTIONS": "detect_leaks=0",
           "PYTHONPATH": str(REPO)}
    selection = "(emulated or last_pixel) and not float32 and not thread_order and not sanitizer"
    proc = subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-s", "-p", "no:cacheprovider", "-k", selection],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and " passed" in proc.stdout, (proc.stdout[-3000:] + proc.stderr[-6000:])


# ---------------------------------------------------------------------------------------------
# On a GPU: host path
# ---------------------------------------------------------------------------------------------


@pytest.mark.cuda
def test_cuda_c_ops_never_synchronise_and_repeat_in_deterministic_mode(monkeypatch):
    """With the CUDA C backend: forward + backward under ``set_sync_debug_mode("error")`` (after a
    first call that compiles), and the deterministic backward gives the same bits twice."""
    import kernels

    monkeypatch.setenv(_cuda_c.ENV_VAR, "cuda_c")
    launched = _spy_gpu_launches(monkeypatch)
    device = torch.device("cuda")
    src, depth, ref_K, src_K, pose, _ = _warp_image_inputs("b2-c3-5x7-from-6x9", torch.float32)
    ref, fsrc, cref_K, csrc_K, cpose, hypotheses, groups, _ = _correlation_inputs("b2-c4-g2-d3-5x6-from-7x4", torch.float32)
    cases = {
        "warp_image": (lambda s, d: kernels.warp_image(s, d, *(t.to(device) for t in (ref_K, src_K, pose)))[0],
                       (src, depth)),
        "warp_correlation": (lambda r, s: kernels.warp_correlation(
            r, s, *(t.to(device) for t in (cref_K, csrc_K, cpose, hypotheses)), groups)[0], (ref, fsrc)),
    }

    def run(function, inputs, backwards=1):
        leaves = [t.to(device).requires_grad_() for t in inputs]
        out = function(*leaves)
        upstream = torch.linspace(-1, 1, out.numel(), device=device).view_as(out)
        previous = torch.are_deterministic_algorithms_enabled()
        # the backward only: the forward's cuBLAS 3x3 products would need CUBLAS_WORKSPACE_CONFIG
        torch.use_deterministic_algorithms(backwards > 1)
        try:
            return [torch.autograd.grad(out, leaves, upstream, retain_graph=True) for _ in range(backwards)]
        finally:
            torch.use_deterministic_algorithms(previous)

    failures = []
    for name, (function, inputs) in cases.items():
        run(function, inputs)  # compiles
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            run(function, inputs)
        except RuntimeError as error:
            failures.append(f"{name}: {error}")
        finally:
            torch.cuda.set_sync_debug_mode("default")
        first, again = run(function, inputs, backwards=2)
        assert all(torch.equal(a, b) for a, b in zip(first, again)), f"{name}: deterministic backward differs"
    assert not failures, "\n".join(failures)
    assert {"warp_image_fwd", "warp_image_bwd_src_corners", "warp_correlation_fwd",
            "warp_correlation_bwd_src_corners"} <= set(launched)
