"""Shared fixtures in the kornia manner: device and dtype chosen on the command line.

    pytest --device cpu,cuda --dtype float32,float64

CUDA is never queried at import or collection time: tests marked ``cuda`` (and ``device`` params
equal to ``cuda``) are skipped at set-up when no GPU is present.
"""

from __future__ import annotations

from pathlib import Path

import pytest

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
