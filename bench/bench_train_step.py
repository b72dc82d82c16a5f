"""One self-supervised training step at 320x240, 3 sources, batch 1, 2 CPU threads.

    .venv/bin/python -m pytest bench/bench_train_step.py --benchmark-only -p no:cacheprovider

Compared in the same run (group ``train_step_320x240``):

- ``forward``: the network's forward alone, without gradients (the floor of any step);
- ``step-unsup_mvsnet``: forward with gradients, the Unsup_MVS objective (photometric + SSIM +
  smoothness at every output), backward, gradient clipping and the AdamW update;
- ``step-jdacs``: the same plus the augmentation term (a second, augmented copy of the views in
  the same forward, so about twice the network work); co-segmentation off (no VGG weights).

Random weights and random images (speed does not depend on them).

``test_train_step_device`` (the training row of bench/gpu_check.sh): one step of the default recipe
(``unsup_mvsnet``) on ``--bench-device`` at batch 8, 4 sources, 320x240, in bf16 autocast on a GPU
(training runs autocast on CUDA only, so fp32 on the CPU), synchronised before the timer stops;
``extra_info["peak_cuda_bytes"]`` is the peak CUDA memory of the timed steps. ``--bench-smoke``:
batch 2 at 64x48, one round.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

HEIGHT, WIDTH, NUM_SOURCES = 240, 320, 3
#: name -> (batch, height, width) of test_train_step_device (4 sources, bf16 autocast on CUDA)
SIZES = {"b8-320x240": (8, 240, 320)}
SMOKE_SIZES = {"smoke-b2-64x48": (2, 48, 64)}


def make_batch(seed: int = 0, batch: int = 1, height: int = HEIGHT, width: int = WIDTH,
               num_sources: int = NUM_SOURCES) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    views = num_sources + 1
    K = torch.tensor([[0.9 * width, 0.0, width / 2], [0.0, 0.9 * width, height / 2], [0.0, 0.0, 1.0]], dtype=torch.float64)
    poses = torch.eye(4, dtype=torch.float64).repeat(views, 1, 1)
    poses[:, 0, 3] = 0.1 * (torch.arange(views) - num_sources / 2)
    return {
        "images": torch.rand(batch, views, 3, height, width, generator=generator),
        "K": K.expand(batch, views, 3, 3).clone(),
        "cam_from_world": poses[None].expand(batch, views, 4, 4).clone(),
        "depth_range": torch.tensor([[1.0, 5.0]], dtype=torch.float64).expand(batch, views, 2).clone(),
        "mask": torch.ones(batch, 1, height, width, dtype=torch.bool),
    }


def make_step(recipe: str, batch_size: int = 1, size: tuple[int, int] = (HEIGHT, WIDTH), num_sources: int = NUM_SOURCES,
              device: torch.device = torch.device("cpu"), amp_dtype: torch.dtype | None = None):
    from pipeline.config import AugmentationConfig
    from pipeline.losses import SelfSupervisedLoss, get_recipe
    from pipeline.model import ModelConfig, PatchmatchNet
    from pipeline.training.step import train_step as _train_step

    torch.manual_seed(0)
    model = PatchmatchNet(ModelConfig()).train().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    objective = SelfSupervisedLoss(get_recipe(recipe))
    terms = objective.active_terms
    batch = {k: v.to(device) for k, v in make_batch(0, batch_size, *size, num_sources).items()}

    def step():
        generator = torch.Generator().manual_seed(0)
        return _train_step(
            model, objective, optimizer, scaler, batch, terms, AugmentationConfig(), 0.01, generator,
            amp_dtype, 1.0, device,
        )

    return step


def make_forward():
    from pipeline.model import ModelConfig, PatchmatchNet

    torch.manual_seed(0)
    model = PatchmatchNet(ModelConfig()).train()
    batch = make_batch()
    views = NUM_SOURCES + 1

    def forward():
        with torch.no_grad():
            return model(
                [batch["images"][:, v] for v in range(views)],
                [batch["K"][:, v].float() for v in range(views)],
                [batch["cam_from_world"][:, v].float() for v in range(views)],
                batch["depth_range"][:, 0, 0].float(),
                batch["depth_range"][:, 0, 1].float(),
            )

    return forward


@pytest.mark.parametrize("case", ["forward", "step-unsup_mvsnet", "step-jdacs"])
def test_train_step(benchmark, case):
    benchmark.group = "train_step_320x240"
    run = make_forward() if case == "forward" else make_step(case.removeprefix("step-"))
    run()  # warm-up: numba compile / cache load, allocator
    benchmark.pedantic(run, rounds=3, iterations=1)


def test_train_step_device(benchmark, bench_device, sync, bench_size, bench_smoke):
    batch_size, height, width = (SIZES | SMOKE_SIZES)[bench_size]
    amp_dtype = torch.bfloat16 if bench_device.type == "cuda" else None
    run = make_step("unsup_mvsnet", batch_size, (height, width), 4, bench_device, amp_dtype)

    def step():
        run()
        sync()

    for _ in range(1 if bench_smoke else 2):
        step()  # warm-up: kernel compile / cache load, allocator, AdamW state
    benchmark.group = f"train_step {bench_size} {bench_device.type}"
    benchmark.extra_info.update(size=bench_size, batch=batch_size, height=height, width=width, num_sources=4,
                                recipe="unsup_mvsnet", amp=str(amp_dtype).removeprefix("torch.") if amp_dtype else "off",
                                device=str(bench_device), threads=torch.get_num_threads())
    if bench_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(bench_device)
    benchmark.pedantic(step, rounds=1 if bench_smoke else 5, iterations=1)
    benchmark.extra_info["peak_cuda_bytes"] = (torch.cuda.max_memory_allocated(bench_device)
                                               if bench_device.type == "cuda" else None)


if __name__ == "__main__":  # a quick table without pytest-benchmark
    import time

    torch.set_num_threads(2)
    with contextlib.suppress(ImportError):
        import numba

        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    for case in ("forward", "step-unsup_mvsnet", "step-jdacs"):
        run = make_forward() if case == "forward" else make_step(case.removeprefix("step-"))
        run()
        times = []
        for _ in range(3):
            tic = time.perf_counter()
            run()
            times.append(time.perf_counter() - tic)
        print(f"{case:20s} min {min(times):.3f} s  median {sorted(times)[1]:.3f} s")
