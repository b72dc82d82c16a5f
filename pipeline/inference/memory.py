"""Allocator settings for long CPU inference runs (glibc's ``mallopt``)."""

from __future__ import annotations

import ctypes

#: glibc's ceiling of M_MMAP_THRESHOLD on 64-bit systems (HEAP_MAX_SIZE / 2)
MAX_MMAP_THRESHOLD_KIB = 32 * 1024


def set_mmap_threshold(kib: int) -> str:
    """Let glibc serve allocations of at least ``kib`` KiB from pages of their own (process-wide).

    By default glibc raises this threshold to the size of every large block freed, so after the
    first view the tensors of a forward come from the heap, and the holes the freed ones leave
    count as resident (on a 640x480 run with 4 sources ~60 MB of the peak; bench/README.md).
    A fixed threshold returns each large tensor's pages when it is freed: peak RSS follows the live
    tensors, for the cost of faulting fresh pages in (~0.1 s, a third more time, per 640x480 view
    on 2 cores).

    Returns:
        a line for the log: what was set, or why nothing was (not glibc, mallopt refused).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return f"mmap threshold {kib} KiB not set: this C library has no mallopt"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    M_MMAP_THRESHOLD = -3  # glibc's malloc.h
    if mallopt(M_MMAP_THRESHOLD, int(kib) * 1024) != 1:
        return f"mmap threshold {kib} KiB not set: mallopt refused it"
    return f"mmap threshold {kib} KiB (malloc serves larger blocks from their own pages)"
