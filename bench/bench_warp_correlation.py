"""Fused warp + group-wise correlation vs its grid_sample reference, PatchmatchNet's stages.

    .venv/bin/python -m pytest bench/bench_warp_correlation.py --benchmark-only -p no:cacheprovider \
        --benchmark-json bench/results/warp-correlation-cpu-2core-$(date +%F).json

A 640x512 image, 4 source views, batch 1: stage 3 at 80x64 (C=64, G=8, D=48 in the first
iteration, D=16 later), stage 2 at 160x128 (C=32, G=8, D=16), stage 1 at 320x256 (C=16, G=4,
D=8). One round = forward for the 4 views (correlations kept alive, as in the network) + one
backward. ``extra_info["peak_rss_growth_bytes"]``: see ``bench/_memory.py`` (a fresh
subprocess per case).
"""

from __future__ import annotations

import pytest
import torch

import kernels
from kernels.warp_correlation import warp_correlation_reference

try:
    from _memory import measure, peak_rss_growth
except ImportError:  # collected as bench.bench_warp_correlation
    from bench._memory import measure, peak_rss_growth

NUM_VIEWS = 4
STAGES = {  # name: (C, G, D, H, W)
    "stage3_d48": (64, 8, 48, 64, 80),
    "stage3_d16": (64, 8, 16, 64, 80),
    "stage2": (32, 8, 16, 128, 160),
    "stage1": (16, 4, 8, 256, 320),
}
IMPLS = {"reference": warp_correlation_reference, "fused": kernels.warp_correlation}


def make_inputs(case: str, seed: int = 0):
    """Reference + 4 source feature maps, cameras 10% of the depth apart, depths over [2, 10]."""
    C, G, D, H, W = STAGES[case]
    gen = torch.Generator().manual_seed(seed)
    ref = torch.randn(1, C, H, W, generator=gen).requires_grad_()
    srcs = [torch.randn(1, C, H, W, generator=gen).requires_grad_() for _ in range(NUM_VIEWS)]
    f = 0.8 * W
    K = torch.tensor([[[f, 0.0, W / 2], [0.0, f, H / 2], [0.0, 0.0, 1.0]]])
    poses = []
    for v in range(NUM_VIEWS):
        pose = torch.eye(4).unsqueeze(0)
        pose[0, 0, 3] = 0.3 * (1 if v % 2 else -1)
        pose[0, 1, 3] = 0.1 * (v - 1.5)
        poses.append(pose)
    base = torch.linspace(2.0, 10.0, D).view(1, D, 1, 1)
    depth = (base * (1 + 0.05 * torch.rand(1, 1, H, W, generator=gen))).contiguous()
    return ref, srcs, K, poses, depth, G


def run(fn, ref, srcs, K, poses, depth, G):
    correlations = [fn(ref, src, K, K, pose, depth, G)[0] for src, pose in zip(srcs, poses)]
    loss = sum((c * c).sum() for c in correlations)  # a non-constant upstream gradient
    loss.backward()


def make_inputs_small(case: str):
    """An 8x8 crop of the case: warms numba up (compile / cache load) with the same dtypes."""
    ref, srcs, K, poses, depth, G = make_inputs(case)
    crop = lambda t: t[..., :8, :8].detach().contiguous()  # noqa: E731
    return crop(ref).requires_grad_(), [crop(s).requires_grad_() for s in srcs], K, poses, crop(depth), G


def measure_case(case: str, impl: str) -> int:
    fn = IMPLS[impl]
    run(fn, *make_inputs_small(case))  # numba compile / cache load outside the measurement
    return measure(lambda: make_inputs(case), lambda *a: run(fn, *a))


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("case", list(STAGES))
def test_warp_correlation_fwd_bwd(benchmark, case, impl):
    fn = IMPLS[impl]
    run(fn, *make_inputs_small(case))  # warm-up (numba)
    C, G, D, H, W = STAGES[case]
    benchmark.group = f"warp_correlation-{case}"
    benchmark.extra_info.update(dict(C=C, G=G, D=D, H=H, W=W, views=NUM_VIEWS, threads=torch.get_num_threads()))
    benchmark.extra_info["peak_rss_growth_bytes"] = peak_rss_growth("bench_warp_correlation", case, impl)
    benchmark.pedantic(lambda *a: run(fn, *a), setup=lambda: (make_inputs(case), {}), rounds=3, iterations=1)
