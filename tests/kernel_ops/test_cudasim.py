"""The numba.cuda kernels of ssim and warp_image, run under numba's CUDA simulator.

``NUMBA_ENABLE_CUDASIM=1`` must be set before ``numba.cuda`` is first imported, and it would turn
every later CUDA use in the process into simulation, so each case runs this file as a script in
a fresh interpreter (``python test_cudasim.py <case>``), which prints its error figures as JSON.
The simulator runs each thread in Python (and ``syncthreads`` as real threads), so the cases are
small: a few hundred to ~1000 threads, sizes chosen to cross one 16x16 tile boundary.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys


def _run_case(case: str) -> dict:
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    proc = subprocess.run(
        [sys.executable, __file__, case], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"simulated case {case} failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_ssim_kernels_in_simulator():
    errors = _run_case("ssim")
    for key, (error, tol) in errors.items():
        assert error <= tol, f"{key}: max error {error} > {tol}"


def test_warp_image_kernels_in_simulator():
    errors = _run_case("warp_image")
    for key, (error, tol) in errors.items():
        if key.endswith(("valid_mismatch", "_range", "_launches", "_repeat")):
            assert error == 0, f"{key}: {error} pixels disagree on validity"
        else:
            assert error <= tol, f"{key}: max error {error} > {tol}"


# ---------------------------------------------------------------------------------------------
# Script side: runs in the simulated interpreter.
# ---------------------------------------------------------------------------------------------

_TOL = {"float64": 1e-12, "float32": 2e-5}


def _case_ssim() -> dict:
    import numpy as np
    import torch
    from numba import cuda

    from kernels.ssim import cuda as kc
    from kernels.ssim import ssim_reference

    if "simulator" not in type(cuda.jit(kc.ssim_fwd_kernel)).__module__:
        raise RuntimeError("not running under the CUDA simulator")
    forward = cuda.jit(kc.ssim_fwd_kernel)
    backward = cuda.jit(kc.ssim_bwd_kernel)
    rng = np.random.default_rng(0)
    n_img, height, width = 2, 7, 19  # 19 > 16: two tiles across
    results = {}
    for dtype in ("float64", "float32"):
        for padding in ("reflect", "valid"):
            valid = padding == "valid"
            x = rng.random((n_img, height, width)).astype(dtype)
            y = rng.random((n_img, height, width)).astype(dtype)
            out_h, out_w = (height - 2, width - 2) if valid else (height, width)
            out = np.zeros((n_img, out_h, out_w), dtype)
            grad = rng.standard_normal((n_img, out_h, out_w)).astype(dtype)
            grad_x = np.zeros_like(x)
            grad_y = np.zeros_like(y)
            forward[(out.size + 127) // 128, 128](x, y, out, valid)
            grid, block = kc.bwd_launch_config(n_img, height, width)
            backward[grid, block](x, y, grad, grad_x, grad_y, valid)
            xt = torch.tensor(x, dtype=torch.float64)[:, None].requires_grad_()
            yt = torch.tensor(y, dtype=torch.float64)[:, None].requires_grad_()
            ref = ssim_reference(xt, yt, padding=padding)
            rx, ry = torch.autograd.grad(ref, (xt, yt), torch.tensor(grad, dtype=torch.float64)[:, None])
            tol = _TOL[dtype]
            key = f"{dtype}-{padding}"
            results[f"{key}-forward"] = (float(np.abs(out - ref.detach().numpy()[:, 0]).max()), tol)
            results[f"{key}-grad_x"] = (float(np.abs(grad_x - rx.numpy()[:, 0]).max()), 10 * tol)
            results[f"{key}-grad_y"] = (float(np.abs(grad_y - ry.numpy()[:, 0]).max()), 10 * tol)
    return results


def _case_warp_image() -> dict:
    import numpy as np
    import torch
    from numba import cuda

    from kernels.warp_image import cuda as kc
    from kernels.warp_image import projection_matrix, warp_image_reference

    forward = cuda.jit(kc.warp_image_fwd_kernel)
    backward = cuda.jit(kc.warp_image_bwd_kernel)
    gen = torch.Generator().manual_seed(0)
    batch, channels, height, width, src_h, src_w = 2, 2, 6, 9, 5, 8
    ref_K = torch.tensor([[8.0, 0, 4.5], [0, 8.0, 3.0], [0, 0, 1]], dtype=torch.float64).expand(batch, 3, 3)
    src_K = torch.tensor([[7.0, 0, 4.0], [0, 7.0, 2.5], [0, 0, 1]], dtype=torch.float64).expand(batch, 3, 3)
    src_from_ref = torch.eye(4, dtype=torch.float64).repeat(batch, 1, 1)
    src_from_ref[:, 0, 3] = 0.2
    src_from_ref[1, 1, 3] = -0.1
    src_from_ref[1, :3, :3] = torch.tensor([[0.995, 0, 0.0998], [0, 1, 0], [-0.0998, 0, 0.995]], dtype=torch.float64)
    results = {}
    for dtype, torch_dtype in (("float64", torch.float64), ("float32", torch.float32)):
        src = torch.rand((batch, channels, src_h, src_w), generator=gen, dtype=torch.float64).to(torch_dtype)
        depth = (1 + torch.rand((batch, 1, height, width), generator=gen, dtype=torch.float64)).to(torch_dtype)
        depth[0, 0, 0, :2] = -1.0  # behind the camera
        proj = projection_matrix(ref_K, src_K, src_from_ref, torch_dtype)
        out = np.zeros((batch, channels, height, width), dtype)
        valid = np.zeros((batch, 1, height, width), np.uint8)
        threads = 64
        blocks = (batch * height * width + threads - 1) // threads
        forward[blocks, threads](src.numpy(), depth.numpy(), proj.numpy(), out, valid)
        grad = torch.randn((batch, channels, height, width), generator=gen, dtype=torch.float64).to(torch_dtype)
        grad_src = np.zeros((batch, channels, src_h, src_w), dtype)
        grad_depth = np.zeros((batch, 1, height, width), dtype)
        backward[blocks, threads](src.numpy(), depth.numpy(), proj.numpy(), grad.numpy(), grad_src, grad_depth, True)
        s = src.clone().requires_grad_()
        d = depth.clone().requires_grad_()
        ref, ref_valid = warp_image_reference(s, d, ref_K, src_K, src_from_ref)
        r_src, r_depth = torch.autograd.grad(ref, (s, d), grad)
        tol = _TOL[dtype]
        results[f"{dtype}-valid_mismatch"] = (int((valid.astype(bool) != ref_valid.numpy()).sum()), 0)
        results[f"{dtype}-valid_fraction"] = (-float(ref_valid.double().mean()), -0.3)  # mixes valid/invalid
        results[f"{dtype}-forward"] = (float(np.abs(out - ref.detach().numpy()).max()), tol)
        results[f"{dtype}-grad_src"] = (float(np.abs(grad_src - r_src.numpy()).max()), tol)
        scale = max(1.0, float(r_depth.abs().max()))
        results[f"{dtype}-grad_depth"] = (float(np.abs(grad_depth - r_depth.numpy()).max()), tol * scale)
        # deterministic image gradient: tap weights and indices, summed per channel
        corner_weight = np.full((batch, height, width, 4), 7.0, dtype)
        corner_index = np.full((batch, height, width, 4), -1, np.int64)
        cuda.jit(kc.warp_image_bwd_src_corners_kernel)[blocks, threads](
            src.numpy(), depth.numpy(), proj.numpy(), corner_weight, corner_index
        )
        spare = batch * src_h * src_w
        terms = corner_weight[..., None] * grad.numpy().transpose(0, 2, 3, 1)[:, :, :, None, :]
        summed = np.stack([np.bincount(corner_index.ravel(), weights=terms[..., c].ravel(), minlength=spare + 1)[:spare]
                           for c in range(channels)], axis=-1).reshape(batch, src_h, src_w, channels).transpose(0, 3, 1, 2)
        results[f"{dtype}-grad_src_corners"] = (float(np.abs(summed - r_src.numpy()).max()), tol)
        results[f"{dtype}-corner_index_range"] = (int(corner_index.min() < 0) + int(corner_index.max() > spare), 0)
        # the host glue in deterministic mode, CPU tensors standing in: same gradients twice, the
        # atomic path not taken (its kernel is called with need_src False)
        launched = []
        kc.as_numba_array = lambda t: t.detach().numpy()
        kc.numba_stream = lambda device: 0
        kc.numba_device = lambda device: contextlib.nullcontext()
        kc.device_index = lambda device: 0

        def compiled(module, name, signature, index):
            kernel = cuda.jit(getattr(kc, name))

            class Launch:
                def __getitem__(self, config):
                    def run(*args):
                        launched.append((name, args[-1] if name == "warp_image_bwd_kernel" else None))
                        return kernel[config](*args)
                    return run
            return Launch()

        kc.numba_cuda_kernel = compiled
        torch.use_deterministic_algorithms(True)
        try:
            first = kc.warp_image_backward(src, depth, proj, grad, True, True)
            again = kc.warp_image_backward(src, depth, proj, grad, True, True)
        finally:
            torch.use_deterministic_algorithms(False)
        expected_launches = 2 * [("warp_image_bwd_kernel", False), ("warp_image_bwd_src_corners_kernel", None)]
        results[f"{dtype}-deterministic_launches"] = (int(launched != expected_launches), 0)
        results[f"{dtype}-deterministic_repeat"] = (int(not all(torch.equal(a, b) for a, b in zip(first, again))), 0)
        results[f"{dtype}-deterministic_grad_src"] = (float((first[0] - r_src).abs().max()), tol)
        results[f"{dtype}-deterministic_grad_depth"] = (float((first[1] - r_depth).abs().max()), tol * scale)
    return results


if __name__ == "__main__":
    if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        sys.exit("run with NUMBA_ENABLE_CUDASIM=1")
    cases = {"ssim": _case_ssim, "warp_image": _case_warp_image}
    print(json.dumps(cases[sys.argv[1]]()))
