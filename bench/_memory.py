"""Peak resident memory of one forward + backward, measured in a fresh subprocess.

Used by ``bench_warp_correlation.py`` and ``bench_adaptive_aggregation.py``. What is measured:
the growth of the process's peak RSS (``VmHWM``, reset through ``/proc/self/clear_refs``) over
its RSS once the inputs exist and the op has been warmed up on a tiny input (numba compile/cache
load). glibc's dynamic mmap threshold is pinned (``MALLOC_MMAP_THRESHOLD_``) so freed big blocks
go back to the OS and cannot hide later allocations. This counts every byte the op touches:
torch tensors, numba scratch, autograd buffers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def rss_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_rss_growth(module: str, case: str, impl: str, timeout: float = 300.0) -> int:
    """Bytes: peak RSS during ``module.run_case(case, impl)`` minus RSS just before (subprocess)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    code = (
        "import json, sys; sys.path.insert(0, {bench!r}); import importlib; "
        "m = importlib.import_module({module!r}); print(json.dumps(m.measure_case({case!r}, {impl!r})))"
    ).format(bench=str(REPO / "bench"), module=module, case=case, impl=impl)
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory subprocess failed:\n{proc.stderr[-3000:]}")
    return int(json.loads(proc.stdout.strip().splitlines()[-1]))


def measure(make_inputs, run) -> int:
    """In the subprocess: growth of peak RSS (bytes) while ``run(*make_inputs())`` executes."""
    import gc

    inputs = make_inputs()
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    before = rss_kib("VmRSS")
    run(*inputs)
    peak = rss_kib("VmHWM")
    return (peak - before) * 1024
