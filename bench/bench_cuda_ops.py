"""The fused warp + correlation and adaptive aggregation on a GPU, against their references there.

    python3 -m pytest bench/bench_cuda_ops.py --bench-device cuda --benchmark-only -p no:cacheprovider \
        --benchmark-json bench/results/cuda-ops-<machine>-$(date +%F).json

The same inputs as ``bench_warp_correlation.py`` / ``bench_adaptive_aggregation.py`` (PatchmatchNet's
stages of a 640x512 image, 4 source views, batch 1), moved to the device; one round = forward +
backward, synchronised before the timer stops. CPU cases are skipped here: the two CPU benches
cover them with their memory figures.
"""

from __future__ import annotations

import pytest
import torch

try:
    import bench_adaptive_aggregation as agg
    import bench_warp_correlation as corr
except ImportError:  # collected as bench.bench_cuda_ops
    from bench import bench_adaptive_aggregation as agg
    from bench import bench_warp_correlation as corr

ROUNDS = 20


def _on(device, tensors):
    """Leaf copies on ``device`` that keep ``requires_grad``."""
    return [t.detach().to(device).requires_grad_(t.requires_grad) for t in tensors]


def _skip_cpu(bench_device):
    if bench_device.type != "cuda":
        pytest.skip("CPU timings: bench_warp_correlation.py / bench_adaptive_aggregation.py")


def _time_on_device(benchmark, bench_device, sync, make_args, run, group: str, info: dict) -> None:
    """Warm up twice (compile, allocator), then time ``run(*make_args())`` synchronised, ROUNDS times,
    fresh inputs per round; records the card and the peak CUDA memory of the timed rounds."""

    def setup():
        args = make_args()
        sync()
        return args, {}

    def step(*args):
        run(*args)
        sync()

    for _ in range(2):
        step(*setup()[0])
    benchmark.group = f"{group} {bench_device.type}"
    benchmark.extra_info.update(info, device=str(bench_device), card=torch.cuda.get_device_name(bench_device))
    torch.cuda.reset_peak_memory_stats(bench_device)
    benchmark.pedantic(step, setup=setup, rounds=ROUNDS, iterations=1)
    benchmark.extra_info["peak_cuda_bytes"] = torch.cuda.max_memory_allocated(bench_device)


@pytest.mark.parametrize("impl", list(corr.IMPLS))
@pytest.mark.parametrize("case", list(corr.STAGES))
def test_warp_correlation_cuda(benchmark, bench_device, sync, case, impl):
    _skip_cpu(bench_device)
    fn = corr.IMPLS[impl]

    def make_args():
        ref, srcs, K, poses, depth, G = corr.make_inputs(case)
        ref, *srcs = _on(bench_device, [ref, *srcs])
        return ref, srcs, K.to(bench_device), [p.to(bench_device) for p in poses], depth.to(bench_device), G

    C, G, D, H, W = corr.STAGES[case]
    info = dict(C=C, G=G, D=D, H=H, W=W, views=corr.NUM_VIEWS, impl=impl)
    _time_on_device(benchmark, bench_device, sync, make_args, lambda *a: corr.run(fn, *a), f"warp_correlation-{case}", info)


@pytest.mark.parametrize("impl", list(agg.IMPLS))
@pytest.mark.parametrize("case", list(agg.STAGES))
def test_adaptive_aggregation_cuda(benchmark, bench_device, sync, case, impl):
    _skip_cpu(bench_device)
    fn = agg.IMPLS[impl]
    D, H, W = agg.STAGES[case]
    info = dict(D=D, H=H, W=W, K=agg.NUM_NEIGHBOURS, impl=impl)
    _time_on_device(benchmark, bench_device, sync, lambda: tuple(_on(bench_device, agg.make_inputs(case))),
                    lambda *a: agg.run(fn, *a), f"adaptive_aggregation-{case}", info)
