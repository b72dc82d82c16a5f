"""Plain-PyTorch SSIM map: the reference the kernels are tested against."""

from __future__ import annotations

import torch
import torch.nn.functional as F

C1 = 0.01**2
C2 = 0.03**2


def ssim_reference(x: torch.Tensor, y: torch.Tensor, *, padding: str = "reflect") -> torch.Tensor:
    """Per-pixel SSIM with a 3x3 box window (Wang et al. 2004, eq. 13), C1 = 0.01^2, C2 = 0.03^2.

    Precision policy: everything is computed in the inputs' dtype with torch ops (box means by
    ``avg_pool2d``, variances as E[x^2] - mu^2 like the kernels), so for float32 the result
    carries float32 rounding; test float32 kernels against it with the float32 tolerances, and
    use float64 inputs where the reference must be near-exact. Autograd gives the gradients.

    Args:
        x: image in [0, 1].
        y: image in [0, 1], same shape as ``x``.
        padding: ``"reflect"`` (reflection padding by one pixel, output of the input size) or
            ``"valid"`` (no padding, output two pixels smaller in each dimension).

    Returns:
        SSIM map.

    Shape:
        - x, y: (B, C, H, W)
        - output: (B, C, H, W) for reflect, (B, C, H - 2, W - 2) for valid
    """
    if padding == "reflect":
        x = F.pad(x, (1, 1, 1, 1), mode="reflect")
        y = F.pad(y, (1, 1, 1, 1), mode="reflect")
    elif padding != "valid":
        raise ValueError(f"padding must be 'reflect' or 'valid', got {padding!r}")
    mu_x = F.avg_pool2d(x, 3, 1)
    mu_y = F.avg_pool2d(y, 3, 1)
    var_x = F.avg_pool2d(x * x, 3, 1) - mu_x * mu_x
    var_y = F.avg_pool2d(y * y, 3, 1) - mu_y * mu_y
    cov = F.avg_pool2d(x * y, 3, 1) - mu_x * mu_y
    num = (2 * mu_x * mu_y + C1) * (2 * cov + C2)
    den = (mu_x * mu_x + mu_y * mu_y + C1) * (var_x + var_y + C2)
    return num / den
