"""``selfmvs export-checkpoint``: strip a training checkpoint down to what inference needs."""

from __future__ import annotations

import os

from pipeline.formats.paths import check_outputs_distinct


def run_export_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, note: str = "",
                          model_overrides: dict | None = None) -> None:
    """Write ``dst``: the weights and model settings of training checkpoint ``src``, with ``note``
    stored beside them and ``model_overrides`` (ModelConfig fields) replacing the settings the
    weights still fit (an error naming the keys otherwise)."""
    from pipeline.model.checkpoint import export_weights  # torch: not at import time

    check_outputs_distinct({"training checkpoint": src}, {"weights": dst})
    export_weights(src, dst, note, model_overrides or {})
