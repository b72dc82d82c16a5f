"""Every op of kernels/ against its torch reference, forward + backward, at the network's sizes.

    python3 -m pytest bench/bench_cuda_ops.py --bench-device cuda --benchmark-only -p no:cacheprovider \
        --benchmark-json bench/results/cuda-ops-<machine>-$(date +%F).json
    .venv/bin/python -m pytest bench/bench_cuda_ops.py --bench-smoke --benchmark-only   # tiny, on the CPU

One case per (op, size): the kernel and its reference alternate round by round (the ``interleaved``
fixture: both see the same machine load), CUDA synchronised before each timer stops. Sizes
(``SIZES``, image batch x height x width; each op at the stage of the network where it runs):

- ``train-b2-320x240``: a training batch of 2 at 320x240;
- ``infer-640x512`` and ``infer-1600x1200``: one view at inference (the ops run forward + backward
  here too, so the table compares like with like across sizes).

Per op: ssim and warp_image on the full-resolution image (the losses); warp_correlation,
adaptive_aggregation, depth_weighted_aggregation, neighbour_correlation and pointwise_mlp (the
similarity net, G -> 16 -> 8 -> 1) at stage 1 (1/2 resolution, C=16, G=4, D=8, K=9, one source
view); spn_propagate at full resolution, 12 steps. Every floating input that the network
differentiates requires gradients; the backward is that of ``out.sum()``.

Ops with CUDA C kernels as well (``CUDA_C_OPS``: ``kernels/<op>/kernels.cu``, see kernels/_cuda_c) run
twice on a GPU: ``op`` with ``SELFMVS_CUDA_BACKEND=<op>=numba`` and ``op:cuda_c`` (``extra_info``
``op`` reads ``<op> [cuda_c]``) with ``<op>=cuda_c``, so one run times both CUDA backends against the
same reference; the ``:cuda_c`` cases skip off a GPU.

``extra_info`` per case: ``ratio_median`` (reference time / kernel time, target >= 3), the peak CUDA
memory of one round of each (``torch.cuda.max_memory_allocated`` after a reset, less what the inputs
already held) and their ratio kernel / reference (target <= 1/4), and for ssim and warp_image the
achieved GB/s of the kernel against the card's DRAM bandwidth (byte models in ``_ssim`` and
``_warp_image``). Under autograd pointwise_mlp and neighbour_correlation run their references (their
kernels are inference-only), so their ratio reads about 1, as in a training step; depth_weighted_aggregation
builds its weights in torch there and aggregates with the adaptive_aggregation kernel.
"""

from __future__ import annotations

import gc
import math

import pytest
import torch

import kernels
from kernels._cuda_c import SOURCES as CUDA_C_SOURCES
from kernels.adaptive_aggregation import adaptive_aggregation_reference
from kernels.depth_weighted_aggregation import depth_weighted_aggregation_reference
from kernels.neighbour_correlation import neighbour_correlation_reference
from kernels.pointwise_mlp import pointwise_mlp_reference
from kernels.spn_propagation import spn_propagate_reference
from kernels.ssim import ssim_reference
from kernels.warp_correlation import warp_correlation_reference
from kernels.warp_image import warp_image_reference

#: name -> (batch, height, width) of the images
SIZES = {"train-b2-320x240": (2, 240, 320), "infer-640x512": (1, 512, 640), "infer-1600x1200": (1, 1200, 1600)}
SMOKE_SIZES = {"smoke-b2-32x24": (2, 24, 32)}
#: stage 1 of PatchmatchNet (1/2 resolution): feature channels, groups, hypotheses, sampling points
CHANNELS, GROUPS, HYPOTHESES, NEIGHBOURS = 16, 4, 8, 9
SPN_STEPS = 12
ROUNDS, WARMUP_ROUNDS = 10, 2  # --bench-smoke: 2, 1
FLOAT_BYTES = 4
#: DRAM bandwidth, bytes/s, from the vendors' datasheets (first match of the device name wins).
DRAM_BANDWIDTH = (("H200", 4.8e12), ("H100 PCIe", 2.0e12), ("H100 NVL", 3.9e12), ("H100", 3.35e12),
                  ("A100-SXM4-80GB", 2.039e12), ("A100", 1.555e12))


def dram_bandwidth(device: torch.device) -> tuple[float | None, str]:
    """The card's DRAM bandwidth in bytes/s and where it came from (None off a GPU or for an unknown card)."""
    if device.type != "cuda":
        return None, "no GPU"
    name = torch.cuda.get_device_name(device)
    for key, value in DRAM_BANDWIDTH:
        if key in name:
            return value, f"datasheet ({key})"
    props = torch.cuda.get_device_properties(device)
    clock_khz, bus_bits = getattr(props, "memory_clock_rate", 0), getattr(props, "memory_bus_width", 0)
    if clock_khz and bus_bits:  # double data rate: two transfers per clock
        return 2 * clock_khz * 1e3 * bus_bits / 8, "device properties (memory clock x bus width)"
    return None, f"unknown card {name!r}"


def _leaf(tensor: torch.Tensor, device, grad: bool = True) -> torch.Tensor:
    return tensor.to(device).requires_grad_(grad)


def _camera(batch: int, height: int, width: int, device):
    """K (B, 3, 3) at (height, width) and src_from_ref (B, 4, 4): a source 0.3 units to the side, turned 0.05 rad."""
    f = 0.9 * width
    K = torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]]).expand(batch, 3, 3).contiguous()
    pose = torch.eye(4).repeat(batch, 1, 1)
    pose[:, 0, 0] = pose[:, 2, 2] = math.cos(0.05)
    pose[:, 0, 2], pose[:, 2, 0] = math.sin(0.05), -math.sin(0.05)
    pose[:, 0, 3] = -0.3
    return K.to(device), pose.to(device)


def _offsets(gen, batch: int, height: int, width: int) -> torch.Tensor:
    """PatchmatchNet's sampling pattern (3x3 dilated by 2) plus learned offsets of about a pixel, (B, 2K, H, W)."""
    pattern = torch.tensor([(dx, dy) for dy in (-2, 0, 2) for dx in (-2, 0, 2)], dtype=torch.float32)
    return pattern.reshape(1, 2 * NEIGHBOURS, 1, 1) + torch.randn(batch, 2 * NEIGHBOURS, height, width, generator=gen)


def _ssim(gen, batch, height, width, device):
    x = _leaf(torch.rand(batch, 3, height, width, generator=gen), device)
    y = _leaf(torch.rand(batch, 3, height, width, generator=gen), device)
    # Bytes: the least a fused forward + backward moves, each map read or written once (the 3x3
    # window's reuse stays in cache): forward reads x, y and writes the map (3 N), backward reads
    # x, y and the map's gradient and writes both gradients (5 N); N = B * 3 * H * W floats.
    moved = 8 * x.numel() * FLOAT_BYTES
    return (x, y), {}, moved


def _warp_image(gen, batch, height, width, device):
    src = _leaf(torch.rand(batch, 3, height, width, generator=gen), device)
    depth = _leaf(2 + 4 * torch.rand(batch, 1, height, width, generator=gen), device)
    K, pose = _camera(batch, height, width, device)
    # Bytes, for P = B * H * W pixels, C = 3 channels, S = B * C * Hs * Ws source floats: forward reads
    # the depth (P) and each source texel once (S), writes the warped image (C P) and the valid mask
    # (P bytes); backward reads the warped image's gradient (C P), the depth (P) and the source (S),
    # writes the source's gradient (S) and the depth's (P).
    pixels, texels = depth.numel(), src.numel()
    moved = (3 * pixels + 3 * texels + 2 * 3 * pixels) * FLOAT_BYTES + pixels
    return (src, depth, K, K, pose), {}, moved


def _warp_correlation(gen, batch, height, width, device):
    h, w = height // 2, width // 2
    ref = _leaf(torch.randn(batch, CHANNELS, h, w, generator=gen), device)
    src = _leaf(torch.randn(batch, CHANNELS, h, w, generator=gen), device)
    K, pose = _camera(batch, h, w, device)
    base = torch.linspace(2.0, 10.0, HYPOTHESES).view(1, HYPOTHESES, 1, 1)
    depth = (base * (1 + 0.05 * torch.rand(batch, 1, h, w, generator=gen))).to(device)
    return (ref, src, K, K, pose, depth, GROUPS), {}, None


def _adaptive_aggregation(gen, batch, height, width, device):
    h, w = height // 2, width // 2
    cost = _leaf(torch.randn(batch, HYPOTHESES, h, w, generator=gen), device)
    offsets = _leaf(_offsets(gen, batch, h, w), device)
    weights = _leaf(torch.rand(batch, NEIGHBOURS, HYPOTHESES, h, w, generator=gen), device)
    return (cost, offsets, weights), {}, None


def _depth_weighted_aggregation(gen, batch, height, width, device):
    h, w = height // 2, width // 2
    cost = _leaf(torch.randn(batch, HYPOTHESES, h, w, generator=gen), device)
    offsets = _leaf(_offsets(gen, batch, h, w), device)
    inverse = _leaf(0.3 + 0.01 * torch.randn(batch, HYPOTHESES, h, w, generator=gen), device)
    feature_weight = _leaf(torch.rand(batch, NEIGHBOURS, h, w, generator=gen), device)
    scale = torch.full((batch,), 200.0, device=device)
    return (cost, offsets, inverse, feature_weight, scale), {}, None


def _neighbour_correlation(gen, batch, height, width, device):
    h, w = height // 2, width // 2
    feature = _leaf(torch.randn(batch, CHANNELS, h, w, generator=gen), device)
    offsets = _leaf(_offsets(gen, batch, h, w), device)
    return (feature, offsets, GROUPS), {}, None


def _pointwise_mlp(gen, batch, height, width, device):
    h, w = height // 2, width // 2
    x = _leaf(torch.randn(batch, GROUPS, HYPOTHESES, h, w, generator=gen), device)
    widths = (GROUPS, 16, 8, 1)
    weights = [_leaf(torch.randn(o, i, generator=gen) / math.sqrt(i), device) for i, o in zip(widths, widths[1:])]
    biases = [_leaf(torch.zeros(o), device) for o in widths[1:]]
    return (x, weights, biases), {}, None


def _spn_propagation(gen, batch, height, width, device):
    depth = _leaf(1.0 + 4.0 * torch.rand(batch, 1, height, width, generator=gen), device)
    squashed = torch.tanh(2.0 * torch.randn(batch, 8, height, width, generator=gen))
    affinity = _leaf(squashed / squashed.abs().sum(dim=1, keepdim=True).clamp(min=1.0), device)
    return (depth, affinity), {"steps": SPN_STEPS}, None


#: op -> (kernel, reference, make_inputs(generator, batch, height, width, device) -> (args, kwargs, bytes or None))
OPS = {
    "ssim": (kernels.ssim, ssim_reference, _ssim),
    "warp_image": (kernels.warp_image, warp_image_reference, _warp_image),
    "warp_correlation": (kernels.warp_correlation, warp_correlation_reference, _warp_correlation),
    "adaptive_aggregation": (kernels.adaptive_aggregation, adaptive_aggregation_reference, _adaptive_aggregation),
    "depth_weighted_aggregation": (kernels.depth_weighted_aggregation, depth_weighted_aggregation_reference,
                                   _depth_weighted_aggregation),
    "neighbour_correlation": (kernels.neighbour_correlation, neighbour_correlation_reference, _neighbour_correlation),
    "pointwise_mlp": (kernels.pointwise_mlp, pointwise_mlp_reference, _pointwise_mlp),
    "spn_propagation": (kernels.spn_propagate, spn_propagate_reference, _spn_propagation),
}


#: ops timed with both CUDA backends (numba.cuda and CUDA C): every op with a registered kernels.cu;
#: the CUDA C cases are "<op>:cuda_c"
CUDA_C_OPS = tuple(op for op in OPS if op in CUDA_C_SOURCES)
CASES = [*OPS, *(f"{op}:cuda_c" for op in CUDA_C_OPS)]


def _leaves(args) -> list[torch.Tensor]:
    flat = [t for a in args for t in (a if isinstance(a, list) else [a])]
    return [t for t in flat if isinstance(t, torch.Tensor) and t.requires_grad]


def fwd_bwd(fn, args, kwargs):
    """One round: gradients cleared, forward, backward of ``out.sum()`` (the first output of a tuple)."""
    leaves = _leaves(args)

    def step():
        for t in leaves:
            t.grad = None
        out = fn(*args, **kwargs)
        (out[0] if isinstance(out, tuple) else out).sum().backward()

    step.leaves = leaves
    return step


def peak_cuda_bytes(step, device: torch.device, sync) -> int | None:
    """Peak CUDA memory of one ``step()`` above what its inputs hold (None off a GPU): the gradients of the
    last round are freed first, so the figure includes the new ones with the op's own buffers."""
    if device.type != "cuda":
        return None
    for t in step.leaves:
        t.grad = None
    gc.collect()
    sync()
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    sync()
    return torch.cuda.max_memory_allocated(device) - before


@pytest.mark.parametrize("op", CASES)
def test_op_fwd_bwd(benchmark, interleaved, bench_device, sync, bench_size, bench_smoke, op, monkeypatch):
    op, _, backend = op.partition(":")
    if backend and bench_device.type != "cuda":
        pytest.skip(f"{op}:{backend}: CUDA C kernels are timed on a GPU only")
    if op in CUDA_C_OPS:
        from kernels._cuda_c import ENV_VAR

        monkeypatch.setenv(ENV_VAR, f"{op}={backend or 'numba'}")
    kernel, reference, make_inputs = OPS[op]
    batch, height, width = (SMOKE_SIZES | SIZES)[bench_size]
    args, kwargs, moved = make_inputs(torch.Generator().manual_seed(0), batch, height, width, bench_device)
    kernel_step, reference_step = fwd_bwd(kernel, args, kwargs), fwd_bwd(reference, args, kwargs)
    benchmark.group = f"op {op} {bench_size} {bench_device.type}"
    benchmark.extra_info.update(op=f"{op} [{backend}]" if backend else op, size=bench_size, batch=batch, height=height, width=width,
                                device=str(bench_device), threads=torch.get_num_threads())
    if bench_device.type == "cuda":
        benchmark.extra_info["card"] = torch.cuda.get_device_name(bench_device)
    rounds, warmup_rounds = (2, 1) if bench_smoke else (ROUNDS, WARMUP_ROUNDS)
    interleaved(kernel_step, reference_step, rounds=rounds, warmup_rounds=warmup_rounds)
    kernel_peak = peak_cuda_bytes(kernel_step, bench_device, sync)
    reference_peak = peak_cuda_bytes(reference_step, bench_device, sync)
    benchmark.extra_info.update(kernel_peak_cuda_bytes=kernel_peak, reference_peak_cuda_bytes=reference_peak,
                                peak_ratio=kernel_peak / reference_peak if kernel_peak is not None and reference_peak else None)
    if moved is not None:
        bandwidth, source = dram_bandwidth(bench_device)
        achieved = moved / benchmark.extra_info["kernel_median_s"]
        benchmark.extra_info.update(bytes_moved=moved, achieved_bytes_per_s=achieved, dram_bytes_per_s=bandwidth,
                                    dram_source=source, dram_fraction=achieved / bandwidth if bandwidth else None)
