"""Resizing views to sizes the network can take, with intrinsics that stay exact.

A :class:`ResizePlan` first scales the image (longest side at most ``max_image_size``; never up),
then makes both sides a multiple of ``size_multiple`` (PatchmatchNet works at 1/2, 1/4 and 1/8
resolution, hence 8) either by a centred crop (``fit="crop"``, the default: the aspect ratio stays
exact and at most ``size_multiple - 1`` pixels are lost) or by scaling a little more
(``fit="resize"``).

In COLMAP's pixel convention (centre of pixel j at j + 0.5), scaling by s maps x to s x exactly, so
fx, cx scale by s; a crop of ``x0`` columns maps x to x - x0, so cx shifts by -x0.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image as PILImage

FIT_MODES = ("crop", "resize")


@dataclasses.dataclass(frozen=True)
class ResizePlan:
    """Scale then crop: original (width, height) -> (out_width, out_height).

    Attributes:
        width, height: input size.
        scaled_width, scaled_height: size after scaling (scale_x = scaled_width / width, ...).
        crop_x, crop_y: columns / rows removed at the left / top after scaling.
        out_width, out_height: final size.
    """

    width: int
    height: int
    scaled_width: int
    scaled_height: int
    crop_x: int
    crop_y: int
    out_width: int
    out_height: int

    @property
    def scale_x(self) -> float:
        return self.scaled_width / self.width

    @property
    def scale_y(self) -> float:
        return self.scaled_height / self.height

    @property
    def is_identity(self) -> bool:
        return (self.scaled_width, self.scaled_height, self.out_width, self.out_height) == (
            self.width, self.height, self.width, self.height
        )

    def K(self, K: np.ndarray) -> np.ndarray:
        """Intrinsics at the output size.

        Shape:
            K: (3, 3) -> (3, 3)
        """
        K = np.asarray(K, dtype=np.float64)
        if K.shape != (3, 3):
            raise ValueError(f"expected a (3, 3) K, got {K.shape}")
        affine = self.pixel_transform()
        return affine @ K

    def pixel_transform(self) -> np.ndarray:
        """The 3x3 affine map from input pixels (x, y, 1) to output pixels."""
        return np.array(
            [[self.scale_x, 0.0, -self.crop_x], [0.0, self.scale_y, -self.crop_y], [0.0, 0.0, 1.0]]
        )

    def points(self, pixels: np.ndarray) -> np.ndarray:
        """Input pixel positions -> output pixel positions.

        Shape:
            pixels: (N, 2) -> (N, 2)
        """
        pixels = np.asarray(pixels, dtype=np.float64).reshape(-1, 2)
        return pixels * [self.scale_x, self.scale_y] - [self.crop_x, self.crop_y]

    def image(self, image: np.ndarray) -> np.ndarray:
        """Resample an (H, W, C) or (H, W) image (Pillow's antialiased bilinear filter), then crop.

        Shape:
            image: (height, width[, C]) -> (out_height, out_width[, C])
        """
        image = np.asarray(image)
        if image.shape[:2] != (self.height, self.width):
            raise ValueError(
                f"expected an image of {self.width}x{self.height}, got {image.shape[1]}x{image.shape[0]}"
            )
        if (self.scaled_width, self.scaled_height) != (self.width, self.height):
            image = resize_array(image, self.scaled_width, self.scaled_height)
        return image[self.crop_y : self.crop_y + self.out_height, self.crop_x : self.crop_x + self.out_width]

    def mask(self, mask: np.ndarray) -> np.ndarray:
        """Resample a validity mask: an output pixel is valid only if all it was made of was valid.

        Shape:
            mask: (height, width) bool -> (out_height, out_width) bool
        """
        mask = np.asarray(mask, dtype=bool)
        if (self.scaled_width, self.scaled_height) != (self.width, self.height):
            resized = PILImage.fromarray(mask.astype(np.float32), mode="F").resize(
                (self.scaled_width, self.scaled_height), PILImage.Resampling.BILINEAR
            )
            mask = np.asarray(resized) >= 1.0 - 1e-4
        return mask[self.crop_y : self.crop_y + self.out_height, self.crop_x : self.crop_x + self.out_width]


def resize_array(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize an image with Pillow's antialiased bilinear filter (pixel centres map exactly).

    uint8 (H, W), (H, W, 3) and (H, W, 4) go through Pillow as they are; other dtypes and channel
    counts are resized channel by channel in float32 and cast back.

    Shape:
        image: (H, W[, C]) -> (height, width[, C])
    """
    image = np.asarray(image)
    size = (int(width), int(height))
    if image.dtype == np.uint8 and (image.ndim == 2 or image.shape[2] in (3, 4)):
        return np.asarray(PILImage.fromarray(image).resize(size, PILImage.Resampling.BILINEAR))
    channels = image.reshape(image.shape[0], image.shape[1], -1)
    out = np.stack(
        [
            np.asarray(
                PILImage.fromarray(np.ascontiguousarray(channels[..., c], dtype=np.float32), mode="F").resize(
                    size, PILImage.Resampling.BILINEAR
                )
            )
            for c in range(channels.shape[2])
        ],
        axis=-1,
    )
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(image.dtype).reshape((int(height), int(width)) + image.shape[2:])


def plan_resize(
    width: int, height: int, max_image_size: int = 800, size_multiple: int = 8, fit: str = "crop"
) -> ResizePlan:
    """Plan the resize of a ``width`` x ``height`` image.

    Args:
        max_image_size: longest side after scaling, pixels (<= 0: no limit). Images are never
            scaled up.
        size_multiple: both output sides are a multiple of this (1: any size).
        fit: ``"crop"`` (centred crop to the multiple) or ``"resize"`` (scale to the multiple).

    Raises:
        ValueError: on a bad argument, or an image smaller than ``size_multiple``.
    """
    if fit not in FIT_MODES:
        raise ValueError(f"fit must be one of {FIT_MODES}, got {fit!r}")
    if size_multiple < 1:
        raise ValueError(f"size_multiple must be >= 1, got {size_multiple}")
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    scale = 1.0
    if max_image_size > 0 and max(width, height) > max_image_size:
        scale = max_image_size / max(width, height)
    scaled_width, scaled_height = max(1, round(width * scale)), max(1, round(height * scale))
    out_width = (scaled_width // size_multiple) * size_multiple
    out_height = (scaled_height // size_multiple) * size_multiple
    if out_width == 0 or out_height == 0:
        raise ValueError(
            f"an image of {width}x{height} (scaled to {scaled_width}x{scaled_height}) is smaller than "
            f"size_multiple={size_multiple}"
        )
    if fit == "resize":
        return ResizePlan(width, height, out_width, out_height, 0, 0, out_width, out_height)
    crop_x = (scaled_width - out_width) // 2
    crop_y = (scaled_height - out_height) // 2
    return ResizePlan(width, height, scaled_width, scaled_height, crop_x, crop_y, out_width, out_height)
