"""Scalar functions shared by the CPU (numba njit) and CUDA (numba.cuda) kernels.

Plain Python functions: each backend compiles them with its own decorator (inlined), so both
backends index the neighbours in the same order as ``reference.NEIGHBOUR_OFFSETS``.
"""


def neighbour_row(k):
    """Row offset of neighbour k (0..7: the 3x3 ring, row-major, centre skipped)."""
    kk = k + 1 if k >= 4 else k
    return kk // 3 - 1


def neighbour_col(k):
    """Column offset of neighbour k."""
    kk = k + 1 if k >= 4 else k
    return kk % 3 - 1
