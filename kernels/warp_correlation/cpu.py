"""CPU kernels of the fused warp + group-wise correlation (numba, ``parallel=True``).

Forward: one parallel task per reference row; the source features are read channels-last
(``(B, Hs, Ws, C)``; no copy when the caller's map is channels-last, as the network's are) so a
corner's channels are one contiguous run; a sample's correlation is blended from the group dot
products at its 4 integer corners, reused between a pixel's consecutive hypotheses that share
corners; the warped volume is never stored.

Backward: the same walk over (pixel, hypothesis), positions recomputed. Both gradients are sums over
a pixel's source corners of coef[corner, g] * (the other map's channels of group g at that corner),
with coef the sum of bilinear weight * upstream gradient over the hypotheses that touch the corner.
So coefficients are accumulated while consecutive hypotheses share corners and applied once per
corner (one pass over its channels), not once per sample. The reference gradient of a pixel is its
own; the source gradient is a scatter, into one private channels-last buffer per parallel band of
rows (in the features' dtype, summed in place afterwards): no atomics.

Sample positions are computed in float64 also for float32 features (numba promotes the integer
pixel index), so they are at least as accurate as the reference's. Kernels are compiled for a
generic (channels, groups) and, with those fixed at compile time, for PatchmatchNet's stages.
"""
from __future__ import annotations

import math

import numba
import numpy as np
import torch

from .._backend import numba_threads, prefer_workqueue_threading
from ._layout import forward_inputs

prefer_workqueue_threading()  # see its docstring: ~15x less call overhead next to torch's OpenMP


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
    # reference.source_sample_positions's formula and term order, split into per-pixel and
    # per-depth parts.
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


@numba.njit(inline="always")
def _apply_corner(b, key, Ws, coef, cur, slot, num_groups, cg, need_ref, need_src, src_cl, ref_vec, acc_ref,
                  grad_src_bands, band):
    """Both gradients' share of one source corner (flat index ``key``) with coefficients coef[cur, slot]."""
    y = key // Ws
    x = key - y * Ws
    for g in range(num_groups):
        a = coef[cur, slot, g]
        if need_ref:
            for c in range(g * cg, (g + 1) * cg):
                acc_ref[c] += a * src_cl[b, y, x, c]
        if need_src:
            for c in range(g * cg, (g + 1) * cg):
                grad_src_bands[band, b, y, x, c] += a * ref_vec[c]


@numba.njit(inline="always")
def _bwd_band(grad_correlation, ref, src_cl, proj, consts, depth, num_groups, channels, need_ref, need_src,
              grad_ref, grad_src_bands, band):
    """Band ``band`` of :func:`_warp_correlation_bwd`: an equal share of the B * H rows (b * H + i)."""
    B, _, H, W = ref.shape
    bands = grad_src_bands.shape[0]
    row_start = (B * H * band) // bands
    row_end = (B * H * (band + 1)) // bands
    C = channels
    Hs, Ws = src_cl.shape[1], src_cl.shape[2]
    D = depth.shape[1]
    cg = C // num_groups
    half = consts[0]
    min_z = consts[1]
    max_x = consts[2]
    max_y = consts[3]
    inv_cg = consts[4]
    ref_vec = np.empty(C, dtype=np.float64)
    acc_ref = np.empty(C, dtype=np.float64)
    gg = np.empty(num_groups, dtype=np.float64)
    coef = np.empty((2, 4, num_groups), dtype=np.float64)  # [cur]: the corners being accumulated
    keys = np.empty((2, 4), dtype=np.int64)  # their flat source indices (-1: none yet)
    carried = np.empty(4, dtype=np.bool_)
    for row in range(row_start, row_end):
        b = row // H
        i = row - b * H
        py = i + half
        m0, m1, m2 = proj[b, 0], proj[b, 1], proj[b, 2]
        m3, m4, m5 = proj[b, 3], proj[b, 4], proj[b, 5]
        m6, m7, m8 = proj[b, 6], proj[b, 7], proj[b, 8]
        t0, t1, t2 = proj[b, 9], proj[b, 10], proj[b, 11]
        for j in range(W):
            px = j + half
            r0 = (m0 * px + m1 * py) + m2
            r1 = (m3 * px + m4 * py) + m5
            r2 = (m6 * px + m7 * py) + m8
            for c in range(C):
                ref_vec[c] = ref[b, c, i, j]
                acc_ref[c] = 0.0
            cur = 0
            for q in range(4):
                keys[0, q] = -1
            for d in range(D):
                dep = depth[b, d, i, j]
                z = r2 * dep + t2
                if not z > min_z:
                    continue
                x = (r0 * dep + t0) / z - half
                y = (r1 * dep + t1) / z - half
                if not (x >= 0 and x <= max_x and y >= 0 and y <= max_y):
                    continue
                x0 = int(math.floor(x))
                y0 = int(math.floor(y))
                wx = x - x0
                wy = y - y0
                x1 = min(x0 + 1, Ws - 1)
                y1 = min(y0 + 1, Hs - 1)
                n0 = y0 * Ws + x0
                if n0 != keys[cur, 0]:
                    # New corners: carry the coefficients of corners still in use (each old slot
                    # at most once: clamped corners can repeat a key), apply the others.
                    nxt = 1 - cur
                    n1 = y0 * Ws + x1
                    n2 = y1 * Ws + x0
                    n3 = y1 * Ws + x1
                    for p in range(4):
                        carried[p] = False
                    for q in range(4):
                        key = n0 if q == 0 else (n1 if q == 1 else (n2 if q == 2 else n3))
                        keys[nxt, q] = key
                        found = -1
                        for p in range(4):
                            if not carried[p] and keys[cur, p] == key:
                                found = p
                                break
                        if found >= 0:
                            carried[found] = True
                            for g in range(num_groups):
                                coef[nxt, q, g] = coef[cur, found, g]
                        else:
                            for g in range(num_groups):
                                coef[nxt, q, g] = 0.0
                    for p in range(4):
                        if not carried[p] and keys[cur, p] >= 0:
                            _apply_corner(b, keys[cur, p], Ws, coef, cur, p, num_groups, cg, need_ref, need_src,
                                          src_cl, ref_vec, acc_ref, grad_src_bands, band)
                    cur = nxt
                w00 = (1 - wx) * (1 - wy)
                w01 = wx * (1 - wy)
                w10 = (1 - wx) * wy
                w11 = wx * wy
                for g in range(num_groups):
                    gg = grad_correlation[b, g, d, i, j] * inv_cg
                    coef[cur, 0, g] += w00 * gg
                    coef[cur, 1, g] += w01 * gg
                    coef[cur, 2, g] += w10 * gg
                    coef[cur, 3, g] += w11 * gg
            for p in range(4):
                if keys[cur, p] >= 0:
                    _apply_corner(b, keys[cur, p], Ws, coef, cur, p, num_groups, cg, need_ref, need_src,
                                  src_cl, ref_vec, acc_ref, grad_src_bands, band)
            if need_ref:
                for c in range(C):
                    grad_ref[b, c, i, j] = acc_ref[c]


@numba.njit(parallel=True, cache=True)
def _warp_correlation_bwd(grad_correlation, ref, src_cl, proj, consts, depth, num_groups, need_ref, need_src,
                          grad_ref, grad_src_bands):
    """grad_ref (B, C, H, W), fully written where need_ref; grad_src_bands (T, B, Hs, Ws, C) in the features' dtype,
    zeroed by the caller, one per parallel band of rows (their sum is the source gradient)."""
    for band in numba.prange(grad_src_bands.shape[0]):
        _bwd_band(grad_correlation, ref, src_cl, proj, consts, depth, num_groups, ref.shape[1], need_ref,
                  need_src, grad_ref, grad_src_bands, band)


@numba.njit(parallel=True, cache=True)
def _warp_correlation_bwd_c64_g8(grad_correlation, ref, src_cl, proj, consts, depth, num_groups, need_ref,
                                 need_src, grad_ref, grad_src_bands):
    for band in numba.prange(grad_src_bands.shape[0]):
        _bwd_band(grad_correlation, ref, src_cl, proj, consts, depth, 8, 64, need_ref, need_src, grad_ref,
                  grad_src_bands, band)


@numba.njit(parallel=True, cache=True)
def _warp_correlation_bwd_c32_g8(grad_correlation, ref, src_cl, proj, consts, depth, num_groups, need_ref,
                                 need_src, grad_ref, grad_src_bands):
    for band in numba.prange(grad_src_bands.shape[0]):
        _bwd_band(grad_correlation, ref, src_cl, proj, consts, depth, 8, 32, need_ref, need_src, grad_ref,
                  grad_src_bands, band)


@numba.njit(parallel=True, cache=True)
def _warp_correlation_bwd_c16_g4(grad_correlation, ref, src_cl, proj, consts, depth, num_groups, need_ref,
                                 need_src, grad_ref, grad_src_bands):
    for band in numba.prange(grad_src_bands.shape[0]):
        _bwd_band(grad_correlation, ref, src_cl, proj, consts, depth, 4, 16, need_ref, need_src, grad_ref,
                  grad_src_bands, band)


_SPECIALISED_BWD = {
    (64, 8): _warp_correlation_bwd_c64_g8,
    (32, 8): _warp_correlation_bwd_c32_g8,
    (16, 4): _warp_correlation_bwd_c16_g4,
}


def _backward_kernel(channels: int, num_groups: int):
    """The backward kernel for these channels and groups: a specialised one where there is one."""
    return _SPECIALISED_BWD.get((channels, num_groups), _warp_correlation_bwd)


def _constants(dtype, src_height: int, src_width: int, channels_per_group: int) -> np.ndarray:
    """[0.5, min source depth, Ws - 1, Hs - 1, 1 / (C / G)] in the kernel's dtype."""
    return np.array([0.5, 1e-6, src_width - 1, src_height - 1, 1.0 / channels_per_group], dtype=dtype)


def forward(ref_feature, src_feature, proj, depth, num_groups):
    """Forward on CPU tensors; returns (correlation, valid, saved) with saved for :func:`backward`.

    Shape:
        ref_feature (B, C, H, W), src_feature (B, C, Hs, Ws), proj (B, 12) = [M row-major, T],
        depth (B, D, H, W) -> correlation (B, G, D, H, W), valid (B, D, H, W) bool
    """
    C = ref_feature.shape[1]
    ref, src_cl, proj, depth, correlation, valid = forward_inputs(ref_feature, src_feature, proj, depth, num_groups)
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


def backward(saved, grad_correlation, need_ref: bool, need_src: bool):
    """Gradients (grad_ref (B, C, H, W) | None, grad_src (B, C, Hs, Ws) | None) on CPU.

    grad_src comes back channels-last in memory (a permuted view of the summed bands).
    """
    ref, src, proj, depth = saved
    B, C = ref.shape[:2]
    Hs, Ws = src.shape[2], src.shape[3]
    num_groups = grad_correlation.shape[1]
    src_cl = src.permute(0, 2, 3, 1).contiguous()
    grad_correlation = grad_correlation.contiguous()
    consts = _constants(ref.numpy().dtype, Hs, Ws, C // num_groups)
    grad_ref = torch.empty(ref.shape if need_ref else (1, 1, 1, 1), dtype=ref.dtype)
    with numba_threads() as num_threads:
        bands = max(1, min(num_threads, B * ref.shape[2]))
        # In the features' dtype: a float64 buffer per band (plus their float64 sum) made the
        # backward's peak memory ~1/3 larger at PatchmatchNet's stage 1.
        grad_src_bands = torch.zeros((bands, B, Hs, Ws, C) if need_src else (1, 1, 1, 1, 1), dtype=ref.dtype)
        _backward_kernel(C, num_groups)(
            grad_correlation.numpy(), ref.numpy(), src_cl.numpy(), proj.numpy(), consts, depth.numpy(),
            num_groups, need_ref, need_src, grad_ref.numpy(), grad_src_bands.numpy(),
        )
    grad_src = None
    if need_src:
        for band in range(1, bands):  # summed in place: no further full-size buffer
            grad_src_bands[0].add_(grad_src_bands[band])
        grad_src = grad_src_bands[0].permute(0, 3, 1, 2)
    return (grad_ref if need_ref else None), grad_src
