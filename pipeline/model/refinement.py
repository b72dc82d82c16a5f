"""Depth refinement at full resolution, guided by the reference image (PatchmatchNet Sec. 3.3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .feature import ConvBnReLU


class Refinement(nn.Module):
    """Residual refinement of the half-resolution depth to full resolution.

    The depth is normalised by the depth range to [0, 1] (so the net is scale independent),
    upsampled, corrected by a residual predicted from image and depth features, de-normalised and
    clamped to [depth_min, depth_max].

    Args:
        channels: channels of the image and depth branches.
        momentum: BatchNorm momentum.
        upsampling: ``"nearest"`` (PatchmatchNet) or ``"bilinear"``.

    Shape:
        image: (B, 3, H, W) in [0, 1]; depth: (B, 1, H / 2, W / 2); depth_min, depth_max: (B,).
        output: (B, 1, H, W).
    """

    def __init__(self, channels: int = 8, momentum: float = 0.1, upsampling: str = "nearest") -> None:
        super().__init__()
        self.upsampling = upsampling
        self.image_branch = ConvBnReLU(3, channels, momentum=momentum)
        self.depth_branch = nn.Sequential(
            ConvBnReLU(1, channels, momentum=momentum),
            ConvBnReLU(channels, channels, momentum=momentum),
        )
        self.depth_upsample = nn.Sequential(
            nn.ConvTranspose2d(channels, channels, 3, stride=2, padding=1, output_padding=1, bias=False),
            nn.BatchNorm2d(channels, momentum=momentum),
            nn.ReLU(inplace=True),
        )
        self.fuse = ConvBnReLU(2 * channels, channels, momentum=momentum)
        self.residual = nn.Conv2d(channels, 1, 3, padding=1)

    def forward(
        self, image: torch.Tensor, depth: torch.Tensor, depth_min: torch.Tensor, depth_max: torch.Tensor
    ) -> torch.Tensor:
        batch = depth.shape[0]
        near = depth_min.view(batch, 1, 1, 1)
        depth_range = (depth_max - depth_min).view(batch, 1, 1, 1)
        normalised = (depth - near) / depth_range
        upsampled = upsample(normalised, image.shape[-2:], self.upsampling)
        depth_features = self.depth_upsample(self.depth_branch(normalised))
        features = torch.cat((self.image_branch(image - 0.5), depth_features), dim=1)
        refined = upsampled + self.residual(self.fuse(features))
        return (refined.clamp(0.0, 1.0) * depth_range + near)


def upsample(tensor: torch.Tensor, size: tuple[int, int] | torch.Size, mode: str) -> torch.Tensor:
    """``tensor`` resized to ``size`` by ``"nearest"`` or ``"bilinear"`` (pixel centres aligned as
    in COLMAP's convention, i.e. ``align_corners=False``). Shape: (B, C, h, w) -> (B, C, *size)."""
    if mode == "nearest":
        return F.interpolate(tensor, size=tuple(size), mode="nearest")
    if mode == "bilinear":
        return F.interpolate(tensor, size=tuple(size), mode="bilinear", align_corners=False)
    raise ValueError(f"upsampling mode must be 'nearest' or 'bilinear', got {mode!r}")
