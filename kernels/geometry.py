"""Camera algebra in closed form: inverses that never wait for the GPU.

``torch.linalg.inv`` checks its LU factorisation for singular matrices and raises on one; on a
CUDA tensor that check copies the status back to the host, so every call stalls the CPU until the
GPU has caught up (``torch.cuda.set_sync_debug_mode("error")`` reports it). The matrices the ops
invert have a structure that gives the inverse in closed form, as plain element-wise torch ops
that stay queued on the device:

* pixel intrinsics ``K`` are upper triangular (``[[fx, s, cx], [0, fy, cy], [0, 0, 1]]``);
* rigid transforms ``[R | t]`` invert to ``[R^T | -R^T t]``.

Neither function checks its input (a check would need the values on the host): a zero focal length
gives inf, a non-rigid 4x4 a wrong result. The entries below the diagonal of ``K`` and the last row
of a 4x4 transform are not read.
"""

from __future__ import annotations

import torch

__all__ = ["invert_intrinsics", "invert_rigid"]


def invert_intrinsics(K: torch.Tensor) -> torch.Tensor:
    """Inverse of upper-triangular 3x3 matrices (pixel intrinsics), batched, on K's device.

    For ``K = [[a, b, c], [0, d, e], [0, 0, f]]`` the inverse is
    ``[[1/a, -b/(a d), (b e - c d)/(a d f)], [0, 1/d, -e/(d f)], [0, 0, 1/f]]``.

    Shape:
        K: (..., 3, 3) -> (..., 3, 3), same dtype
    """
    a, b, c = K[..., 0, 0], K[..., 0, 1], K[..., 0, 2]
    d, e, f = K[..., 1, 1], K[..., 1, 2], K[..., 2, 2]
    zero = torch.zeros_like(a)
    inv_a, inv_d, inv_f = 1.0 / a, 1.0 / d, 1.0 / f
    rows = (
        torch.stack((inv_a, -b * inv_a * inv_d, (b * e - c * d) * inv_a * inv_d * inv_f), dim=-1),
        torch.stack((zero, inv_d, -e * inv_d * inv_f), dim=-1),
        torch.stack((zero, zero, inv_f), dim=-1),
    )
    return torch.stack(rows, dim=-2)


def invert_rigid(b_from_a: torch.Tensor) -> torch.Tensor:
    """``a_from_b`` from rigid transforms ``b_from_a = [R | t]``: ``[R^T | -R^T t]``, batched.

    Shape:
        b_from_a: (..., 4, 4) or (..., 3, 4) -> the same shape (a 4x4 gets the row ``[0, 0, 0, 1]``)
    """
    rot_t = b_from_a[..., :3, :3].transpose(-1, -2)
    trans = -(rot_t @ b_from_a[..., :3, 3:4])
    top = torch.cat((rot_t, trans), dim=-1)
    if b_from_a.shape[-2] == 3:
        return top
    bottom = torch.zeros_like(b_from_a[..., 3:4, :])
    bottom[..., 3] = 1
    return torch.cat((top, bottom), dim=-2)
