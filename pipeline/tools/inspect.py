"""``selfmvs inspect FILE``: print a readable summary of a selfmvs file, a checkpoint or a COLMAP
model (:mod:`pipeline.tools.file_summary` gathers and formats the facts)."""

from __future__ import annotations

import os
import sys


def run_inspect(path: str | os.PathLike, max_views: int | None = 20) -> None:
    """Print the summary of ``path``; ``max_views`` None lists every view.

    Raises:
        ValueError: ``max_views`` below 0; ``InspectError`` naming a file that cannot be read.
    """
    from pipeline.tools.file_summary import describe  # numpy, h5py: not at import time

    if max_views is not None and max_views < 0:
        raise ValueError(f"--max-views must be >= 0, got {max_views}")
    text = describe(path, max_views=max_views)
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # `selfmvs inspect f.h5 | head`: the reader left early, which is not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
