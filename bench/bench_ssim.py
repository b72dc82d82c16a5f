"""SSIM map forward + backward: fused kernel vs the plain-torch reference.

    .venv/bin/python -m pytest bench/bench_ssim.py --benchmark-only -p no:cacheprovider

Shape 1x3x512x640 (the photometric loss of one full-resolution view) and 4x3x256x320 (a batch at
half resolution), reflect padding, float32, both inputs requiring gradients. One round = forward
+ ``sum().backward()``.
"""

from __future__ import annotations

import pytest
import torch

import kernels
from kernels.ssim import ssim_reference

IMPLS = {"kernel": kernels.ssim, "reference": ssim_reference}
SHAPES = {"1x3x512x640": (1, 3, 512, 640), "4x3x256x320": (4, 3, 256, 320)}


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_ssim_forward_backward(benchmark, bench_device, sync, impl, shape):
    fn = IMPLS[impl]
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(SHAPES[shape], generator=gen).to(bench_device).requires_grad_()
    y = torch.rand(SHAPES[shape], generator=gen).to(bench_device).requires_grad_()

    def step():
        x.grad = None
        y.grad = None
        fn(x, y).sum().backward()
        sync()

    benchmark.group = f"ssim fwd+bwd {shape} {bench_device.type} float32"
    benchmark.extra_info.update(impl=impl, shape=shape, device=str(bench_device), threads=torch.get_num_threads())
    benchmark.pedantic(step, rounds=15, iterations=1, warmup_rounds=2)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_ssim_interleaved_ratio(benchmark, interleaved, bench_device, shape):
    """Kernel and reference alternating round by round; see ``extra_info["ratio_median"]``."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(SHAPES[shape], generator=gen).to(bench_device).requires_grad_()
    y = torch.rand(SHAPES[shape], generator=gen).to(bench_device).requires_grad_()

    def step(fn):
        def run():
            x.grad = None
            y.grad = None
            fn(x, y).sum().backward()

        return run

    benchmark.group = f"ssim interleaved {shape} {bench_device.type} float32"
    benchmark.extra_info.update(shape=shape, device=str(bench_device), threads=torch.get_num_threads())
    interleaved(step(IMPLS["kernel"]), step(IMPLS["reference"]))
