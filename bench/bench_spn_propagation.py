"""Spatial propagation (``kernels.spn_propagate``) vs its plain-torch reference.

    .venv/bin/python -m pytest bench/bench_spn_propagation.py --benchmark-only -p no:cacheprovider

Sizes of the SPN refinement at full resolution: 640x480 (B = 1, 8 steps; B = 2, 24 steps) and
1600x1200 (B = 1, 12 steps), float32, normalised signed affinities (tanh / max(1, sum |tanh|)).
One round of the training cases = forward + ``backward`` to depth and affinities; the inference
case times the forward under ``torch.no_grad``. ``extra_info["ratio_median"]`` of the interleaved
cases is reference time / kernel time.
"""

from __future__ import annotations

import pytest
import torch

from kernels.spn_propagation import spn_propagate, spn_propagate_reference

IMPLS = {"kernel": spn_propagate, "reference": spn_propagate_reference}
#: name -> (batch, height, width, steps)
CASES = {
    "1x640x480-8steps": (1, 480, 640, 8),
    "2x640x480-24steps": (2, 480, 640, 24),
    "1x1600x1200-12steps": (1, 1200, 1600, 12),
}


def _inputs(case, device):
    batch, height, width, _ = CASES[case]
    gen = torch.Generator().manual_seed(0)
    depth = (1.0 + 4.0 * torch.rand((batch, 1, height, width), generator=gen)).to(device)
    squashed = torch.tanh(2.0 * torch.randn((batch, 8, height, width), generator=gen))
    affinity = (squashed / squashed.abs().sum(dim=1, keepdim=True).clamp(min=1.0)).to(device)
    return depth.requires_grad_(), affinity.requires_grad_()


def _training_step(fn, depth, affinity, steps):
    def run():
        depth.grad = None
        affinity.grad = None
        fn(depth, affinity, steps=steps).sum().backward()

    return run


@pytest.mark.parametrize("case", list(CASES))
def test_spn_forward_backward_interleaved(benchmark, interleaved, bench_device, case):
    """Kernel and reference alternating round by round (forward + backward)."""
    depth, affinity = _inputs(case, bench_device)
    steps = CASES[case][3]
    benchmark.group = f"spn_propagation fwd+bwd {case} {bench_device.type} float32"
    benchmark.extra_info.update(case=case, device=str(bench_device), threads=torch.get_num_threads())
    rounds = 5 if CASES[case][1] >= 1200 else 9
    interleaved(
        _training_step(IMPLS["kernel"], depth, affinity, steps),
        _training_step(IMPLS["reference"], depth, affinity, steps),
        rounds=rounds,
        warmup_rounds=1,
    )


def test_spn_forward_inference_interleaved(benchmark, interleaved, bench_device):
    """Forward only, no autograd (what inference runs), 1600x1200, 12 steps."""
    case = "1x1600x1200-12steps"
    depth, affinity = _inputs(case, bench_device)
    steps = CASES[case][3]

    def forward(fn):
        def run():
            with torch.no_grad():
                fn(depth, affinity, steps=steps)

        return run

    benchmark.group = f"spn_propagation forward {case} {bench_device.type} float32"
    benchmark.extra_info.update(case=case, device=str(bench_device), threads=torch.get_num_threads())
    interleaved(forward(IMPLS["kernel"]), forward(IMPLS["reference"]), rounds=9, warmup_rounds=1)
