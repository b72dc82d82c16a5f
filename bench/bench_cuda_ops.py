"""The fused warp + correlation and adaptive aggregation on a GPU, against their references there.

    python3 -m pytest bench/bench_cuda_ops.py --bench-device cuda --benchmark-only -p no:cacheprovider \
        --benchmark-json bench/results/cuda-ops-<card>-$(date +%F).json

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


@pytest.mark.parametrize("impl", list(corr.IMPLS))
@pytest.mark.parametrize("case", list(corr.STAGES))
def test_warp_correlation_cuda(benchmark, bench_device, sync, case, impl):
    _skip_cpu(bench_device)
    fn = corr.IMPLS[impl]

    def setup():
        ref, srcs, K, poses, depth, G = corr.make_inputs(case)
        ref, *srcs = _on(bench_device, [ref, *srcs])
        K, depth = K.to(bench_device), depth.to(bench_device)
        poses = [p.to(bench_device) for p in poses]
        sync()
        return (ref, srcs, K, poses, depth, G), {}

    def step(*args):
        corr.run(fn, *args)
        sync()

    for _ in range(2):  # compile + allocator warm-up
        step(*setup()[0])
    C, G, D, H, W = corr.STAGES[case]
    benchmark.group = f"warp_correlation-{case} {bench_device.type}"
    benchmark.extra_info.update(dict(C=C, G=G, D=D, H=H, W=W, views=corr.NUM_VIEWS, device=str(bench_device),
                                     card=torch.cuda.get_device_name(bench_device), impl=impl))
    torch.cuda.reset_peak_memory_stats(bench_device)
    benchmark.pedantic(step, setup=setup, rounds=ROUNDS, iterations=1)
    benchmark.extra_info["peak_cuda_bytes"] = torch.cuda.max_memory_allocated(bench_device)


@pytest.mark.parametrize("impl", list(agg.IMPLS))
@pytest.mark.parametrize("case", list(agg.STAGES))
def test_adaptive_aggregation_cuda(benchmark, bench_device, sync, case, impl):
    _skip_cpu(bench_device)
    fn = agg.IMPLS[impl]

    def setup():
        inputs = _on(bench_device, agg.make_inputs(case))
        sync()
        return tuple(inputs), {}

    def step(*args):
        agg.run(fn, *args)
        sync()

    for _ in range(2):
        step(*setup()[0])
    D, H, W = agg.STAGES[case]
    benchmark.group = f"adaptive_aggregation-{case} {bench_device.type}"
    benchmark.extra_info.update(dict(D=D, H=H, W=W, K=agg.NUM_NEIGHBOURS, device=str(bench_device),
                                     card=torch.cuda.get_device_name(bench_device), impl=impl))
    torch.cuda.reset_peak_memory_stats(bench_device)
    benchmark.pedantic(step, setup=setup, rounds=ROUNDS, iterations=1)
    benchmark.extra_info["peak_cuda_bytes"] = torch.cuda.max_memory_allocated(bench_device)
