"""CPU kernels of the fused warp + group-wise correlation (numba, ``parallel=True``).

Forward: one parallel task per reference row; the source features are read channels-last
(``(B, Hs, Ws, C)``, a transient copy) so a corner's channels are one contiguous run; a sample's
correlation is blended from the group dot products at its 4 integer corners, reused between a
pixel's consecutive hypotheses that share corners; the warped volume is never stored. Backward: recomputes the sample positions; one
parallel task per (batch, channel block), which owns those channels of both gradients (read and
written channels-first, no copies), so no atomics and no private gradient buffers.
Sample positions are computed in float64 also for float32 features (numba promotes the integer
pixel index), so they are at least as accurate as the reference's.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

from .._backend import numba_threads, prefer_workqueue_threading

prefer_workqueue_threading()  # see its docstring: ~15x less call overhead next to torch's OpenMP


@numba.njit(inline="always")
def _sample_position(proj, consts, b, px, py, depth):
    """Source sample (x, y) in pixel-index units and validity; the reference's formula, term order."""
    r0 = (proj[b, 0] * px + proj[b, 1] * py) + proj[b, 2]
    r1 = (proj[b, 3] * px + proj[b, 4] * py) + proj[b, 5]
    r2 = (proj[b, 6] * px + proj[b, 7] * py) + proj[b, 8]
    u = r0 * depth + proj[b, 9]
    v = r1 * depth + proj[b, 10]
    z = r2 * depth + proj[b, 11]
    if not z > consts[1]:
        return consts[0], consts[0], False
    x = u / z - consts[0]
    y = v / z - consts[0]
    ok = x >= 0 and x <= consts[2] and y >= 0 and y <= consts[3]
    return x, y, ok


@numba.njit(inline="always")
def _fwd_row(ref, src_cl, proj, consts, depth, num_groups, channels, correlation, valid, row):
    """One reference row of :func:`_warp_correlation_fwd` (``row`` = b * H + i).

    Inlined into each parallel wrapper at numba's IR level, so a wrapper that passes constant
    ``num_groups`` and ``channels`` gets loops of known length that LLVM unrolls.
    """
    B, _, H, W = ref.shape
    C = channels
    Hs, Ws = src_cl.shape[1], src_cl.shape[2]
    D = depth.shape[1]
    cg = C // num_groups
    half = consts[0]
    min_z = consts[1]
    max_x = consts[2]
    max_y = consts[3]
    inv_cg = consts[4]
    b = row // H
    i = row - b * H
    py = i + half
    # _sample_position's formula and term order, split into per-pixel and per-depth parts.
    m0, m1, m2 = proj[b, 0], proj[b, 1], proj[b, 2]
    m3, m4, m5 = proj[b, 3], proj[b, 4], proj[b, 5]
    m6, m7, m8 = proj[b, 6], proj[b, 7], proj[b, 8]
    t0, t1, t2 = proj[b, 9], proj[b, 10], proj[b, 11]
    ref_vec = np.empty(C, dtype=np.float64)
    products = np.empty(C, dtype=np.float64)
    dots = np.empty((2, 4, num_groups), dtype=np.float64)  # [cur]: the previous sample's corners
    cur = 0
    for j in range(W):
        px = j + half
        r0 = (m0 * px + m1 * py) + m2
        r1 = (m3 * px + m4 * py) + m5
        r2 = (m6 * px + m7 * py) + m8
        for c in range(C):
            ref_vec[c] = ref[b, c, i, j]
        k0 = k1 = k2 = k3 = -1  # flat source index of the corners in dots[cur]
        for d in range(D):
            dep = depth[b, d, i, j]
            z = r2 * dep + t2
            if not z > min_z:
                valid[b, d, i, j] = False
                for g in range(num_groups):
                    correlation[b, g, d, i, j] = 0
                continue
            x = (r0 * dep + t0) / z - half
            y = (r1 * dep + t1) / z - half
            if not (x >= 0 and x <= max_x and y >= 0 and y <= max_y):
                valid[b, d, i, j] = False
                for g in range(num_groups):
                    correlation[b, g, d, i, j] = 0
                continue
            valid[b, d, i, j] = True
            x0 = int(math.floor(x))
            y0 = int(math.floor(y))
            wx = x - x0
            wy = y - y0
            x1 = min(x0 + 1, Ws - 1)  # weight wx is 0 where x0 + 1 == Ws
            y1 = min(y0 + 1, Hs - 1)
            w00 = (1 - wx) * (1 - wy)
            w01 = wx * (1 - wy)
            w10 = (1 - wx) * wy
            w11 = wx * wy
            n0 = y0 * Ws + x0
            if n0 == k0:  # the previous sample's 4 corners (x1, y1 follow from x0, y0)
                for g in range(num_groups):
                    correlation[b, g, d, i, j] = (
                        w00 * dots[cur, 0, g] + w01 * dots[cur, 1, g]
                        + w10 * dots[cur, 2, g] + w11 * dots[cur, 3, g]
                    ) * inv_cg
                continue
            nxt = 1 - cur
            n1 = y0 * Ws + x1
            n2 = y1 * Ws + x0
            n3 = y1 * Ws + x1
            for q in range(4):
                key = n0 if q == 0 else (n1 if q == 1 else (n2 if q == 2 else n3))
                found = -1
                if key == k0:
                    found = 0
                elif key == k1:
                    found = 1
                elif key == k2:
                    found = 2
                elif key == k3:
                    found = 3
                if found >= 0:
                    for g in range(num_groups):
                        dots[nxt, q, g] = dots[cur, found, g]
                    continue
                yq = y0 if q < 2 else y1
                xq = x0 if q % 2 == 0 else x1
                for c in range(C):
                    products[c] = ref_vec[c] * src_cl[b, yq, xq, c]
                for g in range(num_groups):
                    acc = 0.0
                    for c in range(g * cg, (g + 1) * cg):
                        acc += products[c]
                    dots[nxt, q, g] = acc
            for g in range(num_groups):
                correlation[b, g, d, i, j] = (
                    w00 * dots[nxt, 0, g] + w01 * dots[nxt, 1, g]
                    + w10 * dots[nxt, 2, g] + w11 * dots[nxt, 3, g]
                ) * inv_cg
            k0, k1, k2, k3 = n0, n1, n2, n3
            cur = nxt


@numba.njit(parallel=True, cache=True)
def _warp_correlation_fwd(ref, src_cl, proj, consts, depth, num_groups, correlation, valid):
    """ref (B, C, H, W), src_cl (B, Hs, Ws, C) -> correlation (B, G, D, H, W), valid (B, D, H, W).

    Bilinear sampling is linear, so a sample's group correlation is the bilinear blend of the
    group dot products <ref(i, j), src(corner)> at its 4 integer corners. Hypotheses one pixel of
    parallax apart or closer (the usual spacing, and PatchMatch's sorted local perturbations) share
    most corners with the previous hypothesis of the pixel: those dot products are reused instead
    of recomputed, so the work per pixel grows with the source pixels touched, not with D.

    Written for the compiler (each measured on a 640x480 forward, bit-identical results): the
    projection's pixel terms are hoisted out of the hypothesis loop (the output stores could alias
    ``proj`` in LLVM's view, so it reloaded them); the two sets of corner dot products live in one
    array indexed by parity (swapping two array references costs NRT reference counting per
    hypothesis); a corner's products are formed in one flat loop over all channels, then summed
    per group in the same order as before.
    """
    B, C, H = ref.shape[0], ref.shape[1], ref.shape[2]
    for row in numba.prange(B * H):
        _fwd_row(ref, src_cl, proj, consts, depth, num_groups, C, correlation, valid, row)


# The same kernel with (channels, groups) fixed at compile time for PatchmatchNet's stages (64 / 32 /
# 16 channels in 8 / 8 / 4 groups): the channel and group loops unroll, ~25 % less time per call
# than the generic kernel on a 640x480 forward, bit-identical results. Each is compiled on first
# use (and cached); other shapes take the generic kernel.
@numba.njit(parallel=True, cache=True)
def _warp_correlation_fwd_c64_g8(ref, src_cl, proj, consts, depth, num_groups, correlation, valid):
    for row in numba.prange(ref.shape[0] * ref.shape[2]):
        _fwd_row(ref, src_cl, proj, consts, depth, 8, 64, correlation, valid, row)


@numba.njit(parallel=True, cache=True)
def _warp_correlation_fwd_c32_g8(ref, src_cl, proj, consts, depth, num_groups, correlation, valid):
    for row in numba.prange(ref.shape[0] * ref.shape[2]):
        _fwd_row(ref, src_cl, proj, consts, depth, 8, 32, correlation, valid, row)


@numba.njit(parallel=True, cache=True)
def _warp_correlation_fwd_c16_g4(ref, src_cl, proj, consts, depth, num_groups, correlation, valid):
    for row in numba.prange(ref.shape[0] * ref.shape[2]):
        _fwd_row(ref, src_cl, proj, consts, depth, 4, 16, correlation, valid, row)


_SPECIALISED_FWD = {
    (64, 8): _warp_correlation_fwd_c64_g8,
    (32, 8): _warp_correlation_fwd_c32_g8,
    (16, 4): _warp_correlation_fwd_c16_g4,
}


def _forward_kernel(channels: int, num_groups: int):
    """The forward kernel for these channels and groups: a specialised one where there is one."""
    return _SPECIALISED_FWD.get((channels, num_groups), _warp_correlation_fwd)


@numba.njit(parallel=True, cache=True)
def _warp_correlation_bwd(
    grad_correlation, ref, src, proj, consts, depth, channel_block, need_ref, need_src, grad_ref, grad_src
):
    """grad_ref (B, C, H, W) and grad_src (B, C, Hs, Ws), zeroed by the caller.

    One parallel task per (batch, block of ``channel_block`` channels inside one group): a task
    owns its channels of both gradients, so the scatter into ``grad_src`` needs neither atomics
    nor private buffers; the price is one projection per (pixel, depth) per task. Features are
    read channels-first: a task touches only its own channel planes, which stay in cache.
    """
    B, C, H, W = ref.shape
    Hs, Ws = src.shape[2], src.shape[3]
    D = depth.shape[1]
    num_groups = grad_correlation.shape[1]
    cg = C // num_groups
    inv_cg = consts[4]
    blocks = C // channel_block
    for task in numba.prange(B * blocks):
        b = task // blocks
        c_start = (task - b * blocks) * channel_block
        g = c_start // cg
        for i in range(H):
            py = i + consts[0]
            for j in range(W):
                px = j + consts[0]
                for d in range(D):
                    gg = grad_correlation[b, g, d, i, j] * inv_cg
                    if gg == 0:
                        continue
                    x, y, ok = _sample_position(proj, consts, b, px, py, depth[b, d, i, j])
                    if not ok:
                        continue
                    x0 = int(math.floor(x))
                    y0 = int(math.floor(y))
                    wx = x - x0
                    wy = y - y0
                    x1 = min(x0 + 1, Ws - 1)
                    y1 = min(y0 + 1, Hs - 1)
                    w00 = (1 - wx) * (1 - wy)
                    w01 = wx * (1 - wy)
                    w10 = (1 - wx) * wy
                    w11 = wx * wy
                    for c in range(c_start, c_start + channel_block):
                        if need_ref:
                            sample = (
                                w00 * src[b, c, y0, x0]
                                + w01 * src[b, c, y0, x1]
                                + w10 * src[b, c, y1, x0]
                                + w11 * src[b, c, y1, x1]
                            )
                            grad_ref[b, c, i, j] += gg * sample
                        if need_src:
                            t = gg * ref[b, c, i, j]
                            grad_src[b, c, y0, x0] += w00 * t
                            grad_src[b, c, y0, x1] += w01 * t
                            grad_src[b, c, y1, x0] += w10 * t
                            grad_src[b, c, y1, x1] += w11 * t


def _constants(dtype, src_height: int, src_width: int, channels_per_group: int) -> np.ndarray:
    """[0.5, min source depth, Ws - 1, Hs - 1, 1 / (C / G)] in the kernel's dtype."""
    return np.array([0.5, 1e-6, src_width - 1, src_height - 1, 1.0 / channels_per_group], dtype=dtype)


def forward(ref_feature, src_feature, proj, depth, num_groups):
    """Forward on CPU tensors; returns (correlation, valid, saved) with saved for :func:`backward`.

    Shape:
        ref_feature (B, C, H, W), src_feature (B, C, Hs, Ws), proj (B, 12) = [M row-major, T],
        depth (B, D, H, W) -> correlation (B, G, D, H, W), valid (B, D, H, W) bool
    """
    B, C, H, W = ref_feature.shape
    D = depth.shape[1]
    ref = ref_feature.detach().contiguous()
    src_cl = src_feature.detach().permute(0, 2, 3, 1).contiguous()
    depth = depth.detach().contiguous()
    proj = proj.contiguous()
    correlation = torch.empty((B, num_groups, D, H, W), dtype=ref.dtype)
    valid = torch.empty((B, D, H, W), dtype=torch.bool)
    consts = _constants(ref.numpy().dtype, src_cl.shape[1], src_cl.shape[2], C // num_groups)
    with numba_threads():
        _forward_kernel(C, num_groups)(
            ref.numpy(), src_cl.numpy(), proj.numpy(), consts, depth.numpy(), num_groups,
            correlation.numpy(), valid.numpy(),
        )
    # Save the caller's source tensor (shared with autograd's own references), not a copy in
    # either layout (backward makes it channels-first): 4 source views would otherwise keep 4
    # extra copies alive. A channels-last caller (the network) pays no copy here at all.
    return correlation, valid, (ref, src_feature.detach(), proj, depth)


def _channel_block(batch: int, channels: int, channels_per_group: int, num_threads: int) -> int:
    """Channels per backward task: a whole group, halved while there are too few tasks to share."""
    block = channels_per_group
    while batch * (channels // block) < 2 * num_threads and block % 2 == 0:
        block //= 2
    return block


def backward(saved, grad_correlation, need_ref: bool, need_src: bool):
    """Gradients (grad_ref (B, C, H, W) | None, grad_src (B, C, Hs, Ws) | None) on CPU."""
    ref, src, proj, depth = saved
    B, C = ref.shape[:2]
    num_groups = grad_correlation.shape[1]
    src = src.contiguous()
    grad_correlation = grad_correlation.contiguous()
    consts = _constants(ref.numpy().dtype, src.shape[2], src.shape[3], C // num_groups)
    grad_ref = torch.zeros(ref.shape if need_ref else (1, 1, 1, 1), dtype=ref.dtype)
    grad_src = torch.zeros(src.shape if need_src else (1, 1, 1, 1), dtype=ref.dtype)
    with numba_threads() as num_threads:
        block = _channel_block(B, C, C // num_groups, num_threads)
        _warp_correlation_bwd(
            grad_correlation.numpy(), ref.numpy(), src.numpy(), proj.numpy(), consts, depth.numpy(),
            block, need_ref, need_src, grad_ref.numpy(), grad_src.numpy(),
        )
    return (grad_ref if need_ref else None), (grad_src if need_src else None)
