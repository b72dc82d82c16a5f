"""Compile a CUDA C source with NVRTC through ctypes: the compile check that needs no GPU.

The library is the ``nvidia-cuda-nvrtc`` wheel's (pinned in requirements.txt), found under
``site-packages/nvidia/*/lib/libnvrtc.so*``; ``SELFMVS_NVRTC`` may name another ``libnvrtc.so``.
Compiling for a real architecture (``sm_80``) gives a CUBIN, so ptxas checks the code as well
(registers, addressing). NVRTC needs no driver and no GPU.
"""

from __future__ import annotations

import ctypes
import functools
import os
import site
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from . import compile_defines


def library_path() -> Path | None:
    """The ``libnvrtc.so`` to load, or None when neither ``SELFMVS_NVRTC`` nor the wheel has one."""
    if os.environ.get("SELFMVS_NVRTC"):
        return Path(os.environ["SELFMVS_NVRTC"])
    roots = [*site.getsitepackages(), site.getusersitepackages(), *sys.path]
    for root in roots:
        base = Path(root) / "nvidia"
        if not base.is_dir():
            continue
        found = sorted(base.glob("*/lib/libnvrtc.so*")) + sorted(base.glob("cuda_nvrtc/lib/libnvrtc.so*"))
        found = [p for p in found if "builtins" not in p.name and "alt" not in p.name]
        if found:
            return found[-1]
    return None


@functools.lru_cache(maxsize=None)
def _lib() -> ctypes.CDLL:
    path = library_path()
    if path is None:
        raise RuntimeError("no libnvrtc.so: install the pinned nvidia-cuda-nvrtc wheel (requirements.txt) "
                           "or set SELFMVS_NVRTC to a libnvrtc.so")
    lib = ctypes.CDLL(str(path))
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p
    lib.nvrtcGetErrorString.argtypes = [ctypes.c_int]
    return lib


def version() -> tuple[int, int]:
    major, minor = ctypes.c_int(), ctypes.c_int()
    _check(_lib().nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
    return major.value, minor.value


def _check(code: int, what: str) -> None:
    if code != 0:
        raise RuntimeError(f"{what} failed: {_lib().nvrtcGetErrorString(code).decode()}")


@dataclass(frozen=True)
class CompileResult:
    ok: bool
    log: str
    cubin_bytes: int


def compile_source(text: str, name: str, arch: str, dtype: torch.dtype, extra: tuple[str, ...] = ()) -> CompileResult:
    """Compile ``text`` for ``arch`` (e.g. ``"sm_80"``) with ``scalar_t`` = ``dtype``; returns the log.

    Options: ``--std=c++17``, ``--gpu-architecture=<arch>``, the dtype define, ``extra``.
    """
    lib = _lib()
    prog = ctypes.c_void_p()
    _check(lib.nvrtcCreateProgram(ctypes.byref(prog), text.encode(), name.encode(), 0, None, None), "nvrtcCreateProgram")
    try:
        options = ["--std=c++17", f"--gpu-architecture={arch}", *compile_defines(dtype), *extra]
        array = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
        code = lib.nvrtcCompileProgram(prog, len(options), array)
        size = ctypes.c_size_t()
        _check(lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)), "nvrtcGetProgramLogSize")
        buffer = ctypes.create_string_buffer(size.value)
        _check(lib.nvrtcGetProgramLog(prog, buffer), "nvrtcGetProgramLog")
        log = buffer.value.decode(errors="replace")
        if code != 0:
            return CompileResult(False, f"{lib.nvrtcGetErrorString(code).decode()}\n{log}", 0)
        cubin = ctypes.c_size_t()
        _check(lib.nvrtcGetCUBINSize(prog, ctypes.byref(cubin)), "nvrtcGetCUBINSize")
        return CompileResult(True, log, cubin.value)
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
