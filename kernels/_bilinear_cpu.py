"""numba functions for bilinear sampling at offset neighbours, shared by the CPU kernels of
``adaptive_aggregation``, ``depth_weighted_aggregation`` and ``neighbour_correlation``.

All are ``njit(inline="always")``: they are compiled into each caller. numba's on-disk cache keys
a caller on its own file only, so a change here does not invalidate the callers' cached machine
code; the test run therefore uses a fresh ``NUMBA_CACHE_DIR`` (tests/conftest.py), and a user who
edits this file clears ``__pycache__`` (or sets ``NUMBA_CACHE_DIR``).
"""

from __future__ import annotations

import math

import numba


@numba.njit(inline="always")
def row_coefficients(offsets, b, k, i, H, W, corner_index, value_coef, dx_coef, dy_coef):
    """For every x of row i and neighbour k: flat indices of the 4 bilinear corners (00, 01, 10,
    11) and their coefficients in the sample, d sample / d x and d sample / d y. Corners outside
    the map get coefficient 0 (and index 0), which is the zero padding."""
    for j in range(W):
        sx = j + offsets[b, 2 * k, i, j]
        sy = i + offsets[b, 2 * k + 1, i, j]
        if not (sx > -1 and sx < W and sy > -1 and sy < H):  # also rejects NaN
            for n in range(4):
                corner_index[j, n] = 0
                value_coef[j, n] = 0
                dx_coef[j, n] = 0
                dy_coef[j, n] = 0
            continue
        x0 = int(math.floor(sx))
        y0 = int(math.floor(sy))
        wx = sx - x0
        wy = sy - y0
        for n in range(4):
            right = n & 1
            down = n >> 1
            xc = x0 + right
            yc = y0 + down
            inside = xc >= 0 and xc < W and yc >= 0 and yc < H
            corner_index[j, n] = yc * W + xc if inside else 0
            fx = wx if right else 1 - wx
            fy = wy if down else 1 - wy
            sign_x = 1 if right else -1
            sign_y = 1 if down else -1
            value_coef[j, n] = fx * fy if inside else 0
            dx_coef[j, n] = sign_x * fy if inside else 0
            dy_coef[j, n] = sign_y * fx if inside else 0


@numba.njit(inline="always")
def row_value_coefficients(offsets, b, k, i, H, W, corner_index, value_coef):
    """:func:`row_coefficients` without the derivatives (for scattering a gradient to the map)."""
    for j in range(W):
        sx = j + offsets[b, 2 * k, i, j]
        sy = i + offsets[b, 2 * k + 1, i, j]
        if not (sx > -1 and sx < W and sy > -1 and sy < H):  # also rejects NaN
            for n in range(4):
                corner_index[j, n] = 0
                value_coef[j, n] = 0
            continue
        x0 = int(math.floor(sx))
        y0 = int(math.floor(sy))
        wx = sx - x0
        wy = sy - y0
        for n in range(4):
            right = n & 1
            down = n >> 1
            xc = x0 + right
            yc = y0 + down
            inside = xc >= 0 and xc < W and yc >= 0 and yc < H
            corner_index[j, n] = yc * W + xc if inside else 0
            fx = wx if right else 1 - wx
            fy = wy if down else 1 - wy
            value_coef[j, n] = fx * fy if inside else 0


@numba.njit(inline="always")
def border_corners(offsets, b, k, i, j, H, W):
    """Pixel (i, j)'s neighbour k with its position clamped into the map (``grid_sample``'s border
    padding with ``align_corners=True``; NaN reads pixel 0): corners x0, y0, x1, y1 and the
    fractions wx, wy."""
    sx = j + offsets[b, 2 * k, i, j]
    sy = i + offsets[b, 2 * k + 1, i, j]
    sx = min(max(sx, 0.0), W - 1.0) if sx == sx else 0.0
    sy = min(max(sy, 0.0), H - 1.0) if sy == sy else 0.0
    x0 = int(math.floor(sx))
    y0 = int(math.floor(sy))
    return x0, y0, min(x0 + 1, W - 1), min(y0 + 1, H - 1), sx - x0, sy - y0


@numba.njit(inline="always")
def border_coefficients(offsets, b, k, i, H, W, border_index, border_coef):
    """For every x of row i and neighbour k: the 4 bilinear corners of the border-clamped sample
    position (:func:`border_corners`) as flat indices, and their coefficients."""
    for j in range(W):
        x0, y0, x1, y1, wx, wy = border_corners(offsets, b, k, i, j, H, W)
        border_index[j, 0] = y0 * W + x0
        border_index[j, 1] = y0 * W + x1
        border_index[j, 2] = y1 * W + x0
        border_index[j, 3] = y1 * W + x1
        border_coef[j, 0] = (1 - wx) * (1 - wy)
        border_coef[j, 1] = wx * (1 - wy)
        border_coef[j, 2] = (1 - wx) * wy
        border_coef[j, 3] = wx * wy

