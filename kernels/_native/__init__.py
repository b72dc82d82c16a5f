"""Native (C++, OpenMP) CPU forwards for inference: built once per machine, loaded with ctypes.

Why: numba's JIT costs a process ~120 MB of resident memory before its first kernel runs (its
typing and target contexts and LLVM; measured on the 2-core CPU on 2026-11-27, docs/benchmarks.md), about a third of what the whole
inference process may hold by its memory target. The three forwards that ``selfmvs infer`` runs
(``warp_correlation``, ``neighbour_correlation``, the depth-weighted aggregation) are therefore also
written in C++, each in ``kernels/<op>/native.cpp`` next to its numba twin (line for line the numba
kernel), and, where a C++ compiler exists, used for every CPU forward; numba stays the CPU path of
the backward passes (training) and of everything when no compiler is there.
``kernels/pointwise_mlp/native.cpp`` holds the inference forward of PatchmatchNet's 1x1x1 nets,
which has no numba twin: without the library it runs its torch reference in chunks. Shared C++:
``native.hpp`` (types, the border-clamped bilinear corners) and ``abi.cpp`` (the ABI number) here.

Build: the first call of :func:`library` in a process compiles :data:`SOURCES` (every
``kernels/*/native.cpp`` and ``abi.cpp``) into one shared library with the system's C++ compiler
(``$CXX``, else ``c++`` / ``g++`` / ``clang++``; ``-O3 -march=native -fopenmp``; a few seconds) in a
cache folder (``$SELFMVS_CACHE_DIR``, else ``$XDG_CACHE_HOME/selfmvs``, else ``~/.cache/selfmvs``)
under a name hashing the sources, the header, the flags, the compiler's version and the CPU,
written to a temporary file and renamed (concurrent first runs are safe); later processes load it.
Where the cache folder cannot be written the library is built in a private folder of the temp
dir; a cached file that does not load is built again. Without a compiler, or when the build fails,
:func:`library` returns None, :func:`status` says why, and the numba kernels run instead (slower to
start, ~120 MB larger, same results). ``SELFMVS_NATIVE_KERNELS=0`` turns the native path off.

Loading the library does not import numba and queries no GPU. Its OpenMP loops run on the
libgomp that torch's CPU wheel has already loaded (same soname), so they share torch's threads.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import torch  # noqa: F401  (loads torch's libgomp first, so the library binds to it)

__all__ = ["library", "status", "cache_dir", "ABI", "SOURCES"]

log = logging.getLogger("selfmvs.kernels")

#: must match ``selfmvs_native_abi()`` in abi.cpp
ABI = 2
_HERE = Path(__file__).resolve().parent
#: the translation units of the library: this folder's abi.cpp and each op's native.cpp
SOURCES = (_HERE / "abi.cpp", *sorted(_HERE.parent.glob("*/native.cpp")))
#: included by every source; part of the library's cache key
HEADERS = (_HERE / "native.hpp",)
BASE_FLAGS = ("-O3", "-std=c++17", "-fopenmp", "-ffp-contract=off", "-fPIC", "-shared")

_status = "not loaded yet"


def cache_dir() -> Path:
    """Where built libraries are kept (see the module docstring)."""
    if os.environ.get("SELFMVS_CACHE_DIR"):
        return Path(os.environ["SELFMVS_CACHE_DIR"]) / "native"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "selfmvs" / "native"


def status() -> str:
    """One line: which library is loaded, or why none is."""
    return _status


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_fingerprint() -> str:
    """The CPU model and feature flags (``-march=native`` code is only valid on such a CPU)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    wanted = [line for line in text.splitlines() if line.startswith(("model name", "flags", "Features"))]
    return "\n".join(sorted(set(wanted)))


def _build(compiler: str, target: Path) -> list[str]:
    """Compile :data:`SOURCES` into ``target`` (atomically); returns the flags used."""
    target.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for extra in (("-march=native",), ()):
        flags = [*BASE_FLAGS, *extra]
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        try:
            result = subprocess.run([compiler, *flags, *map(str, SOURCES), "-o", tmp], capture_output=True, text=True)
            if result.returncode == 0:
                os.replace(tmp, target)
                return flags
            errors.append(f"{' '.join(flags)}: {result.stderr.strip()[-600:]}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise RuntimeError("; ".join(errors))


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, i64, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    for suffix, scalar in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
        f = getattr(lib, f"warp_correlation_fwd_{suffix}")
        f.argtypes = [p, p, p, p, p] + [i64] * 8 + [p, p, c_int]
        f.restype = None
        f = getattr(lib, f"neighbour_correlation_fwd_{suffix}")
        f.argtypes = [p, p] + [i64] * 6 + [p, c_int]
        f.restype = None
        f = getattr(lib, f"depth_weighted_fwd_{suffix}")
        f.argtypes = [p, p, p, p, p, scalar] + [i64] * 5 + [p, c_int]
        f.restype = None
        f = getattr(lib, f"pointwise_mlp_fwd_{suffix}")
        f.argtypes = [p, p, p] + [i64] * 3 + [p, c_int]
        f.restype = None
    return lib


@functools.lru_cache(maxsize=None)
def library() -> ctypes.CDLL | None:
    """The loaded native library (building it on a machine's first call), or None; see :func:`status`."""
    global _status
    if os.environ.get("SELFMVS_NATIVE_KERNELS", "1").strip().lower() in ("0", "false", "no", "off"):
        _status = "off (SELFMVS_NATIVE_KERNELS=0): numba kernels"
        return None
    if platform.system() != "Linux":
        _status = f"not built on {platform.system()} (Linux only so far): numba kernels"
        return None
    compiler = _compiler()
    if compiler is None:
        _status = "no C++ compiler found ($CXX, c++, g++, clang++): numba kernels"
        log.info("native CPU kernels: %s", _status)
        return None
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as error:
        _status = f"{compiler} --version failed ({error}): numba kernels"
        log.warning("native CPU kernels: %s", _status)
        return None
    key = hashlib.sha256(
        b"\0".join(s.encode() for s in (*(p.read_text() for p in (*SOURCES, *HEADERS)), " ".join(BASE_FLAGS), version, _cpu_fingerprint(), platform.machine()))
    ).hexdigest()[:16]
    name = f"forward-{key}.so"
    # the cache folder, else (read-only home, full disk) a private folder in the temp dir
    folders = [cache_dir(), Path(tempfile.gettempdir()) / f"selfmvs-native-{os.getuid()}"]
    problems = []
    for folder in folders:
        target = folder / name
        for rebuild in (False, True):  # a cached file that does not load is built again
            built = ""
            if rebuild or not target.is_file():
                started = time.perf_counter()
                try:
                    flags = _build(compiler, target)
                except (OSError, RuntimeError) as error:
                    problems.append(f"build with {compiler} in {folder} failed ({error})")
                    break
                built = f", built in {time.perf_counter() - started:.1f} s ({' '.join(flags)})"
                log.info("native CPU kernels: compiled %s%s", target, built)
            try:
                lib = ctypes.CDLL(str(target))
                if lib.selfmvs_native_abi() != ABI:
                    raise OSError(f"ABI {lib.selfmvs_native_abi()}, expected {ABI}")
                _status = f"native ({target}{built})"
                return _bind(lib)
            except (OSError, AttributeError) as error:
                problems.append(f"{target} does not load ({error})")
                if built:
                    break
    _status = "; ".join(problems) + ": numba kernels"
    log.warning("native CPU kernels: %s", _status)
    return None
