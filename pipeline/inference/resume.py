"""Whether a partial depth.h5 left by an interrupted run may be resumed by this one.

A view of the partial file is kept only if it was computed from the same inputs and settings as this
run would compute it: the checkpoint's and the scene's content (sha256 of each file: a checkpoint
replaced at the same path must not leave views of the old weights behind) and every setting that
changes an estimate. Anything else starts the file afresh, and the log says why.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path

from pipeline.config import PlaneFillConfig
from pipeline.formats.depth_file import FORMAT_VERSION

log = logging.getLogger("selfmvs.infer")

#: The file attributes a partial depth.h5 must share with this run to be resumed, with the value a file
#: written before the attribute existed stands for (None: no default, such a file is never resumed).
RESUME_SETTINGS = {
    "format_version": None, "checkpoint_sha256": None, "scene_sha256": None, "num_sources": None,
    "model_config": None, "flip_average": 0, "plane_fill": "off", "max_size": None, "mask_invalid": None,
    "device": None,
}


def plane_fill_setting(config: PlaneFillConfig) -> str:
    """The ``plane_fill`` file attribute: the in-fill's thresholds as JSON, or ``"off"``."""
    if not config.enabled:
        return "off"
    return json.dumps({k: v for k, v in dataclasses.asdict(config).items() if k != "enabled"}, sort_keys=True)


def _plain(value):
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value.item() if hasattr(value, "item") else value


def discard_foreign_partial(out_path: Path, attrs: dict) -> bool:
    """Keep a partial file of the same inputs and settings; delete any other. Returns whether one is kept.

    ``attrs``: the file attributes this run writes (every key of :data:`RESUME_SETTINGS` but
    ``format_version``).
    """
    partial = out_path.with_name(out_path.name + ".partial")
    if not partial.exists():
        return False
    import h5py

    expected = {**attrs, "format_version": FORMAT_VERSION}
    try:
        with h5py.File(partial, "r") as handle:
            previous = {key: _plain(handle.attrs.get(key, default)) for key, default in RESUME_SETTINGS.items()}
    except OSError:
        return False  # unreadable: DepthWriter starts over by itself
    differ = [key for key in RESUME_SETTINGS if previous[key] != expected[key]]
    if differ:
        reasons = ", ".join(
            f"{key} {previous[key]!r} (now {expected[key]!r})" if previous[key] is not None else f"no {key}"
            for key in differ
        )
        log.warning("%s: not resumed, written from other inputs or settings: %s; starting afresh", partial, reasons)
        partial.unlink()
        return False
    return True
