"""Scalar SSIM formulas shared by the numba CPU kernels and the numba.cuda kernels.

Plain Python with no numba import: ``cpu.py`` wraps them with ``njit(inline="always")`` and
``cuda.py`` with ``cuda.jit(device=True)``, so both backends run the same arithmetic in the same
order. Every constant arrives typed (``inv_n``, ``c1``, ``c2``, ``two`` are of the array dtype),
because a Python float literal would promote float32 arithmetic to float64 in numba.

Caveat: numba's on-disk cache (``cache=True`` in ``cpu.py``) is keyed on ``cpu.py`` alone, so
after editing this file touch ``cpu.py`` (or delete this package's ``__pycache__/*.nb[ci]``),
or the CPU kernels keep running the old formulas.
"""


def ssim_and_coefficients(sx, sy, sxx, syy, sxy, inv_n, c1, c2, two):
    """SSIM of one window from its sums, and the coefficients of its input gradient.

    With mu = mean, var = E[x^2] - mu^2, cov = E[xy] - mu_x mu_y over the n = 9 window taps
    (Wang et al. 2004, eq. 13):

        S = (2 mu_x mu_y + C1)(2 cov + C2) / ((mu_x^2 + mu_y^2 + C1)(var_x + var_y + C2))

    dS/dx_q for a tap q of the window is affine in (x_q, y_q):

        dS/dx_q = a_x + b x_q + c y_q,    dS/dy_q = a_y + b y_q + c x_q

    Returns:
        (S, a_x, a_y, b, c), the coefficients already divided by n.
    """
    mx = sx * inv_n
    my = sy * inv_n
    var_x = sxx * inv_n - mx * mx
    var_y = syy * inv_n - my * my
    cov = sxy * inv_n - mx * my
    num_l = two * mx * my + c1
    num_cs = two * cov + c2
    den_l = mx * mx + my * my + c1
    den_cs = var_x + var_y + c2
    den = den_l * den_cs
    s = num_l * num_cs / den
    d_num_l = num_cs / den
    d_num_cs = num_l / den
    d_den_l = -s / den_l
    d_den_cs = -s / den_cs
    d_mx = two * (my * d_num_l + mx * d_den_l)
    d_my = two * (mx * d_num_l + my * d_den_l)
    d_cov = two * d_num_cs
    a_x = (d_mx - two * mx * d_den_cs - my * d_cov) * inv_n
    a_y = (d_my - two * my * d_den_cs - mx * d_cov) * inv_n
    b = two * d_den_cs * inv_n
    c = d_cov * inv_n
    return s, a_x, a_y, b, c


def reflect_index(r, n):
    """Index of padded position ``r`` (-1 <= r <= n) under reflection padding by one."""
    if r < 0:
        return -r
    if r >= n:
        return 2 * (n - 1) - r
    return r


def tap_count(q, p, n, valid):
    """How many taps of output position ``p``'s window read input position ``q`` (one axis).

    ``n`` is the input size. valid: window of p is q in [p, p + 2]. reflect: window of p is the
    padded positions p - 1 .. p + 1, and padding maps -1 to 1 and n to n - 2, so inputs 1 and
    n - 2 are read twice by the border outputs.
    """
    if valid:
        d = q - p
        return 1 if (d >= 0 and d <= 2) else 0
    d = q - p
    count = 1 if (d >= -1 and d <= 1) else 0
    if q == 1 and p == 0:
        count += 1
    if q == n - 2 and p == n - 1:
        count += 1
    return count
