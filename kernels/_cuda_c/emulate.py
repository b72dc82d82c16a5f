"""CPU emulation of the CUDA C kernels: the same ``kernels.cu`` built by the system C++ compiler.

For the tests on machines without a GPU. A source is compiled with ``emulation.hpp`` force-included
(it turns ``__global__``/``__device__``/``__forceinline__`` into plain C++, declares
``blockIdx``/``threadIdx``/``blockDim``/``gridDim`` and ``atomicAdd``, and defines the launcher
``selfmvs_run``) plus one generated C entry point per registered kernel,
``selfmvs_launch_<kernel>(const unsigned *dims, void **args, int reverse)``, which runs every
thread of the grid in turn (``reverse``: last thread first). Arguments go in as
``cuLaunchKernel`` takes them: an array of pointers to each argument's value.

Build: ``-O1 -std=c++17 -ffp-contract=off -Wall -Werror`` (no fused multiply-add: the torch
reference on the CPU does not fuse either; a warning, e.g. an unused variable or a signed/unsigned
comparison, fails the build) into the native kernels' cache folder
(``kernels._native.cache_dir()/../cuda_c``) under a name hashing the source, the header, the dtype,
the flags and the compiler's version. The compiler is the one ``kernels/_native`` uses (``$CXX``,
``c++``, ``g++``, ``clang++``); :func:`compiler` returns None without one (tests skip then).

Memory checks: with ``SELFMVS_CUDA_C_SANITIZE=1`` the libraries are built with
``-fsanitize=address,undefined`` (another cache name), so an access outside every tensor or a signed
index overflow aborts with the kernels.cu line. The process must preload the sanitizer's runtime
(``LD_PRELOAD=$(g++ -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0``); torch's CPU
tensors come from ``posix_memalign``, which the runtime then guards.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

import torch

from . import SOURCES, compile_defines, source_path

HEADER = Path(__file__).resolve().parent / "emulation.hpp"
FLAGS = ("-O1", "-std=c++17", "-ffp-contract=off", "-fPIC", "-shared", "-Wall", "-Werror")
#: with SELFMVS_CUDA_C_SANITIZE=1: every out-of-bounds access and signed overflow aborts with a report
#: (the process must preload the address sanitizer's runtime, see tests/kernel_ops/test_cuda_c.py)
SANITIZE_FLAGS = ("-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer")
_CTYPES = {
    torch.float32: ctypes.c_float, torch.float64: ctypes.c_double, torch.int32: ctypes.c_int32,
    torch.int64: ctypes.c_int64, torch.uint8: ctypes.c_uint8,
}


def compiler() -> str | None:
    """The C++ compiler of the native kernels, or None."""
    from .._native import _compiler

    return _compiler()


def sanitized() -> bool:
    return os.environ.get("SELFMVS_CUDA_C_SANITIZE", "0") == "1"


def _entry_points(op: str) -> str:
    lines = [
        f'extern "C" void selfmvs_launch_{name}(const unsigned int* dims, void** args, int reverse) '
        f"{{ selfmvs_run(&{name}, dims, args, reverse); }}"
        for name in SOURCES[op]
    ]
    return "\n".join(lines) + "\n"


class EmulationBuildError(RuntimeError):
    """The C++ compiler rejected a kernels.cu (the message holds its log)."""


@functools.lru_cache(maxsize=None)
def library(op: str, dtype: torch.dtype) -> ctypes.CDLL:
    """The emulation library of ``kernels/<op>/kernels.cu`` for ``dtype`` (built on first use, cached on disk)."""
    from .._native import cache_dir

    cxx = compiler()
    if cxx is None:
        raise RuntimeError("CUDA C emulation needs a C++ compiler ($CXX, c++, g++ or clang++); none found")
    path = source_path(op)
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
    flags = (*FLAGS, *compile_defines(dtype), *(SANITIZE_FLAGS if sanitized() else ()))
    glue = _entry_points(op)
    key = hashlib.sha256("\0".join((path.read_text(), HEADER.read_text(), glue, " ".join(flags), version)).encode())
    folder = cache_dir().parent / "cuda_c"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        folder = Path(tempfile.mkdtemp(prefix="selfmvs-cuda-c-"))
    target = folder / f"{op}-{str(dtype).replace('torch.', '')}-{key.hexdigest()[:16]}.so"
    if not target.is_file():
        fd, glue_file = tempfile.mkstemp(suffix=".cpp", dir=folder)
        with os.fdopen(fd, "w") as handle:
            handle.write(f'#include "{path}"\n{glue}')
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
        os.close(fd)
        try:
            result = subprocess.run([cxx, *flags, "-include", str(HEADER), glue_file, "-o", tmp],
                                    capture_output=True, text=True, timeout=300)
            if result.returncode != 0:
                raise EmulationBuildError(f"{path} ({dtype}) does not build for the CPU emulation:\n{result.stderr[-4000:]}")
            os.replace(tmp, target)
        finally:
            for leftover in (glue_file, tmp):
                if os.path.exists(leftover):
                    os.unlink(leftover)
    lib = ctypes.CDLL(str(target))
    for name in SOURCES[op]:
        function = getattr(lib, f"selfmvs_launch_{name}")
        function.argtypes = [ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_void_p), ctypes.c_int]
        function.restype = None
    return lib


#: set to True (e.g. by a test) to run every emulated grid last thread first
REVERSE_THREAD_ORDER = False


def launch(op: str, kernel: str, dtype: torch.dtype, grid: tuple, block: tuple, packed: list[tuple]) -> None:
    """Run ``kernel`` on the CPU, every thread of the grid in turn (see the module docstring)."""
    function = getattr(library(op, dtype), f"selfmvs_launch_{kernel}")
    values = []
    for kind, value, want in packed:
        values.append(ctypes.c_void_p(value) if kind == "pointer" else _CTYPES[want](value))
    args = (ctypes.c_void_p * max(1, len(values)))(*[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values])
    dims = (ctypes.c_uint * 6)(*grid, *block)
    function(dims, args, int(REVERSE_THREAD_ORDER))
