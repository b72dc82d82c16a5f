"""The ops' host side never waits for the GPU, launches where the tensors are, and honours
``torch.use_deterministic_algorithms``.

On a GPU every op took 1-13 ms whatever the size (H100/H200 runs, 2026-12): the host set the pace.
A device-to-host synchronisation (``torch.linalg.inv``'s singularity check, ``.item()``,
``bool(tensor)``) or a blocking host-to-device copy (``torch.tensor(..., device=...)``) per call
stalls the CPU until the GPU has drained its queue. Without a GPU the device-agnostic code (public
functions, autograd functions, references, projection composition) runs here on CPU tensors with
those calls made to raise; the CUDA host glue is checked the same way in the simulator
(test_cudasim_correlation_aggregation.py). The ``cuda`` tests run the same under
``torch.cuda.set_sync_debug_mode``.
"""

from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path

import pytest
import torch

import kernels
from kernels.geometry import invert_intrinsics, invert_rigid

sys.path.insert(0, str(Path(__file__).parent))
from test_warp_correlation import make_case as correlation_case  # noqa: E402

KERNELS_DIR = Path(kernels.__file__).resolve().parent


def random_intrinsics(batch, seed, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    K = torch.zeros(batch, 3, 3, dtype=torch.float64)
    K[:, 0, 0] = 50 + 2000 * torch.rand(batch, generator=gen, dtype=torch.float64)
    K[:, 1, 1] = K[:, 0, 0] * (0.8 + 0.4 * torch.rand(batch, generator=gen, dtype=torch.float64))
    K[:, 0, 1] = torch.randn(batch, generator=gen, dtype=torch.float64)  # skew: the general case
    K[:, 0, 2] = 1000 * torch.rand(batch, generator=gen, dtype=torch.float64)
    K[:, 1, 2] = 800 * torch.rand(batch, generator=gen, dtype=torch.float64)
    K[:, 2, 2] = 1.0
    return K.to(dtype)


def random_rigid(batch, seed, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(batch, 3, 3, generator=gen, dtype=torch.float64))
    q = q * torch.linalg.det(q).sign()[:, None, None]  # a rotation, det +1
    pose = torch.eye(4, dtype=torch.float64).repeat(batch, 1, 1)
    pose[:, :3, :3] = q
    pose[:, :3, 3] = 3 * torch.randn(batch, 3, generator=gen, dtype=torch.float64)
    return pose.to(dtype)


@pytest.mark.parametrize("precision", [torch.float64, torch.float32])
def test_invert_intrinsics_matches_the_checked_inverse(precision):
    dtype = precision
    K = random_intrinsics(64, seed=1, dtype=dtype)
    tol = 1e-14 if dtype == torch.float64 else 2e-6
    expected = torch.linalg.inv(K)
    got = invert_intrinsics(K)
    assert got.dtype == dtype and got.shape == K.shape
    assert torch.allclose(got, expected, rtol=tol, atol=tol * expected.abs().amax(dim=(-1, -2), keepdim=True).max())
    assert torch.allclose(K @ got, torch.eye(3, dtype=dtype).expand_as(K), atol=1e4 * tol)  # cx ~ 1e3: cancellation
    assert torch.equal(got[:, 1:, 0], torch.zeros_like(got[:, 1:, 0])) and torch.equal(got[:, 2, 1], torch.zeros_like(got[:, 2, 1]))


@pytest.mark.parametrize("rows", [4, 3])
def test_invert_rigid_matches_the_checked_inverse(rows):
    pose = random_rigid(16, seed=2)
    expected = torch.linalg.inv(pose)[:, :rows]
    got = invert_rigid(pose[:, :rows])
    assert got.shape == (16, rows, 4)
    assert torch.allclose(got, expected, rtol=1e-13, atol=1e-13)
    if rows == 4:
        assert torch.equal(got[:, 3], torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64).expand(16, 4))


def _checked_projection(ref_K, src_K, src_from_ref, dtype):
    """The composition as it was (2026-12-06): ``torch.linalg.inv`` for ``ref_K^-1``."""
    ref_K64, src_K64, pose64 = (t.to(torch.float64) for t in (ref_K, src_K, src_from_ref))
    M = src_K64 @ pose64[:, :3, :3] @ torch.linalg.inv(ref_K64)
    T = (src_K64 @ pose64[:, :3, 3:4]).squeeze(-1)
    return M.to(dtype), T.to(dtype)


@pytest.mark.parametrize("precision", [torch.float32, torch.float64])
def test_projections_equal_those_of_the_checked_inverse(precision):
    dtype = precision
    """float32 (what the network runs): bit for bit; float64: within a few ulps."""
    from kernels.warp_correlation.reference import projection_matrices
    from kernels.warp_image.reference import projection_matrix

    for seed in range(20):
        ref_K, src_K = random_intrinsics(4, seed), random_intrinsics(4, seed + 100)
        pose = random_rigid(4, seed + 200)
        M_old, T_old = _checked_projection(ref_K, src_K, pose, dtype)
        M, T = projection_matrices(ref_K, src_K, pose, dtype)
        P = projection_matrix(ref_K, src_K, pose, dtype)
        assert torch.equal(T, T_old) and torch.equal(P[:, :, 3], T_old)
        if dtype == torch.float32:
            assert torch.equal(M, M_old) and torch.equal(P[:, :, :3], M_old), seed
        else:
            scale = M_old.abs().amax(dim=(-1, -2), keepdim=True)
            assert ((M - M_old).abs() <= 1e-15 * scale).all() and ((P[:, :, :3] - M_old).abs() <= 1e-15 * scale).all()


# --------------------------------------------------------------------------------------------
# Every op, forward and backward, with the synchronising calls made to raise
# --------------------------------------------------------------------------------------------


def _op_cases(device, dtype=torch.float32):
    """(name, function of fresh leaf inputs -> output, inputs) for every public op and reference."""
    gen = torch.Generator().manual_seed(0)

    def rand(*shape, low=0.0, high=1.0):
        return (low + (high - low) * torch.rand(*shape, generator=gen, dtype=torch.float64)).to(device=device, dtype=dtype)

    B, C, H, W, D, K = 2, 4, 6, 7, 3, 3
    ref, src, ref_K, src_K, pose, depth, G = correlation_case(B, C, H, W, 5, 8, D, 2, device, dtype, seed=3)
    offsets = rand(B, 2 * K, H, W, low=-2.0, high=2.0)
    affinity = rand(B, 8, H, W, low=-0.1, high=0.1)
    mlp_weights = [rand(5, C, low=-1, high=1), rand(2, 5, low=-1, high=1)]
    mlp_biases = [rand(5, low=-1, high=1), rand(2, low=-1, high=1)]
    from kernels.adaptive_aggregation import adaptive_aggregation_reference
    from kernels.depth_weighted_aggregation import depth_weighted_aggregation_reference
    from kernels.neighbour_correlation import neighbour_correlation_reference
    from kernels.spn_propagation import spn_propagate_reference
    from kernels.ssim import ssim_reference
    from kernels.warp_correlation import warp_correlation_reference
    from kernels.warp_image import warp_image_reference

    image_depth = rand(B, 1, H, W, low=1.0, high=4.0)
    cases = []
    for suffix, ssim, warp_image, warp_corr, aggregate, weighted, neighbours, spn in (
        ("", kernels.ssim, kernels.warp_image, kernels.warp_correlation, kernels.adaptive_aggregation,
         kernels.depth_weighted_aggregation, kernels.neighbour_correlation, kernels.spn_propagate),
        ("_reference", ssim_reference, warp_image_reference, warp_correlation_reference, adaptive_aggregation_reference,
         depth_weighted_aggregation_reference, neighbour_correlation_reference, spn_propagate_reference),
    ):
        cases += [
            ("ssim" + suffix, lambda x, y, f=ssim: f(x, y), [rand(B, 3, H, W), rand(B, 3, H, W)]),
            ("warp_image" + suffix, lambda s, d, f=warp_image: f(s, d, ref_K, src_K, pose)[0],
             [rand(B, 3, 5, 8), image_depth.clone()]),
            ("warp_correlation" + suffix, lambda r, s, f=warp_corr: f(r, s, ref_K, src_K, pose, depth, G)[0],
             [ref.clone(), src.clone()]),
            ("adaptive_aggregation" + suffix, lambda c, o, w, f=aggregate: f(c, o, w),
             [rand(B, D, H, W), offsets.clone(), rand(B, K, D, H, W, low=0.1)]),
            ("depth_weighted_aggregation" + suffix, lambda c, o, i, fw, f=weighted: f(c, o, i, fw, torch.full((B,), 3.0, dtype=dtype, device=device)),
             [rand(B, D, H, W), offsets.clone(), rand(B, D, H, W, low=0.2), rand(B, K, H, W)]),
            ("neighbour_correlation" + suffix, lambda x, o, f=neighbours: f(x, o, 2), [rand(B, C, H, W), offsets.clone()]),
            ("spn_propagate" + suffix, lambda d, a, f=spn: f(d, a, steps=2), [image_depth.clone(), affinity.clone()]),
        ]
    cases.append(("pointwise_mlp", lambda x, *wb: kernels.pointwise_mlp(x, list(wb[:2]), list(wb[2:])),
                  [rand(B, C, H, W), *mlp_weights, *mlp_biases]))
    return cases


def _run_forward_backward(function, inputs):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = function(*leaves)
    upstream = torch.ones_like(out) if not out.is_floating_point() else torch.linspace(
        -1, 1, out.numel(), dtype=out.dtype, device=out.device
    ).view_as(out)
    grads = torch.autograd.grad(out, leaves, upstream, allow_unused=True)
    return out, grads


@pytest.fixture
def no_synchronising_calls(monkeypatch):
    """Make the calls that synchronise on a CUDA tensor raise (on any tensor)."""

    def refuse(name):
        def call(*args, **kwargs):
            raise AssertionError(f"{name} called: on a CUDA tensor it waits for the GPU")

        return call

    monkeypatch.setattr(torch.linalg, "inv", refuse("torch.linalg.inv"))
    for name in ("item", "tolist", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, refuse(f"Tensor.{name}"))


def test_ops_forward_and_backward_call_no_synchronising_function(no_synchronising_calls):
    names = []
    for name, function, inputs in _op_cases("cpu"):
        out, grads = _run_forward_backward(function, inputs)
        assert any(g is not None for g in grads), name
        names.append(name)
    assert len(names) == 15


# --------------------------------------------------------------------------------------------
# On a GPU
# --------------------------------------------------------------------------------------------


@pytest.mark.cuda
def test_cuda_ops_never_synchronise():
    """Each op's forward and backward under ``set_sync_debug_mode("error")`` (inputs already on
    the GPU, compiled kernels already loaded by a first call)."""
    if not torch.cuda.is_available():
        pytest.skip("CUDA not available")
    cases = _op_cases("cuda")
    for name, function, inputs in cases:
        _run_forward_backward(function, inputs)  # compile / load the kernels outside the check
    torch.cuda.synchronize()
    failures = []
    for name, function, inputs in cases:
        torch.cuda.set_sync_debug_mode("error")
        try:
            _run_forward_backward(function, inputs)
        except RuntimeError as error:
            failures.append(f"{name}: {error}")
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert not failures, "\n".join(failures)


def _small_batch(device, height=64, width=80, sources=2):
    gen = torch.Generator().manual_seed(0)
    views = sources + 1
    K = torch.tensor([[0.9 * width, 0.0, width / 2], [0.0, 0.9 * width, height / 2], [0.0, 0.0, 1.0]], dtype=torch.float64)
    poses = torch.eye(4, dtype=torch.float64).repeat(views, 1, 1)
    poses[:, 0, 3] = 0.1 * (torch.arange(views) - sources / 2)
    batch = {
        "images": torch.rand(1, views, 3, height, width, generator=gen),
        "K": K.expand(1, views, 3, 3).clone(),
        "cam_from_world": poses[None],
        "depth_range": torch.tensor([[1.0, 5.0]], dtype=torch.float64).expand(1, views, 2).clone(),
        "mask": torch.ones(1, 1, height, width, dtype=torch.bool),
    }
    return {key: value.to(device) for key, value in batch.items()}


def _syncs_outside_kernels(run) -> tuple[list[str], list[str]]:
    """Run ``run()`` under ``set_sync_debug_mode("warn")``; (syncs raised from kernels/, others).

    A synchronisation warning points at the Python line that made the synchronising call.
    """
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    inside = [f"{w.filename}:{w.lineno}" for w in syncs if Path(w.filename).resolve().is_relative_to(KERNELS_DIR)]
    outside = sorted({f"{w.filename}:{w.lineno}" for w in syncs} - set(inside))
    return inside, outside


def _pipeline_run(what, recipe="unsup_mvsnet"):
    """A function that runs one training step (``recipe``) or one inference forward on the GPU."""
    from pipeline.config import AugmentationConfig
    from pipeline.losses import SelfSupervisedLoss, get_recipe
    from pipeline.losses.cosegmentation import CoSegmentation
    from pipeline.model import ModelConfig, PatchmatchNet
    from pipeline.training.step import train_step

    device = torch.device("cuda")
    torch.manual_seed(0)
    batch = _small_batch(device)
    views = batch["images"].shape[1]
    model = PatchmatchNet(ModelConfig()).to(device)
    if what == "train_step":
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        scaler = torch.amp.GradScaler("cuda", enabled=False)
        loss_recipe = get_recipe(recipe)
        coseg = CoSegmentation("relu2_2", 4, 3) if "cosegmentation" in loss_recipe.weights else None
        objective = SelfSupervisedLoss(loss_recipe, cosegmentation=coseg).to(device)

        def run():
            generator = torch.Generator(device="cpu").manual_seed(0)
            train_step(model, objective, optimizer, scaler, batch, objective.active_terms, AugmentationConfig(), 0.01,
                       generator, None, 1.0, device)
    else:
        model.eval()

        def run():
            with torch.no_grad():
                model([batch["images"][:, v] for v in range(views)], [batch["K"][:, v].float() for v in range(views)],
                      [batch["cam_from_world"][:, v].float() for v in range(views)],
                      batch["depth_range"][:, 0, 0].float(), batch["depth_range"][:, 0, 1].float())

    return run


@pytest.mark.cuda
@pytest.mark.parametrize("what", ["train_step", "infer_view"])
def test_cuda_training_step_and_inference_view_kernels_never_synchronise(what):
    """One training step and one inference view, under ``set_sync_debug_mode("warn")``: no
    synchronisation from the kernels package (the ones elsewhere are printed)."""
    if not torch.cuda.is_available():
        pytest.skip("CUDA not available")
    run = _pipeline_run(what)
    run()  # compile / load the kernels
    inside, outside = _syncs_outside_kernels(run)
    print(f"{what}: synchronisations outside kernels/:", *outside, sep="\n  ")
    assert not inside, inside


@pytest.mark.cuda
@pytest.mark.parametrize("what, recipe", [("train_step", "unsup_mvsnet"), ("train_step", "jdacs"), ("infer_view", None)])
def test_cuda_training_step_and_inference_view_never_synchronise(what, recipe):
    """The whole step (network, losses, backward, optimizer) and the whole inference forward under
    ``set_sync_debug_mode("error")``: no synchronisation anywhere (tests/test_host_sync.py checks
    the same on the CPU)."""
    if not torch.cuda.is_available():
        pytest.skip("CUDA not available")
    run = _pipeline_run(what, recipe)
    run()  # compile / load the kernels, make the optimizer's state
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        run()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@pytest.mark.cuda
def test_cuda_ops_launch_on_the_tensors_device():
    """Inputs on cuda:1 while cuda:0 is current: the kernels run there and give the CPU results."""
    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    torch.cuda.set_device(0)
    expected = {name: _run_forward_backward(f, inputs) for name, f, inputs in _op_cases("cpu", torch.float64)}
    for name, function, inputs in _op_cases("cuda:1", torch.float64):
        out, grads = _run_forward_backward(function, inputs)
        assert out.device == torch.device("cuda:1"), name
        want_out, want_grads = expected[name]
        assert torch.allclose(out.cpu(), want_out, atol=1e-9, rtol=1e-7), name
        for got, want in zip(grads, want_grads):
            assert (got is None) == (want is None), name
            if got is not None:
                assert got.device == torch.device("cuda:1") and torch.allclose(got.cpu(), want, atol=1e-9, rtol=1e-7), name
    assert torch.cuda.current_device() == 0


@pytest.mark.cuda
def test_cuda_deterministic_mode():
    """``torch.use_deterministic_algorithms(True)``: the backwards whose default kernels scatter
    with atomics give the same bits twice, and agree with the atomic kernels."""
    if not torch.cuda.is_available():
        pytest.skip("CUDA not available")
    cases = {name: (f, inputs) for name, f, inputs in _op_cases("cuda")}
    previous = torch.are_deterministic_algorithms_enabled()
    try:
        for name in ("adaptive_aggregation", "warp_correlation", "warp_image"):
            f, inputs = cases[name]
            leaves = [t.detach().clone().requires_grad_() for t in inputs]
            out = f(*leaves)  # forward outside: its cuBLAS 3x3 products would need CUBLAS_WORKSPACE_CONFIG
            upstream = torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device).view_as(out)
            atomic = torch.autograd.grad(out, leaves, upstream, retain_graph=True)
            torch.use_deterministic_algorithms(True)
            try:
                first = torch.autograd.grad(out, leaves, upstream, retain_graph=True)
                again = torch.autograd.grad(out, leaves, upstream, retain_graph=True)
            finally:
                torch.use_deterministic_algorithms(False)
            for a, b, c in zip(first, again, atomic):
                assert torch.equal(a, b), name
                assert torch.allclose(a, c, atol=1e-5, rtol=1e-4), name
    finally:
        torch.use_deterministic_algorithms(previous)
