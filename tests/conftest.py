"""Shared fixtures in the kornia manner: device and dtype chosen on the command line.

    pytest --device cpu,cuda --dtype float32,float64

CUDA is never queried at import or collection time: tests marked ``cuda`` (and ``device`` params
equal to ``cuda``) are skipped at set-up when no GPU is present.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

# numba keys its on-disk cache (``cache=True``) on the jitted function's own file: a function it
# inlines from another file (kernels/ssim/_formulas.py, kernels/_bilinear_cpu.py) is not part of
# the key, so with a warm cache an edit there leaves the old machine code running and the tests
# pass on it. Each pytest run therefore compiles into an empty folder of its own, set here before
# any test module imports numba (subprocesses started by tests inherit it), removed at exit.
NUMBA_CACHE_DIR = tempfile.mkdtemp(prefix="selfmvs-numba-cache-")
NUMBA_CACHE_CREATED = time.time()
os.environ["NUMBA_CACHE_DIR"] = NUMBA_CACHE_DIR
atexit.register(shutil.rmtree, NUMBA_CACHE_DIR, ignore_errors=True)
if "numba" in sys.modules:  # imported by a plugin before this file: make it read the variable again
    sys.modules["numba"].core.config.reload_config()

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# One table of tolerances per dtype (absolute, relative); tests look them up here.
TOLERANCES = {
    "float64": (1e-10, 1e-8),
    "float32": (1e-5, 1e-4),
    "float16": (2e-3, 2e-3),
    "bfloat16": (2e-2, 2e-2),
}


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", help="comma-separated devices: cpu,cuda")
    parser.addoption("--dtype", default="float32,float64", help="comma-separated dtypes")


def pytest_generate_tests(metafunc):
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", metafunc.config.getoption("--device").split(","), indirect=True)
    if "dtype" in metafunc.fixturenames:
        metafunc.parametrize("dtype", metafunc.config.getoption("--dtype").split(","), indirect=True)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.fixture
def device(request):
    import torch

    name = request.param
    if name.startswith("cuda") and not _cuda_available():
        pytest.skip("CUDA not available")
    return torch.device(name)


@pytest.fixture
def dtype(request):
    import torch

    return getattr(torch, request.param)


@pytest.fixture
def tolerance(dtype):
    """(atol, rtol) for the current dtype."""
    return TOLERANCES[str(dtype).replace("torch.", "")]


def pytest_runtest_setup(item):
    if item.get_closest_marker("cuda") is not None and not _cuda_available():
        pytest.skip("needs a CUDA GPU")
    if item.get_closest_marker("shared_data") is not None and not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present")
    return SHARED_DATA


@pytest.fixture
def numba_cache_dir() -> tuple[Path, float]:
    """This run's numba cache folder and the time it was created."""
    return Path(NUMBA_CACHE_DIR), NUMBA_CACHE_CREATED


# Geometry helpers of the renderer tests (object and indoor families).


def interpolate_depth(depth: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """Depth at (x, y) positions by bilinear interpolation of inverse depth (exact on planes)."""
    x, y = pixels[:, 0] - 0.5, pixels[:, 1] - 0.5
    x0 = np.clip(np.floor(x).astype(int), 0, depth.shape[1] - 2)
    y0 = np.clip(np.floor(y).astype(int), 0, depth.shape[0] - 2)
    fx, fy = x - x0, y - y0
    inverse = 1.0 / depth
    top = inverse[y0, x0] * (1 - fx) + inverse[y0, x0 + 1] * fx
    bottom = inverse[y0 + 1, x0] * (1 - fx) + inverse[y0 + 1, x0 + 1] * fx
    return 1.0 / (top * (1 - fy) + bottom * fy)


def backproject_depth(depth: np.ndarray, K: np.ndarray, cam_from_world: np.ndarray) -> np.ndarray:
    rows, cols = np.indices(depth.shape)
    normalized = np.stack([(cols + 0.5 - K[0, 2]) / K[0, 0], (rows + 0.5 - K[1, 2]) / K[1, 1], np.ones(depth.shape)])
    cam = (normalized * depth).reshape(3, -1)
    rotation, translation = cam_from_world[:, :3], cam_from_world[:, 3]
    return (rotation.T @ (cam - translation[:, None])).T


def load_experiment(name: str):
    """The module ``experiments/<name>.py`` (experiments are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
