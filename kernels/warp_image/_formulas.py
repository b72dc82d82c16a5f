"""Per-pixel projection and bilinear set-up shared by the numba CPU and numba.cuda kernels.

Plain Python (no numba import): ``cpu.py`` wraps these with ``njit(inline="always")``, ``cuda.py``
with ``cuda.jit(device=True, inline="always")``; the torch reference spells out the same
operations in the same order. Constants arrive typed (``eps``, ``half``; ``t`` is the dtype's
scalar type, e.g. ``numba.float32``) so float32 kernels never promote to float64.

Pixel convention (COLMAP): the centre of pixel (row i, col j) is (x, y) = (j + 0.5, i + 0.5).
``proj`` (B, 3, 4) = [K_src R K_ref^-1 | K_src t] with (R, t) = src_from_ref, so the source
homogeneous pixel of reference pixel (u, v) at depth z is h = z * (M [u, v, 1]) + k.

Caveat: numba's on-disk cache (``cache=True`` in ``cpu.py``) is keyed on ``cpu.py`` alone, so
after editing this file touch ``cpu.py`` (or delete this package's ``__pycache__/*.nb[ci]``),
or the CPU kernels keep running the old formulas.
"""


def project_pixel(proj, b, u, v, z):
    """Returns (r, h): r = M [u, v, 1] (= dh/dz) and h = z r + k, both as 3 scalars."""
    rx = proj[b, 0, 0] * u + proj[b, 0, 1] * v + proj[b, 0, 2]
    ry = proj[b, 1, 0] * u + proj[b, 1, 1] * v + proj[b, 1, 2]
    rz = proj[b, 2, 0] * u + proj[b, 2, 1] * v + proj[b, 2, 2]
    hx = z * rx + proj[b, 0, 3]
    hy = z * ry + proj[b, 1, 3]
    hz = z * rz + proj[b, 2, 3]
    return rx, ry, rz, hx, hy, hz


def bilinear_setup(hx, hy, hz, src_h, src_w, x_max, y_max, eps, half, t):
    """Validity and bilinear taps of a source sample.

    Valid when hz > eps (in front of the source camera) and the sample centre lies inside the
    source image: x - 0.5 in [0, Ws - 1] and y - 0.5 in [0, Hs - 1] (NaN depths are invalid).
    The left/top tap index is clamped to Ws - 2 (Hs - 2) so a sample exactly on the last pixel
    centre interpolates with weight 1 on it (and its derivative is the one-sided one from inside).

    Returns:
        (valid, x0, y0, x1, y1, ax, ay): integer taps and fractional weights in the dtype.
    """
    one = t(1.0)
    zero = t(0.0)
    if not (hz > eps):
        return False, 0, 0, 0, 0, zero, zero
    fx = hx / hz - half
    fy = hy / hz - half
    if not (fx >= zero and fx <= x_max and fy >= zero and fy <= y_max):
        return False, 0, 0, 0, 0, zero, zero
    # fx, fy >= 0 here, so truncation is floor, and fx - x0 is exact (fx < 2^24 in float32);
    # cheaper than math.floor or % (a libm fmod call in numba).
    x0 = int(fx)
    y0 = int(fy)
    ax = fx - t(x0)
    ay = fy - t(y0)
    if x0 > src_w - 2 and src_w >= 2:
        x0 = src_w - 2
        ax = one
    if y0 > src_h - 2 and src_h >= 2:
        y0 = src_h - 2
        ay = one
    x1 = min(x0 + 1, src_w - 1)
    y1 = min(y0 + 1, src_h - 1)
    return True, x0, y0, x1, y1, ax, ay
