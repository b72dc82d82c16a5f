"""8-neighbour spatial propagation of a depth map by per-pixel affinities (SPN / CSPN).

Public: ``spn_propagate(depth, affinity, *, steps)``; reference twin ``spn_propagate_reference``.

One step (Liu et al., "Learning Affinity via Spatial Propagation Networks", NIPS 2017, in the
8-neighbour convolutional form of CSPN, Cheng et al. ECCV 2018, eq. 1), with
n_k = ``NEIGHBOUR_OFFSETS[k]`` (the 3x3 ring, row-major, centre skipped) and N(p) the neighbours
of p inside the map::

    d_{t+1}(p) = (1 - sum_k a_k(p)) d_t(p) + sum_k a_k(p) d_t(p + n_k)
               = d_t(p) + sum_{k in N(p)} a_k(p) (d_t(p + n_k) - d_t(p))

Border: zero affinity towards a neighbour outside the map (its term is dropped, and the centre
weight counts only the neighbours inside).

Backward, derived from the second form. With G_{t+1} = dL/dd_{t+1} and the forward's inputs d_t
kept for every step (``steps`` maps of (B, H, W)), step t back gives, for every pixel r::

    dL/da_k(r) += G_{t+1}(r) (d_t(r + n_k) - d_t(r))                      [r + n_k inside]
    G_t(r)      = G_{t+1}(r) (1 - sum_{k: r + n_k inside} a_k(r))
                  + sum_{k: r - n_k inside} a_k(r - n_k) G_{t+1}(r - n_k)

(r is neighbour k of p = r - n_k.) Both are gathers: pixel r reads its own and its eight
neighbours' values and writes only its own G_t and its own eight affinity gradients, so the CPU
and CUDA backwards need no atomics and are deterministic; ``dL/ddepth = G_0``.

Normalisation expected of ``affinity`` (not checked: it would cost a pass and, on a GPU, a
synchronisation per call): sum_k |a_k(p)| <= 1 at every pixel, which bounds each step (Liu et
al. 2017, Sec. 3.2) and makes the centre weight 1 - sum_k a_k lie in [0, 2]. With a_k >= 0 as
well, each step is a convex combination of d(p) and its neighbours, so max d never grows and
min d never shrinks (a discrete maximum principle); signed affinities can overshoot by at most
the local variation. Any affinity gives the linear map above; only its stability depends on it.

CUDA backends: numba.cuda (``cuda.py``) and CUDA C compiled by cupy/NVRTC (``kernels.cu`` launched
by ``cuda_c.py``; rules in ``kernels/_cuda_c``), same semantics and schedule: one thread per pixel
and one launch per step, because step t + 1 reads step t's neighbours (a grid-wide dependency).
``CUDA_BACKEND`` below picks one, ``SELFMVS_CUDA_BACKEND`` overrides it (e.g.
``spn_propagation=cuda_c``). The default stays numba. Choice by measurement: bench/gpu_check.sh
times both; not yet run on a GPU. The CUDA C kernels are checked by NVRTC compiles for sm_80/sm_90
and by a CPU emulation against the reference (tests/kernel_ops/test_cuda_c_ops.py); numba.cuda
keeps the neighbour order in one piece of Python (``_formulas.py``) and runs under numba's
simulator.
"""

from __future__ import annotations

import numbers

import torch

from .._backend import (
    ACCEPTED_DTYPES,
    check_batch,
    check_same_device,
    check_same_dtype,
    check_tensor,
    compute_dtype,
)
from .reference import NEIGHBOUR_OFFSETS, spn_propagate_reference

NUM_NEIGHBOURS = len(NEIGHBOUR_OFFSETS)
#: the CUDA backend, "numba" or "cuda_c" (see the module docstring; env SELFMVS_CUDA_BACKEND overrides)
CUDA_BACKEND = "numba"


def _backend_module(device: torch.device):
    if device.type == "cuda":
        from .._cuda_c import cuda_backend

        if cuda_backend("spn_propagation", CUDA_BACKEND) == "cuda_c":
            from . import cuda_c as backend
        else:
            from . import cuda as backend
    else:
        from . import cpu as backend
    return backend


class _SPNFunction(torch.autograd.Function):
    """Inputs checked, contiguous, one native dtype: depth (B, H, W), affinity (B, 8, H, W).

    Saves every step's input (``steps`` x (B, H, W)) only when a gradient is needed.
    """

    @staticmethod
    def forward(ctx, depth: torch.Tensor, affinity: torch.Tensor, steps: int) -> torch.Tensor:
        keep = any(ctx.needs_input_grad[:2])
        out, history = _backend_module(depth.device).spn_forward(depth, affinity, steps, keep)
        if keep:
            ctx.save_for_backward(history if history is not None else depth.new_empty(0), affinity)
            ctx.steps = steps
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        history, affinity = ctx.saved_tensors
        grad_depth, grad_affinity = _backend_module(affinity.device).spn_backward(
            history if ctx.steps else None, affinity, grad_out.contiguous()
        )
        return (
            grad_depth if ctx.needs_input_grad[0] else None,
            grad_affinity if ctx.needs_input_grad[1] else None,
            None,
        )


def spn_propagate(depth: torch.Tensor, affinity: torch.Tensor, *, steps: int) -> torch.Tensor:
    """``steps`` steps of 8-neighbour spatial propagation, differentiable in depth and affinity.

    d'(p) = (1 - sum_k a_k(p)) d(p) + sum_k a_k(p) d(p + n_k), sums over the neighbours
    inside the map (zero-affinity border); neighbour k is
    at offset ``NEIGHBOUR_OFFSETS[k]`` = (row, column): (-1,-1), (-1,0), (-1,1), (0,-1), (0,1),
    (1,-1), (1,0), (1,1). The affinities are expected ALREADY normalised: sum_k |a_k(p)| <= 1
    per pixel (e.g. tanh outputs divided by max(1, sum_k |tanh|)); the centre weight is then
    1 - sum_k a_k. With a_k >= 0 too, the range of depth never widens (maximum principle).
    All-zero affinities leave depth unchanged.

    float32 and float64 are computed natively; float16 and bfloat16 in float32, the result
    returned in the input dtype. Non-contiguous inputs are made contiguous. Memory: with a
    gradient needed, the op keeps ``steps`` maps of (B, H, W) for backward.

    Args:
        depth: the map to propagate (any units; the op is affine-equivariant in depth).
        affinity: normalised neighbour weights, same batch, height and width as ``depth``.
        steps: number of steps, an integer >= 0.

    Returns:
        The propagated depth.

    Shape:
        - depth: (B, 1, H, W)
        - affinity: (B, 8, H, W)
        - output: (B, 1, H, W)

    Raises:
        TypeError: a non-tensor, an unsupported or mixed dtype, a non-integer ``steps``.
        ValueError: wrong shapes (quoted), different devices, negative ``steps``.
    """
    check_tensor(depth, "spn_propagate: depth", shape=(None, 1, None, None), layout="(B, 1, H, W)",
                 dtypes=ACCEPTED_DTYPES, min_size=(1, 1, 1, 1))
    check_tensor(affinity, "spn_propagate: affinity", shape=(None, NUM_NEIGHBOURS, None, None),
                 layout="(B, 8, H, W)", dtypes=ACCEPTED_DTYPES)
    check_batch({"depth": depth.shape[0], "affinity": affinity.shape[0]})
    if depth.shape[-2:] != affinity.shape[-2:]:
        raise ValueError(
            f"spn_propagate: depth and affinity must share (H, W), got depth {tuple(depth.shape)} "
            f"and affinity {tuple(affinity.shape)}"
        )
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral):
        raise TypeError(f"spn_propagate: steps must be an integer, got {type(steps).__name__} {steps!r}")
    if steps < 0:
        raise ValueError(f"spn_propagate: steps must be >= 0, got {steps}")
    check_same_device(depth=depth, affinity=affinity)
    dtype = check_same_dtype(depth=depth, affinity=affinity)
    work = compute_dtype(dtype)
    batch, _, height, width = depth.shape
    out = _SPNFunction.apply(
        depth.to(work).reshape(batch, height, width).contiguous(), affinity.to(work).contiguous(), int(steps)
    )
    return out.reshape(batch, 1, height, width).to(dtype)


__all__ = ["spn_propagate", "spn_propagate_reference", "NEIGHBOUR_OFFSETS", "NUM_NEIGHBOURS"]
