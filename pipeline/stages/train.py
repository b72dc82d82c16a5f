"""``selfmvs train``: self-supervised training or per-scene fine-tuning of the network.

    selfmvs train --config FILE --out CHECKPOINT_DIR --scenes a/scene.h5 b/scene.h5 [--steps N] [--resume]
    selfmvs train --config FILE --out CHECKPOINT_DIR --finetune scene.h5 --init model.pt --labels scene_labels.h5
    selfmvs train ... --labels a/labels.h5 b/labels.h5     # self-training (train.loss.weights.pseudo_label)

Data are prepared scenes (scene.h5); samples, schedule, loop and checkpoints live in
:mod:`pipeline.training`. Fine-tuning takes every view of one scene as reference in turn, with
BatchNorm statistics frozen, for a number of steps fixed before it starts (``train.finetune.steps``,
or scaled to the scene's image size by ``train.finetune.megapixel_steps``); by default
(``train.finetune.objective: labels``) on the scene's own labels alone (``selfmvs pseudo-labels
--transfer`` of the checkpoint's fused depth, at the stored resolution), else (``photometric``) on
the recipe's self-supervised terms. A time limit only stops a run that would take far too long, and
says so (a WARNING, ``stopped_early`` in the checkpoint and ``summary.json``).

Outputs in ``CHECKPOINT_DIR``: ``last.pt`` (always the newest, the one to use), ``step_NNNNNNN.pt``
(the last ``keep_checkpoints``), ``losses.csv`` (every term per step, :mod:`pipeline.formats.loss_log`),
``losses.png`` and ``summary.json``; all written atomically. Multi-process: launch with
``torchrun --nproc_per_node N -m pipeline train ...`` (DistributedDataParallel; gloo on CPU, nccl
on CUDA); rank 0 writes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from pipeline.config import TrainConfig


def run_train(
    config: TrainConfig,
    out_dir: str | os.PathLike,
    scenes: Sequence[str | os.PathLike] = (),
    *,
    finetune: str | os.PathLike | None = None,
    init: str | os.PathLike | None = None,
    steps: int | None = None,
    resume: bool = False,
    stop_at: int | None = None,
    labels: Sequence[str | os.PathLike] | None = None,
) -> Path:
    """Train (or fine-tune) the network self-supervised; returns the path of ``last.pt``.

    Args:
        config: the ``train`` section.
        out_dir: checkpoint folder (created).
        scenes: scene.h5 files to train on.
        finetune: one scene.h5 to fine-tune on (instead of ``scenes``); needs ``init``.
        init: checkpoint to start from (required with ``finetune``).
        steps: total optimizer steps (overrides ``config.steps`` / the fine-tuning budget).
        resume: continue from ``out_dir/last.pt`` (weights, optimizer, schedule, step, RNG) when
            it exists; without it the run starts from step 0 (so a workflow can always pass it).
        stop_at: stop (with a checkpoint) after this step although the schedule spans ``steps``.
        labels: pseudo-label files (``selfmvs pseudo-labels``), one per scene in the order of
            ``scenes`` (one for ``finetune``); used by the ``pseudo_label`` term.

    Raises:
        ValueError: bad arguments, scenes or checkpoints, each naming the culprit.
    """
    from pipeline.formats.scene_file import read_scene
    from pipeline.training.loop import train

    out_dir = Path(out_dir)
    if finetune is not None:
        if init is None and not (resume and (out_dir / "last.pt").is_file()):
            raise ValueError("train --finetune: an initial checkpoint (--init) is required")
        scene_paths = [Path(finetune)]
    else:
        scene_paths = [Path(s) for s in scenes]
        if not scene_paths:
            raise ValueError("train: no scenes given (--scenes scene.h5 ...)")
    if steps is not None and steps < 1:
        raise ValueError(f"train: steps must be >= 1, got {steps}")
    if config.width % 8 or config.height % 8:
        raise ValueError(f"train: width and height must be multiples of 8, got {config.width}x{config.height}")
    for path in scene_paths:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: scene file not found")
    label_paths = [Path(p) for p in labels] if labels else None
    if label_paths is not None:
        if len(label_paths) != len(scene_paths):
            raise ValueError(f"train: {len(label_paths)} label file(s) for {len(scene_paths)} scene(s); give one per scene, in order")
        for path in label_paths:
            if not path.is_file():
                raise FileNotFoundError(f"{path}: label file not found")
    loaded = [read_scene(path, load_images=True) for path in scene_paths]
    return train(
        config, out_dir, "finetune" if finetune is not None else "train", scene_paths, loaded,
        init=Path(init) if init is not None else None, steps=steps, resume=resume, stop_at=stop_at,
        label_paths=label_paths,
    )
