"""pytest-benchmark set-up for bench/: collect ``bench_*.py``, pin CPU threads, pick devices.

    .venv/bin/python -m pytest bench/ --benchmark-only -p no:cacheprovider \
        --benchmark-json bench/results/cpu-2core-$(date +%F).json

Every case compares an op with its reference in the same run (same ``group``), so the ratio
survives a noisy machine. Threads: torch and numba both get ``--bench-threads`` (default 2, the
size of the project's CPU budget). Devices: ``--bench-device cpu,cuda``; CUDA cases are skipped
at set-up when no GPU is present (CUDA is never queried at collection time), and CUDA timings
synchronise before the timer stops (``sync`` fixture). Sizes: a module that names its cases in
``SIZES`` (and tiny ones in ``SMOKE_SIZES``) takes a ``bench_size`` argument, parametrised over
``SIZES``, or over ``SMOKE_SIZES`` with ``--bench-smoke`` (the CPU check of ``bench/gpu_check.sh``).
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser):
    group = parser.getgroup("selfmvs-bench")
    group.addoption("--bench-threads", type=int, default=2, help="CPU threads for torch and numba (default 2)")
    group.addoption("--bench-device", default="cpu", help="comma-separated devices: cpu,cuda (default cpu)")
    group.addoption("--bench-smoke", action="store_true",
                    help="the tiny SMOKE_SIZES of modules that have them (seconds on a CPU: checks the bench runs)")


def pytest_configure(config):
    config.addinivalue_line("python_files", "bench_*.py")


def pytest_generate_tests(metafunc):
    if "bench_device" in metafunc.fixturenames:
        devices = metafunc.config.getoption("--bench-device").split(",")
        metafunc.parametrize("bench_device", devices, indirect=True)
    if "bench_size" in metafunc.fixturenames:
        smoke = metafunc.config.getoption("--bench-smoke")
        metafunc.parametrize("bench_size", list(metafunc.module.SMOKE_SIZES if smoke else metafunc.module.SIZES))


@pytest.fixture(scope="session", autouse=True)
def bench_threads(request) -> int:
    """Pin torch's and numba's CPU thread pools for the whole pytest run."""
    import torch

    threads = request.config.getoption("--bench-threads")
    torch.set_num_threads(threads)
    try:
        import numba

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    except ImportError:  # pragma: no cover - numba is a hard dependency of kernels
        pass
    return threads


@pytest.fixture(scope="session")
def bench_smoke(request) -> bool:
    """Whether ``--bench-smoke`` asks for the tiny sizes (cases then keep their rounds to a few)."""
    return request.config.getoption("--bench-smoke")


@pytest.fixture
def bench_device(request):
    import torch

    name = request.param
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("CUDA not available")
    return torch.device(name)


@pytest.fixture
def sync(bench_device):
    """Call after the timed work: waits for the GPU so the timer measures the kernels."""
    import torch

    if bench_device.type == "cuda":
        return lambda: torch.cuda.synchronize(bench_device)
    return lambda: None


@pytest.fixture
def interleaved(benchmark, sync):
    """Time a kernel and its reference alternately, round by round, in one benchmark case.

    ``run(kernel_step, reference_step)``: each pytest-benchmark round runs both steps once, in
    alternating order, timing each with ``perf_counter``; ``extra_info`` gets both series and the
    median of the per-round ratios reference / kernel. Adjacent rounds see the same machine load,
    so on a shared VM this ratio is far steadier than a ratio of two separately timed cases.
    """
    import statistics
    import time

    def run(kernel_step, reference_step, rounds: int = 15, warmup_rounds: int = 2):
        times = {"kernel": [], "reference": []}
        counter = {"round": 0}

        def timed(name, step):
            start = time.perf_counter()
            step()
            sync()
            times[name].append(time.perf_counter() - start)

        def pair():
            order = [("kernel", kernel_step), ("reference", reference_step)]
            if counter["round"] % 2:
                order.reverse()
            counter["round"] += 1
            for name, step in order:
                timed(name, step)

        benchmark.pedantic(pair, rounds=rounds, iterations=1, warmup_rounds=warmup_rounds)
        kept = {k: v[warmup_rounds:] for k, v in times.items()}
        ratios = [r / k for k, r in zip(kept["kernel"], kept["reference"])]
        benchmark.extra_info.update(
            impl="interleaved",
            kernel_s=kept["kernel"],
            reference_s=kept["reference"],
            kernel_median_s=statistics.median(kept["kernel"]),
            reference_median_s=statistics.median(kept["reference"]),
            ratio_median=statistics.median(ratios),
            ratio_min=min(ratios),
            ratio_max=max(ratios),
        )

    return run
