"""Learning-rate schedule and step budgets of a run."""

from __future__ import annotations

import math


def lr_multiplier(step: int, schedule, total_steps: int) -> float:
    """Learning-rate factor at ``step`` (0-based): linear warm-up, then constant, cosine or step decay.

    Args:
        schedule: a :class:`pipeline.config.LRScheduleConfig`.
    """
    warmup = schedule.warmup_steps
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule.kind == "constant":
        return 1.0
    if schedule.kind == "cosine":
        span = max(1, total_steps - warmup)
        progress = min(1.0, (step - warmup) / span)
        return schedule.min_ratio + (1.0 - schedule.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule.kind == "step":
        return schedule.gamma ** sum(1 for milestone in schedule.milestones if step >= milestone)
    raise ValueError(f"train.lr_schedule.kind: expected constant, cosine or step, got {schedule.kind!r}")


def finetune_steps(finetune, megapixels_per_step: float) -> int:
    """Steps of a per-scene fine-tuning: ``finetune.steps`` when set, else scaled to the scene.

    A step's work grows with the size of its reference images, so the scaled budget keeps the work
    about constant: ``megapixel_steps / megapixels_per_step``, rounded and clamped to
    ``[min_steps, max_steps]``. It depends on the scene and the config only, never on the clock, so
    two runs with one config make the same steps and give the same weights on any machine.

    Args:
        finetune: a :class:`pipeline.config.FinetuneConfig`.
        megapixels_per_step: batch size x mean size of a reference image (``ViewSampler.reference_megapixels``).
    """
    if finetune.steps is not None:
        return int(finetune.steps)
    if megapixels_per_step <= 0:
        raise ValueError(f"train.finetune: steps of {megapixels_per_step} megapixels")
    scaled = round(finetune.megapixel_steps / megapixels_per_step)
    return int(min(finetune.max_steps, max(finetune.min_steps, scaled)))
