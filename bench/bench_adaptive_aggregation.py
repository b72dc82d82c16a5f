"""Fused adaptive cost aggregation vs its grid_sample reference, PatchmatchNet's stages.

    .venv/bin/python -m pytest bench/bench_adaptive_aggregation.py --benchmark-only -p no:cacheprovider \
        --benchmark-json bench/results/adaptive-aggregation-cpu-2core-$(date +%F).json

A 640x512 image, batch 1, K=9 neighbours (3x3 pattern dilated by 2, plus learned offsets of a few
pixels): stage 3 at 80x64 (D=48 in the first iteration, D=16 later), stage 2 at 160x128 (D=16),
stage 1 at 320x256 (D=8). One round = forward + backward with gradients to cost, offsets and
weights. ``extra_info["peak_rss_growth_bytes"]``: see ``bench/_memory.py``.
"""

from __future__ import annotations

import pytest
import torch

import kernels
from kernels.adaptive_aggregation import adaptive_aggregation_reference
from kernels.depth_weighted_aggregation import depth_weights_reference

try:
    from _memory import measure, peak_rss_growth
except ImportError:  # collected as bench.bench_adaptive_aggregation
    from bench._memory import measure, peak_rss_growth

NUM_NEIGHBOURS = 9
STAGES = {  # name: (D, H, W)
    "stage3_d48": (48, 64, 80),
    "stage3_d16": (16, 64, 80),
    "stage2": (16, 128, 160),
    "stage1": (8, 256, 320),
}
IMPLS = {"reference": adaptive_aggregation_reference, "fused": kernels.adaptive_aggregation}


def make_inputs(case: str, seed: int = 0, size: tuple[int, int] | None = None):
    D, H, W = STAGES[case]
    if size is not None:
        H, W = size
    K = NUM_NEIGHBOURS
    gen = torch.Generator().manual_seed(seed)
    cost = torch.randn(1, D, H, W, generator=gen).requires_grad_()
    pattern = torch.tensor([(dx, dy) for dy in (-2, 0, 2) for dx in (-2, 0, 2)], dtype=torch.float32)
    offsets = pattern.reshape(1, 2 * K, 1, 1) + torch.randn(1, 2 * K, H, W, generator=gen)
    offsets.requires_grad_()
    weights = torch.rand(1, K, D, H, W, generator=gen).requires_grad_()
    return cost, offsets, weights


def run(fn, cost, offsets, weights):
    out = fn(cost, offsets, weights)
    (out * out).sum().backward()


def measure_case(case: str, impl: str) -> int:
    fn = IMPLS[impl]
    run(fn, *make_inputs(case, size=(8, 8)))  # numba compile / cache load outside the measurement
    return measure(lambda: make_inputs(case), lambda *a: run(fn, *a))


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("case", list(STAGES))
def test_adaptive_aggregation_fwd_bwd(benchmark, case, impl):
    fn = IMPLS[impl]
    run(fn, *make_inputs(case, size=(8, 8)))  # warm-up (numba)
    D, H, W = STAGES[case]
    benchmark.group = f"adaptive_aggregation-{case}"
    benchmark.extra_info.update(dict(D=D, H=H, W=W, K=NUM_NEIGHBOURS, threads=torch.get_num_threads()))
    benchmark.extra_info["peak_rss_growth_bytes"] = peak_rss_growth("bench_adaptive_aggregation", case, impl)
    benchmark.pedantic(lambda *a: run(fn, *a), setup=lambda: (make_inputs(case), {}), rounds=5, iterations=1)


def _weights_then_aggregate(cost, offsets, inverse, feature_weight, scale):
    """The network's inference path before the fused kernel: K border-clamped ``grid_sample``
    passes over the inverse depths build the (B, K, D, H, W) weights, then the aggregation."""
    weights = depth_weights_reference(inverse, offsets, feature_weight, scale)
    return kernels.adaptive_aggregation(cost, offsets, weights)


DEPTH_IMPLS = {"weights_then_aggregation": _weights_then_aggregate, "fused": kernels.depth_weighted_aggregation}


def make_depth_inputs(case: str, seed: int = 0):
    cost, offsets, weights = make_inputs(case, seed)
    D, H, W = STAGES[case]
    gen = torch.Generator().manual_seed(seed + 1)
    inverse = 0.3 + 0.01 * torch.randn(1, D, H, W, generator=gen)  # perturbations of a smooth map
    feature_weight = torch.rand(1, NUM_NEIGHBOURS, H, W, generator=gen)
    return cost.detach(), offsets.detach(), inverse, feature_weight, torch.tensor([200.0])


@pytest.mark.parametrize("impl", list(DEPTH_IMPLS))
@pytest.mark.parametrize("case", list(STAGES))
def test_depth_weighted_aggregation_inference(benchmark, case, impl):
    """Inference (no autograd) as the network runs it: weights of PatchmatchNet's eq. 7 + aggregation."""
    fn = DEPTH_IMPLS[impl]
    with torch.no_grad():
        fn(*make_depth_inputs(case))  # warm-up (numba cache load)
    D, H, W = STAGES[case]
    benchmark.group = f"depth_weighted_aggregation-{case}"
    benchmark.extra_info.update(dict(D=D, H=H, W=W, K=NUM_NEIGHBOURS, threads=torch.get_num_threads()))

    def call(*args):
        with torch.no_grad():
            fn(*args)

    benchmark.pedantic(call, setup=lambda: (make_depth_inputs(case), {}), rounds=7, iterations=1)


FEATURE_STAGES = {"stage3": (64, 8, 64, 80), "stage2": (32, 8, 128, 160), "stage1": (16, 4, 256, 320)}  # C, G, H, W


def _per_neighbour_loop(feature, offsets, num_groups):
    """The network's path before the kernel: one ``grid_sample`` of the whole map per neighbour."""
    from pipeline.model.patchmatch import offset_grids, sample  # bench only; kernels never import pipeline

    B, C, H, W = feature.shape
    centre = feature.view(B, num_groups, C // num_groups, H, W)
    return torch.stack(
        [(centre * sample(feature, grid).view(B, num_groups, C // num_groups, H, W)).mean(dim=2) for grid in offset_grids(offsets)],
        dim=2,
    )


FEATURE_IMPLS = {"per_neighbour_grid_sample": _per_neighbour_loop, "kernel": kernels.neighbour_correlation}


@pytest.mark.parametrize("impl", list(FEATURE_IMPLS))
@pytest.mark.parametrize("case", list(FEATURE_STAGES))
def test_neighbour_correlation_inference(benchmark, case, impl):
    """The correlations the feature weights are computed from, per stage (no autograd)."""
    C, G, H, W = FEATURE_STAGES[case]
    fn = FEATURE_IMPLS[impl]
    gen = torch.Generator().manual_seed(0)
    pattern = torch.tensor([(dx, dy) for dy in (-2, 0, 2) for dx in (-2, 0, 2)], dtype=torch.float32)

    def setup():
        feature = torch.randn(1, C, H, W, generator=gen)
        offsets = pattern.reshape(1, 2 * NUM_NEIGHBOURS, 1, 1) + torch.randn(1, 2 * NUM_NEIGHBOURS, H, W, generator=gen)
        return (feature, offsets, G), {}

    def call(*args):
        with torch.no_grad():
            fn(*args)

    call(*setup()[0])  # warm-up (numba cache load)
    benchmark.group = f"neighbour_correlation-{case}"
    benchmark.extra_info.update(dict(C=C, G=G, H=H, W=W, K=NUM_NEIGHBOURS, threads=torch.get_num_threads()))
    benchmark.pedantic(call, setup=setup, rounds=7, iterations=1)
