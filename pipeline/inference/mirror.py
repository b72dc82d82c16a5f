"""The mirrored pass's combination: one map from a view's estimates on the scene and its mirror image."""

from __future__ import annotations

import dataclasses

import numpy as np

from pipeline.formats.depth_file import DepthView

#: two estimates closer than this (relative to the nearer) are averaged by :func:`combine_mirrored`
MIRROR_AGREEMENT = 0.02


def combine_mirrored(direct: DepthView, mirrored: DepthView, agreement: float = MIRROR_AGREEMENT) -> DepthView:
    """One map from a view's estimates on the scene and on its mirror image (both in the view's frame).

    Where the two depths agree within ``agreement`` (relative to the nearer) their mean, with the mean
    confidence; elsewhere the more confident estimate (the direct one on ties). The network's errors
    on the two inputs are partly independent (its learned offsets and patterns are not symmetric),
    so the mean is more precise where both are right, and the confidence picks one where they differ.
    Measured on four held-out synthetic scenes (bench/README.md): agreement 0.5 / 1 / 2 / 3 / 5 % and
    "always the mean" gave 83.28 / 83.48 / 83.60 / 83.56 / 83.43 / 83.07 % of pixels within 1 %
    (one pass: 82.84).
    """
    if direct.depth.shape != mirrored.depth.shape:
        raise ValueError(
            f"combine_mirrored: view {direct.image_id}: maps of shape {direct.depth.shape} and {mirrored.depth.shape}"
        )
    a, b = direct.depth, mirrored.depth
    agree = (a > 0) & (b > 0) & (np.abs(a - b) < agreement * np.minimum(a, b))
    first = direct.confidence >= mirrored.confidence
    depth = np.where(agree, 0.5 * (a + b), np.where(first, a, b))
    confidence = np.where(
        agree, 0.5 * (direct.confidence + mirrored.confidence), np.where(first, direct.confidence, mirrored.confidence)
    )
    return dataclasses.replace(direct, depth=depth.astype(np.float32), confidence=confidence.astype(np.float32))
