"""numba's on-disk cache: each test run compiles afresh (tests/conftest.py), so an edit to a file
whose functions are inlined into cached kernels (kernels/ssim/_formulas.py,
kernels/_bilinear_cpu.py) cannot pass the tests on stale machine code."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

import kernels


def test_numba_caches_into_this_run_s_fresh_folder(numba_cache_dir):
    import numba

    folder, created = numba_cache_dir
    assert os.environ["NUMBA_CACHE_DIR"] == str(folder)
    assert numba.config.CACHE_DIR == str(folder)
    x = torch.rand(1, 1, 6, 7, dtype=torch.float64)
    kernels.ssim(x, x.flip(-1))  # compiles (and caches) the CPU SSIM kernels
    cached = [path for path in folder.rglob("*") if path.is_file()]
    assert any("ssim" in path.name for path in cached), f"nothing of the SSIM kernels cached in {folder}: {cached}"
    stale = [path for path in cached if path.stat().st_mtime < created - 1.0]
    assert not stale, f"cache files older than this run in {folder}: {stale}"


def test_subprocesses_use_the_same_folder(numba_cache_dir):
    folder, _ = numba_cache_dir
    code = "import numba; print(numba.config.CACHE_DIR)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == str(folder)
