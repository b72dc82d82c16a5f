"""One self-supervised training step at 320x240, 3 sources, batch 1, 2 CPU threads.

    .venv/bin/python -m pytest bench/bench_train_step.py --benchmark-only -p no:cacheprovider

Compared in the same run (group ``train_step_320x240``):

- ``forward``: the network's forward alone, without gradients (the floor of any step);
- ``step-unsup_mvsnet``: forward with gradients, the Unsup_MVS objective (photometric + SSIM +
  smoothness at every output), backward, gradient clipping and the AdamW update;
- ``step-jdacs``: the same plus the augmentation term (a second, augmented copy of the views in
  the same forward, so about twice the network work); co-segmentation off (no VGG weights).

Random weights and random images (speed does not depend on them).
"""

from __future__ import annotations

import contextlib

import pytest
import torch

HEIGHT, WIDTH, NUM_SOURCES = 240, 320, 3


def make_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    views = NUM_SOURCES + 1
    K = torch.tensor([[0.9 * WIDTH, 0.0, WIDTH / 2], [0.0, 0.9 * WIDTH, HEIGHT / 2], [0.0, 0.0, 1.0]], dtype=torch.float64)
    poses = torch.eye(4, dtype=torch.float64).repeat(views, 1, 1)
    poses[:, 0, 3] = 0.1 * (torch.arange(views) - NUM_SOURCES / 2)
    return {
        "images": torch.rand(1, views, 3, HEIGHT, WIDTH, generator=generator),
        "K": K.expand(1, views, 3, 3).clone(),
        "cam_from_world": poses[None],
        "depth_range": torch.tensor([[1.0, 5.0]], dtype=torch.float64).expand(1, views, 2).clone(),
        "mask": torch.ones(1, 1, HEIGHT, WIDTH, dtype=torch.bool),
    }


def make_step(recipe: str):
    from pipeline.config import AugmentationConfig
    from pipeline.losses import SelfSupervisedLoss, get_recipe
    from pipeline.model import ModelConfig, PatchmatchNet
    from pipeline.training.step import train_step as _train_step

    torch.manual_seed(0)
    model = PatchmatchNet(ModelConfig()).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    objective = SelfSupervisedLoss(get_recipe(recipe))
    terms = objective.active_terms
    batch = make_batch()

    def step():
        generator = torch.Generator().manual_seed(0)
        return _train_step(
            model, objective, optimizer, scaler, batch, terms, AugmentationConfig(), 0.01, generator,
            None, 1.0, torch.device("cpu"),
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
