"""kernels._native: the C++ inference forwards against numba's (bit for bit), the build, the fallback.

The public ops' tests (test_warp_correlation.py, test_neighbour_correlation.py,
test_depth_weighted_aggregation.py) check the CPU path the process uses against the torch
references; with a C++ compiler on the machine that is the native forward. Here each native forward is compared with numba's on the same inputs, so both CPU
paths stay covered, and the build / fallback / no-numba behaviour is checked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernels import _native
from kernels.warp_correlation.reference import projection_matrices

from test_adaptive_aggregation import make_case as make_aggregation_case
from test_warp_correlation import make_case as make_warp_case

REPO = Path(__file__).resolve().parents[2]
HAVE_COMPILER = _native._compiler() is not None


@pytest.fixture
def native_lib():
    if not HAVE_COMPILER:
        pytest.skip("no C++ compiler: the native kernels are not built on this machine")
    lib = _native.library()
    # A machine with a compiler must build them: a silent fallback would hide a broken source.
    assert lib is not None, _native.status()
    return lib


@pytest.fixture
def fresh_native(monkeypatch, tmp_path):
    """``library()`` re-evaluated with a private cache folder; restored afterwards."""
    monkeypatch.setenv("SELFMVS_CACHE_DIR", str(tmp_path / "cache"))
    _native.library.cache_clear()
    yield tmp_path / "cache" / "native"
    _native.library.cache_clear()


WARP_SHAPES = [  # B, C, H, W, Hs, Ws, D, G: generic kernels, then PatchmatchNet's stage specialisations
    (1, 4, 5, 7, 5, 7, 3, 1),
    (2, 12, 7, 3, 9, 9, 5, 4),
    (2, 16, 6, 8, 7, 9, 4, 4),
    (1, 32, 5, 6, 6, 5, 3, 8),
    (1, 64, 3, 4, 4, 4, 3, 8),
]


@pytest.mark.parametrize("behind", [False, True], ids=["front", "behind"])
@pytest.mark.parametrize("shape", WARP_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_warp_correlation_forward_equals_numba(native_lib, shape, behind, dtype):
    from kernels.warp_correlation import cpu, native

    B, C, H, W, Hs, Ws, D, G = shape
    ref, src, ref_K, src_K, src_from_ref, depth, G = make_warp_case(
        B, C, H, W, Hs, Ws, D, G, torch.device("cpu"), dtype, behind=behind, seed=sum(shape)
    )
    # dense, sorted hypotheses too: consecutive samples share corners (the reuse branch)
    depth = torch.cat([depth, depth[:, :1] + 0.002 * torch.arange(6, dtype=dtype).view(1, 6, 1, 1)], dim=1)
    M, T = projection_matrices(ref_K, src_K, src_from_ref, dtype)
    proj = torch.cat((M.reshape(-1, 9), T), dim=1).contiguous()
    expected, expected_valid, _ = cpu.forward(ref, src, proj, depth, G)
    actual, valid, saved = native.forward(ref, src, proj, depth, G)
    if behind:  # hypotheses behind the source camera and in front of it: both branches run
        assert valid.any() and not valid.all()
    assert torch.equal(valid, expected_valid)
    assert torch.equal(actual, expected)
    assert len(saved) == 4


@pytest.mark.parametrize("shape", [(1, 3, 5, 7, 9), (2, 4, 6, 11, 4), (3, 1, 1, 13, 9)], ids=lambda s: "x".join(map(str, s)))
def test_aggregation_forwards_equal_numba(native_lib, shape, dtype):
    from kernels.depth_weighted_aggregation import cpu as depth_cpu, native as depth_native
    from kernels.neighbour_correlation import cpu as neighbour_cpu, native as neighbour_native

    B, D, H, W, K = shape
    cost, offsets, _ = make_aggregation_case(B, D, H, W, K, torch.device("cpu"), dtype, spread=3.0, seed=sum(shape))
    offsets = offsets.clone()
    offsets[0, 0, 0, 0] = float("nan")  # the border-clamped sampling reads pixel 0 for NaN
    gen = torch.Generator().manual_seed(7)
    inverse = (0.2 + torch.rand(B, D, H, W, generator=gen, dtype=torch.float64)).to(dtype)
    feature_weight = torch.rand(B, K, H, W, generator=gen, dtype=torch.float64).to(dtype)
    scale = (5.0 + 40.0 * torch.rand(B, generator=gen, dtype=torch.float64)).to(dtype)
    expected = depth_cpu.depth_weighted_forward(cost, offsets, inverse, feature_weight, scale, 1e-8)
    actual = depth_native.depth_weighted_forward(cost, offsets, inverse, feature_weight, scale, 1e-8)
    assert torch.equal(actual, expected)
    for channels, groups in ((8, 4), (16, 4), (6, 1)):
        feature = torch.randn(B, channels, H, W, generator=gen, dtype=torch.float64).to(dtype)
        expected = neighbour_cpu.neighbour_correlation_forward(feature, offsets, groups)
        actual = neighbour_native.neighbour_correlation_forward(feature, offsets, groups)
        assert torch.equal(actual, expected)


def test_public_ops_dispatch_to_the_native_forwards_and_numba_backward(native_lib):
    import kernels
    from kernels.warp_correlation import _backend, warp_correlation_reference

    assert _backend(torch.device("cpu")).__name__ == "kernels.warp_correlation.native"
    ref, src, ref_K, src_K, src_from_ref, depth, G = make_warp_case(
        1, 8, 4, 5, 4, 5, 3, 2, torch.device("cpu"), torch.float64
    )
    ref.requires_grad_(True)
    correlation, _ = kernels.warp_correlation(ref, src, ref_K, src_K, src_from_ref, depth, G)
    correlation.sum().backward()  # the backward is numba's
    expected = torch.autograd.grad(
        warp_correlation_reference(ref, src, ref_K, src_K, src_from_ref, depth, G)[0].sum(), ref
    )[0]
    torch.testing.assert_close(ref.grad, expected, atol=1e-10, rtol=1e-8)


def test_switched_off_by_environment(fresh_native, monkeypatch):
    monkeypatch.setenv("SELFMVS_NATIVE_KERNELS", "0")
    assert _native.library() is None
    assert "SELFMVS_NATIVE_KERNELS=0" in _native.status()
    from kernels.warp_correlation import _backend

    assert _backend(torch.device("cpu")).__name__ == "kernels.warp_correlation.cpu"


def test_without_a_compiler_the_numba_kernels_run(fresh_native, monkeypatch, tmp_path):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert _native.library() is None
    assert "no C++ compiler" in _native.status()
    import kernels
    from kernels.neighbour_correlation import neighbour_correlation_reference

    cost, offsets, weights = make_aggregation_case(1, 2, 4, 5, 3, torch.device("cpu"), torch.float64)
    feature = torch.randn(1, 4, 4, 5, dtype=torch.float64)
    torch.testing.assert_close(
        kernels.neighbour_correlation(feature, offsets, 2),
        neighbour_correlation_reference(feature, offsets, 2),
    )


def test_a_failing_build_falls_back_and_says_why(fresh_native, monkeypatch, tmp_path):
    fake = tmp_path / "broken-c++"
    fake.write_text("#!/bin/sh\necho 'fake compiler 1.0'\nif [ \"$1\" != --version ]; then echo 'error: broken' >&2; exit 1; fi\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CXX", str(fake))
    assert _native.library() is None
    assert "failed" in _native.status() and "broken" in _native.status()
    assert not list(fresh_native.glob("*.so")) and not list(fresh_native.glob("tmp*"))  # no partial file left


@pytest.mark.skipif(not HAVE_COMPILER, reason="no C++ compiler")
def test_built_once_then_loaded_from_the_cache(fresh_native):
    assert _native.library() is not None
    assert "built in" in _native.status()
    (built,) = fresh_native.glob("forward-*.so")
    _native.library.cache_clear()
    assert _native.library() is not None
    assert "built in" not in _native.status() and built.name in _native.status()


@pytest.mark.skipif(not HAVE_COMPILER, reason="no C++ compiler")
def test_an_inference_forward_never_loads_numba():
    """The point of the native forwards: a PatchmatchNet forward in inference mode without numba."""
    code = (
        "import sys, torch\n"
        "from pipeline.model import PatchmatchNet, ModelConfig\n"
        "torch.manual_seed(0)\n"
        "net = PatchmatchNet(ModelConfig()).eval()\n"
        "K = torch.tensor([[[60.0, 0, 40], [0, 60.0, 32], [0, 0, 1]]])\n"
        "poses = [torch.eye(4).unsqueeze(0) for _ in range(3)]\n"
        "poses[1][0, 0, 3] = 0.1; poses[2][0, 0, 3] = -0.1\n"
        "with torch.inference_mode():\n"
        "    out = net([torch.rand(1, 3, 64, 80) for _ in range(3)], [K] * 3, poses,\n"
        "              torch.tensor([1.0]), torch.tensor([5.0]))\n"
        "assert out.depth.isfinite().all()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'numba'))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]", result.stdout


@pytest.mark.skipif(not HAVE_COMPILER, reason="no C++ compiler")
def test_a_broken_cached_library_is_built_again(fresh_native, monkeypatch, tmp_path):
    assert _native.library() is not None
    (built,) = fresh_native.glob("forward-*.so")
    # not a library, under the same name in another cache folder (the loaded file stays intact:
    # overwriting a mapped library would crash this process, and the loader would not reopen it;
    # builds are renamed into place, so a half-written file never has the name)
    other = tmp_path / "other"
    (other / "native").mkdir(parents=True)
    (other / "native" / built.name).write_bytes(b"not an ELF file")
    monkeypatch.setenv("SELFMVS_CACHE_DIR", str(other))
    _native.library.cache_clear()
    assert _native.library() is not None
    assert "built in" in _native.status() and str(other) in _native.status()
    assert (other / "native" / built.name).stat().st_size == built.stat().st_size


@pytest.mark.skipif(not HAVE_COMPILER, reason="no C++ compiler")
def test_an_unwritable_cache_folder_falls_back_to_the_temp_dir(fresh_native, monkeypatch, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv("SELFMVS_CACHE_DIR", str(blocker))
    monkeypatch.setattr(_native.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    assert _native.library() is not None
    assert str(tmp_path / "tmp") in _native.status()


def test_every_native_source_ships_and_is_built():
    """Each op's native.cpp is a translation unit of the library, and pyproject's package-data
    globs cover every non-Python file of the package (else a wheel would build without them)."""
    import fnmatch
    import tomllib

    package = Path(_native.__file__).resolve().parents[1]
    assert set(_native.SOURCES) == {package / "_native" / "abi.cpp", *package.glob("*/native.cpp")}
    assert len(_native.SOURCES) >= 5
    pyproject = tomllib.loads((package.parent / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["*"]
    data = [p for p in package.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts]
    assert data, "no data files found"
    missing = [str(p.relative_to(package)) for p in data if not any(fnmatch.fnmatch(p.name, g) for g in globs)]
    assert not missing, f"not covered by pyproject package-data {globs}: {missing}"
