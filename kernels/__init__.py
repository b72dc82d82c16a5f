"""selfmvs kernels: the differentiable hot paths of self-supervised PatchMatch MVS.

Each op has a plain-PyTorch reference (``<op>_reference``, same signature, its docstring states
its precision policy), a CPU implementation (numba ``njit(parallel=True)``) and a CUDA
implementation, dispatched by device inside one ``torch.autograd.Function``. The CPU forwards that
inference runs (``warp_correlation``, ``neighbour_correlation``, the depth-weighted aggregation)
also exist in C++ (``kernels/<op>/native.cpp``, built into one library by ``kernels._native`` with
the system compiler on first use, equal to the numba kernels bit for bit) and are preferred where they build, so an inference process never loads
numba. All ops are batched,
take float32/float64 CPU or CUDA tensors, check their inputs (``TypeError``/``ValueError`` quoting
what they got) and make non-contiguous inputs contiguous. This package imports torch (and numba
for CPU work, lazily), never ``pipeline``; numba.cuda/cupy are imported only when a CUDA tensor
arrives, and CUDA is never queried at import. Shared plumbing: ``kernels._backend``.

Conventions (docs/formats.md): pixel (row i, col j) has centre (x, y) = (j + 0.5, i + 0.5); K
are 3x3 in pixels at the resolution of the map they describe; depth is z-depth; ``src_from_ref``
maps reference-camera to source-camera coordinates (x right, y down, z forward).

Public ops:

``ssim(x, y, *, padding="reflect") -> Tensor``
    Per-pixel SSIM, 3x3 box window, C1 = 0.01^2, C2 = 0.03^2, inputs in [0, 1].
    x, y: (B, C, H, W) -> (B, C, H, W) (reflection padding) or (B, C, H - 2, W - 2)
    (``padding="valid"``). Gradients to x and y.

``warp_image(src_image, ref_depth, ref_K, src_K, src_from_ref) -> (warped, valid)``
    Bilinear inverse warp of the source image into the reference view at ``ref_depth``.
    src_image (B, C, Hs, Ws), ref_depth (B, 1, H, W), ref_K (B, 3, 3) at (H, W), src_K (B, 3, 3)
    at (Hs, Ws), src_from_ref (B, 4, 4) -> warped (B, C, H, W), valid (B, 1, H, W) bool.
    Invalid (behind the source camera, z <= 1e-6, or sample centre outside the source image:
    x - 0.5 not in [0, Ws - 1] or y - 0.5 not in [0, Hs - 1]) -> 0 and False.
    Gradients to src_image and ref_depth.

``warp_correlation(ref_feature, src_feature, ref_K, src_K, src_from_ref, depth_hypotheses,
num_groups) -> (correlation, valid)``
    ref_feature (B, C, H, W), src_feature (B, C, Hs, Ws), K at the feature resolutions,
    src_from_ref (B, 4, 4), depth_hypotheses (B, D, H, W) -> correlation (B, G, D, H, W) (mean
    over the C/G channels of group g of ref * bilinearly sampled src; invalid -> 0),
    valid (B, D, H, W) bool. Gradients to both feature maps, not to depths; the warped
    (B, C, D, H, W) volume is never materialised.

``adaptive_aggregation(cost, offsets, weights, eps=1e-8) -> Tensor``
    cost (B, D, H, W), offsets (B, 2K, H, W) in pixel-index units (x then y per tap),
    weights (B, K, D, H, W) -> (B, D, H, W): sum_k w_k * bilinear(cost, p + offset_k) /
    (sum_k w_k + eps), zero outside the map. Gradients to cost, offsets and weights.

``depth_weighted_aggregation(cost, offsets, inverse, feature_weight, scale, eps=1e-8) -> Tensor``
    ``adaptive_aggregation`` with PatchmatchNet's weights (eq. 7) built on the fly:
    w_kd = feature_weight_k * sigmoid(4 - min(|inv_d(p + offset_k) - inv_d(p)| * scale, 8)),
    inverse (B, D, H, W) sampled with border clamping, feature_weight (B, K, H, W), scale (B,).
    CPU without autograd: one fused kernel (no (B, K, D, H, W) weights); otherwise the weights
    are built in torch and passed to ``adaptive_aggregation`` (gradients to all inputs).

``neighbour_correlation(feature, offsets, num_groups) -> Tensor``
    feature (B, C, H, W), offsets (B, 2K, H, W) -> (B, G, K, H, W): group-wise mean of
    feature(p) * bilinear(feature, p + offset_k), positions clamped into the map (the input of
    PatchmatchNet's feature weights). CPU without autograd: a numba kernel; otherwise the
    ``grid_sample`` reference (differentiable).

``pointwise_mlp(x, weights, biases, *, chunk=2**16) -> Tensor``
    x (B, C_0, *S), weights[l] (C_{l+1}, C_l), biases[l] (C_{l+1},) -> (B, C_L, *S): linear layers at
    every position, ReLU between them (PatchmatchNet's 1x1x1 nets). CPU without autograd: a C++
    kernel of ``kernels._native`` that keeps the hidden layers in per-thread buffers (no numba
    twin: without the library, the reference in chunks); otherwise the ``baddbmm`` reference.

``spn_propagate(depth, affinity, *, steps) -> Tensor``
    depth (B, 1, H, W), affinity (B, 8, H, W) with sum_k |a_k| <= 1 -> (B, 1, H, W) after ``steps``
    8-neighbour propagation steps d <- (1 - sum_k a_k) d + sum_k a_k d(p + n_k) (SPN / CSPN; zero
    affinity across the border). Gradients to depth and affinity (gather-form backward, no atomics).

Host side on a GPU: no op waits for the device. Projections are composed with closed-form inverses
(``kernels.geometry``: ``invert_intrinsics`` for upper-triangular K, ``invert_rigid`` for
``[R | t]``; ``torch.linalg.inv`` checks its result on the host), kernel constants are scalar
arguments (no per-call host-to-device copy), and nothing calls ``.item()``/``bool(tensor)``.
Launches go to the tensors' device and torch's current stream there.

``torch.use_deterministic_algorithms(True)`` is honoured: the CUDA backwards of
``adaptive_aggregation`` (cost gradient), ``warp_correlation`` (source-feature gradient) and
``warp_image`` (source-image gradient) then write their scattered terms and sum them with
``index_add_`` instead of atomics (more memory); the other gradients never use atomics. The CPU kernels use no atomics.
"""

from .adaptive_aggregation import adaptive_aggregation
from .depth_weighted_aggregation import depth_weighted_aggregation
from .neighbour_correlation import neighbour_correlation
from .pointwise_mlp import pointwise_mlp
from .spn_propagation import spn_propagate
from .ssim import ssim
from .warp_correlation import warp_correlation
from .warp_image import warp_image
