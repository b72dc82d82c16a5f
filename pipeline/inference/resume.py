"""Whether a partial depth.h5 left by an interrupted run may be resumed by this one."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from pipeline.config import PlaneFillConfig

log = logging.getLogger("selfmvs.infer")

#: The file attributes a partial depth.h5 must share with this run to be resumed, with the value a file
#: written before the attribute existed stands for (None: no default, such a file is never resumed).
RESUME_SETTINGS = {
    "checkpoint": None, "scene": None, "num_sources": None, "model_config": None, "flip_average": 0, "plane_fill": "off",
}


def plane_fill_setting(config: PlaneFillConfig) -> str:
    """The ``plane_fill`` file attribute: the in-fill's thresholds as JSON, or ``"off"``."""
    if not config.enabled:
        return "off"
    return json.dumps({k: v for k, v in dataclasses.asdict(config).items() if k != "enabled"}, sort_keys=True)


def discard_foreign_partial(out_path: Path, attrs: dict) -> None:
    """Resume only a partial file of the same scene, checkpoint and settings; else start afresh."""
    partial = out_path.with_name(out_path.name + ".partial")
    if not partial.exists():
        return
    import h5py

    try:
        with h5py.File(partial, "r") as handle:
            previous = {key: handle.attrs.get(key, default) for key, default in RESUME_SETTINGS.items()}
    except OSError:
        return  # unreadable: DepthWriter starts over by itself
    previous = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in previous.items()}
    if any(previous[key] != attrs[key] for key in previous):
        log.warning("%s: written by another run (%s); starting afresh", partial, previous)
        partial.unlink()
