"""warp_image forward + backward: kernel vs the plain-torch reference.

    .venv/bin/python -m pytest bench/bench_warp_image.py --benchmark-only -p no:cacheprovider

A 3x512x640 source image warped into a 512x640 reference view (and a batch of 4 at 256x320),
depths over [2, 6], a source camera 0.3 units to the side and slightly rotated (~85 % of the
pixels valid), float32; gradients to both image and depth. One round = forward + backward.
"""

from __future__ import annotations

import math

import pytest
import torch

import kernels
from kernels.warp_image import warp_image_reference

IMPLS = {"kernel": kernels.warp_image, "reference": warp_image_reference}
SHAPES = {"1x3x512x640": (1, 3, 512, 640), "4x3x256x320": (4, 3, 256, 320)}


def make_inputs(shape, device):
    batch, channels, height, width = shape
    gen = torch.Generator().manual_seed(0)
    src = torch.rand((batch, channels, height, width), generator=gen)
    depth = 2 + 4 * torch.rand((batch, 1, height, width), generator=gen)
    f = 0.9 * width
    K = torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]]).expand(batch, 3, 3)
    pose = torch.eye(4).repeat(batch, 1, 1)
    angle = 0.05
    pose[:, 0, 0] = pose[:, 2, 2] = math.cos(angle)
    pose[:, 0, 2] = math.sin(angle)
    pose[:, 2, 0] = -math.sin(angle)
    pose[:, 0, 3] = -0.3
    to = dict(device=device)
    return src.to(**to).requires_grad_(), depth.to(**to).requires_grad_(), K.to(**to), K.to(**to), pose.to(**to)


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_warp_image_forward_backward(benchmark, bench_device, sync, impl, shape):
    fn = IMPLS[impl]
    src, depth, ref_K, src_K, src_from_ref = make_inputs(SHAPES[shape], bench_device)

    def step():
        src.grad = None
        depth.grad = None
        warped, _ = fn(src, depth, ref_K, src_K, src_from_ref)
        warped.sum().backward()
        sync()

    benchmark.group = f"warp_image fwd+bwd {shape} {bench_device.type} float32"
    benchmark.extra_info.update(impl=impl, shape=shape, device=str(bench_device), threads=torch.get_num_threads())
    benchmark.pedantic(step, rounds=15, iterations=1, warmup_rounds=2)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_warp_image_interleaved_ratio(benchmark, interleaved, bench_device, shape):
    """Kernel and reference alternating round by round; see ``extra_info["ratio_median"]``."""
    src, depth, ref_K, src_K, src_from_ref = make_inputs(SHAPES[shape], bench_device)

    def step(fn):
        def run():
            src.grad = None
            depth.grad = None
            warped, _ = fn(src, depth, ref_K, src_K, src_from_ref)
            warped.sum().backward()

        return run

    benchmark.group = f"warp_image interleaved {shape} {bench_device.type} float32"
    benchmark.extra_info.update(shape=shape, device=str(bench_device), threads=torch.get_num_threads())
    interleaved(step(IMPLS["kernel"]), step(IMPLS["reference"]))
