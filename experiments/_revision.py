"""A module of the repository as it was at a git revision, loaded beside this tree's (for A/B scripts)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import tempfile


def module_at_revision(rev: str, path: str, name: str):
    """``path`` (a file of the repository, e.g. ``kernels/warp_correlation/cpu.py``) as it was at
    ``rev``, imported as the module ``name``; its package-relative imports of ``kernels._backend``
    become absolute, so the revision's kernels share this tree's plumbing."""
    source = subprocess.run(["git", "show", f"{rev}:{path}"], check=True, capture_output=True, text=True).stdout
    source = source.replace("from .._backend import", "from kernels._backend import")
    folder = tempfile.mkdtemp(prefix=f"{name}_")
    file = os.path.join(folder, f"{name}.py")
    with open(file, "w") as handle:
        handle.write(source)
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
