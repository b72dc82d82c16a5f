"""Photos as COLMAP sees them: any Pillow-readable file -> an 8-bit RGB array of its raw pixel grid.

Bit depth: 8-bit files are taken as they are; 16-bit files are scaled by 255 / 65535 (rounded),
so that a 16-bit copy of an 8-bit photo reads back exactly; float files must hold values in
[0, 1] and are scaled by 255. Pillow reads 48-bit RGB PNGs as their high bytes (within 1/255 of
the scaled value); 16-bit grey (``I;16*``) and 32-bit integer (``I``) grey are scaled here, since
Pillow's ``convert("RGB")`` would clip them to white.

Orientation: the EXIF orientation tag is NOT applied. COLMAP (feature extraction, the model's
cameras and keypoints) works on the pixel grid as stored, so the photo must too; a tag other than
1 is logged as a warning, since a viewer shows that photo turned.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

log = logging.getLogger(__name__)

EXIF_ORIENTATION = 0x0112
_FLOAT_SLACK = 1e-3  # float photos written through a lossy path may overshoot [0, 1] a little


class PhotoError(ValueError):
    """A photo that cannot be read as an RGB image; the message names the file."""


def read_photo(path: str | os.PathLike) -> np.ndarray:
    """The photo at ``path`` as stored (EXIF orientation not applied), 8-bit RGB.

    Shape:
        ``(H, W, 3)`` uint8.

    Raises:
        FileNotFoundError: no file there.
        PhotoError: not an image Pillow reads, or a float photo with values outside [0, 1].
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image not found")
    try:
        with PILImage.open(path) as handle:
            orientation = handle.getexif().get(EXIF_ORIENTATION, 1)
            pixels = _to_rgb8(path, handle)
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise PhotoError(f"{path}: cannot read the image ({error})") from None
    if orientation not in (1, None):
        log.warning(
            "%s: EXIF orientation %s ignored: the raw pixel grid is used, as COLMAP does (a viewer shows "
            "this photo turned or mirrored)", path, orientation,
        )
    return pixels


def _to_rgb8(path: Path, handle: PILImage.Image) -> np.ndarray:
    mode = handle.mode
    if mode.startswith("I;16") or mode == "I":
        grey = np.asarray(handle).astype(np.float64)
        if mode == "I" and (grey.min() < 0 or grey.max() > 65535):
            raise PhotoError(
                f"{path}: 32-bit integer image with values {grey.min():.0f}..{grey.max():.0f}; "
                "expected 8- or 16-bit pixel values"
            )
        return _grey_to_rgb(np.rint(grey * (255.0 / 65535.0)))
    if mode == "F":
        grey = np.asarray(handle).astype(np.float64)
        finite = np.isfinite(grey)
        low = float(grey[finite].min()) if finite.any() else 0.0
        high = float(grey[finite].max()) if finite.any() else 0.0
        if not finite.all() or low < -_FLOAT_SLACK or high > 1.0 + _FLOAT_SLACK:
            raise PhotoError(
                f"{path}: float image with values {low:.4g}..{high:.4g}"
                f"{' and NaN/inf' if not finite.all() else ''}; expected values in [0, 1]"
            )
        return _grey_to_rgb(np.rint(np.clip(grey, 0.0, 1.0) * 255.0))
    return np.asarray(handle.convert("RGB"))


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2)
