"""``selfmvs train``: self-supervised training or per-scene fine-tuning of the network.

    selfmvs train --config FILE --out CHECKPOINT_DIR --scenes a/scene.h5 b/scene.h5 [--steps N] [--resume]
    selfmvs train --config FILE --out CHECKPOINT_DIR --finetune scene.h5 --init model.pt --labels scene_labels.h5
    selfmvs train ... --labels a/labels.h5 b/labels.h5     # self-training (train.loss.weights.pseudo_label)

Data are prepared scenes (scene.h5). A sample is a reference view and its ``num_sources``
best-ranked sources: the reference is a random crop (same aspect as the training size) resized to
``width x height``, the sources are resized whole; intrinsics follow exactly (COLMAP pixel
convention). Fine-tuning takes every view of one scene as reference in turn, with BatchNorm
statistics frozen, under a step and time budget; by default (``train.finetune.objective: labels``)
on the scene's own labels alone (``selfmvs pseudo-labels --transfer`` of the checkpoint's fused
depth, at the stored resolution), else (``photometric``) on the recipe's self-supervised terms.

Reproducible: every random choice of step ``s`` (samples, crops, augmentation, NMF start) comes
from a generator seeded by (seed, s, rank), so a resumed run draws what an uninterrupted one
would; the global torch RNG state is checkpointed as well. Outputs in ``CHECKPOINT_DIR``:
``last.pt`` (always the newest, the one to use), ``step_NNNNNNN.pt`` (the last
``keep_checkpoints``), ``losses.csv`` (every term per step) and ``losses.png``; all written
atomically. Multi-process: launch with ``torchrun --nproc_per_node N -m pipeline train ...``
(DistributedDataParallel; gloo on CPU, nccl on CUDA); rank 0 writes.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import hashlib
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import TrainConfig, load_config, section
from pipeline.formats.atomic import atomic_path
from pipeline.losses import SelfSupervisedLoss, augment_images, augmentation_weight, get_recipe
from pipeline.losses.cosegmentation import make_cosegmentation
from pipeline.scene.mirror import mirror_intrinsics, mirror_pose

log = logging.getLogger("selfmvs.train")

LAST = "last.pt"
CSV_NAME = "losses.csv"
PLOT_NAME = "losses.png"


# ---------------------------------------------------------------------------------------------- data


@dataclasses.dataclass
class _ViewData:
    image: torch.Tensor  # (3, H, W) float32 in [0, 1]
    K: torch.Tensor  # (3, 3) float64
    cam_from_world: torch.Tensor  # (4, 4) float64
    depth_range: torch.Tensor  # (2,) float64
    mask: torch.Tensor | None  # (H, W) bool


class ViewSampler:
    """Training samples (reference + sources) drawn from prepared scenes, one batch per step.

    Args:
        scenes: ``pipeline.formats.scene_file.Scene`` objects with images loaded.
        num_sources: source views per sample; a view with fewer sources repeats its last ones.
        size: (height, width) of every sample, or None to keep the reference's stored size
            (cropped down to a multiple of 8) with sources resized to it (fine-tuning).
        crop_scale: (min, max) fraction of the largest crop (with the training aspect) kept.
        names: file names for messages.
        labels: per scene, None or image_id -> (H, W) float32 label depth at the view's stored size
            (0 = no label); when given, every sample also has a ``label`` cropped and resized
            (nearest) like its reference, zeros for a scene without labels.
        mirror_probability: chance that a sample is the left-right mirror image of the scene's
            (every image, the mask and the label flipped; K and poses as :mod:`pipeline.scene.mirror`).
            0 draws nothing, so the random stream of a run without mirroring is unchanged.
    """

    def __init__(self, scenes, num_sources: int, size: tuple[int, int] | None, crop_scale=(1.0, 1.0), names=None,
                 labels=None, mirror_probability: float = 0.0):
        if not 0.0 <= mirror_probability <= 1.0:
            raise ValueError(f"train.mirror_probability: expected a value in [0, 1], got {mirror_probability}")
        self.mirror_probability = float(mirror_probability)
        self.num_sources = num_sources
        self.labels = list(labels) if labels is not None else None
        if self.labels is not None and len(self.labels) != len(scenes):
            raise ValueError(f"labels: one entry per scene expected, got {len(self.labels)} for {len(scenes)} scenes")
        self.size = size
        self.crop_scale = tuple(float(c) for c in crop_scale)
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"train.crop_scale: expected 0 < min <= max <= 1, got {list(crop_scale)}")
        self.views: list[dict[int, _ViewData]] = []
        self.items: list[tuple[int, int, list[int]]] = []
        names = list(names or [f"scene {i}" for i in range(len(scenes))])
        short = 0
        for index, scene in enumerate(scenes):
            views = {}
            for image_id, view in scene.views.items():
                if view.image is None:
                    raise ValueError(f"{names[index]}: view {image_id} has no image loaded")
                image = torch.from_numpy(np.ascontiguousarray(view.image)).permute(2, 0, 1).float().div_(255.0)
                pose = torch.eye(4, dtype=torch.float64)
                pose[:3] = torch.from_numpy(np.asarray(view.cam_from_world, dtype=np.float64))
                mask = None if view.mask is None else torch.from_numpy(np.asarray(view.mask, dtype=bool))
                views[image_id] = _ViewData(
                    image, torch.from_numpy(np.asarray(view.K, dtype=np.float64)), pose,
                    torch.from_numpy(np.asarray(view.depth_range, dtype=np.float64)), mask,
                )
            self.views.append(views)
            for image_id, view in scene.views.items():
                sources = [int(s) for s in view.source_ids if int(s) in views and int(s) != image_id]
                if not sources:
                    continue
                if len(sources) < num_sources:
                    short += 1
                    sources = sources + [sources[-1]] * (num_sources - len(sources))
                self.items.append((index, image_id, sources[:num_sources]))
        if not self.items:
            raise ValueError(f"{', '.join(map(str, names))}: no view with at least one source view to train on")
        if short:
            log.info("%d reference views have fewer than %d sources; their last source is repeated", short, num_sources)

    def __len__(self) -> int:
        return len(self.items)

    def item_indices(self, step: int, batch_size: int, rank: int, world_size: int, seed: int) -> list[int]:
        """Items of one step: epochs are seeded permutations, split over the processes."""
        indices = []
        count = len(self.items)
        for b in range(batch_size):
            position = (step * world_size + rank) * batch_size + b
            epoch, offset = divmod(position, count)
            order = torch.randperm(count, generator=torch.Generator().manual_seed(_mix(seed, epoch, 0x5EED)))
            indices.append(int(order[offset]))
        return indices

    def sample(self, item: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """One sample: ``images`` (V, 3, H, W), ``K`` (V, 3, 3), ``cam_from_world`` (V, 4, 4),
        ``depth_range`` (V, 2), ``mask`` (1, H, W) bool, with labels also ``label`` (1, H, W)."""
        scene_index, ref_id, sources = self.items[item]
        views = self.views[scene_index]
        ref = views[ref_id]
        ref_h, ref_w = ref.image.shape[1:]
        if self.size is None:
            height, width = (ref_h // 8) * 8, (ref_w // 8) * 8
            if height < 8 or width < 8:
                raise ValueError(f"view {ref_id}: image {ref_h}x{ref_w} is smaller than 8x8")
            top, left, crop_h, crop_w = 0, 0, height, width
        else:
            height, width = self.size
            aspect = width / height
            full_h, full_w = (ref_h, ref_h * aspect) if ref_w / ref_h > aspect else (ref_w / aspect, ref_w)
            scale = float(torch.empty((), dtype=torch.float64).uniform_(*self.crop_scale, generator=generator))
            crop_h = max(1, min(ref_h, round(full_h * scale)))
            crop_w = max(1, min(ref_w, round(full_w * scale)))
            top = int(torch.randint(0, ref_h - crop_h + 1, (), generator=generator))
            left = int(torch.randint(0, ref_w - crop_w + 1, (), generator=generator))
        images, Ks, poses, ranges = [], [], [], []
        ref_image = ref.image[:, top : top + crop_h, left : left + crop_w]
        K = ref.K.clone()
        K[0, 2] -= left
        K[1, 2] -= top
        images.append(_resize(ref_image, height, width))
        Ks.append(_scale_K(K, width / crop_w, height / crop_h))
        poses.append(ref.cam_from_world)
        ranges.append(ref.depth_range)
        if ref.mask is None:
            mask = torch.ones(1, height, width, dtype=torch.bool)
        else:
            cropped = ref.mask[top : top + crop_h, left : left + crop_w].float()[None]
            mask = _resize(cropped, height, width) > 0.999
        for source_id in sources:
            source = views[source_id]
            src_h, src_w = source.image.shape[1:]
            images.append(_resize(source.image, height, width))
            Ks.append(_scale_K(source.K, width / src_w, height / src_h))
            poses.append(source.cam_from_world)
            ranges.append(source.depth_range)
        sample = {
            "images": torch.stack(images),
            "K": torch.stack(Ks),
            "cam_from_world": torch.stack(poses),
            "depth_range": torch.stack(ranges),
            "mask": mask,
        }
        if self.labels is not None:
            scene_labels = self.labels[scene_index]
            if scene_labels is None:
                sample["label"] = torch.zeros(1, height, width)
            else:
                cropped = scene_labels[ref_id][top : top + crop_h, left : left + crop_w][None, None]
                sample["label"] = F.interpolate(cropped, size=(height, width), mode="nearest")[0]
        if self.mirror_probability > 0 and float(torch.rand((), generator=generator)) < self.mirror_probability:
            sample = _mirrored(sample)
        return sample

    def batch(self, step: int, batch_size: int, rank: int, world_size: int, seed: int, generator: torch.Generator):
        samples = [self.sample(i, generator) for i in self.item_indices(step, batch_size, rank, world_size, seed)]
        return {key: torch.stack([s[key] for s in samples]) for key in samples[0]}


def _mirrored(sample: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The sample's left-right mirror image: a consistent scene whose depth is the original's, flipped."""
    width = sample["images"].shape[-1]
    flipped = {key: sample[key].flip(-1) for key in ("images", "mask", "label") if key in sample}
    flipped["K"] = torch.stack([torch.from_numpy(mirror_intrinsics(K.numpy(), width)) for K in sample["K"]]).to(sample["K"].dtype)
    flipped["cam_from_world"] = torch.stack(
        [torch.from_numpy(mirror_pose(T.numpy())) for T in sample["cam_from_world"]]
    ).to(sample["cam_from_world"].dtype)
    return {**sample, **flipped}


def _resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if tuple(image.shape[-2:]) == (height, width):
        return image
    # align_corners=False samples at pixel centres: K scales exactly by the size ratio.
    antialias = height < image.shape[-2] or width < image.shape[-1]
    return F.interpolate(image[None], size=(height, width), mode="bilinear", align_corners=False, antialias=antialias)[0]


def _scale_K(K: torch.Tensor, scale_x: float, scale_y: float) -> torch.Tensor:
    return K * K.new_tensor([[scale_x], [scale_y], [1.0]])


def _mix(*values: int) -> int:
    """A 63-bit seed from several integers (splitmix64-style), stable across runs and processes."""
    state = 0x9E3779B97F4A7C15
    for value in values:
        state = (state ^ (int(value) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        state ^= state >> 31
    return state & 0x7FFFFFFFFFFFFFFF


# ------------------------------------------------------------------------------------- schedule


def lr_multiplier(step: int, schedule, total_steps: int) -> float:
    """Learning-rate factor at ``step`` (0-based): linear warm-up, then constant, cosine or step decay."""
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


# ---------------------------------------------------------------------------------------- helpers


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> cuda when available (queried at run time), else cpu."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("train.device: 'cuda' asked for but CUDA is not available (use 'auto' or 'cpu')")
        return torch.device("cuda", local_rank)
    if name == "cpu":
        return torch.device("cpu")
    raise ValueError(f"train.device: expected auto, cpu or cuda, got {name!r}")


@dataclasses.dataclass
class _Distributed:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _distributed_from_env() -> _Distributed:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return _Distributed()
    return _Distributed(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world_size)


def _write_csv(path: Path, rows: list[dict[str, float]], columns: list[str]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            for row in rows:
                writer.writerow({c: row.get(c, "") for c in columns})


def _read_csv(path: Path, up_to_step: int) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        rows = [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(handle)]
    for row in rows:
        row["step"] = int(row.get("step", 0))
    return [row for row in rows if row["step"] <= up_to_step]


def _plot(path: Path, rows: list[dict[str, float]], terms: list[str]) -> None:
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [row["step"] for row in rows]
    figure, axis = plt.subplots(figsize=(8, 4.5))
    for name in ["loss", *terms]:
        values = [row.get(name, float("nan")) for row in rows]
        if any(v > 0 for v in values):
            axis.plot(steps, values, label=name, linewidth=1.6 if name == "loss" else 1.0)
    axis.set_yscale("log")
    axis.set_xlabel("step")
    axis.set_ylabel("loss (terms unweighted)")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(loc="upper right", fontsize="small")
    figure.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)


def _read_labels(path: Path, scene, scene_path: Path) -> dict[int, torch.Tensor]:
    """image_id -> (H, W) float32 label depth of every view of ``scene``, checked against it."""
    from pipeline.formats.depth_file import DepthFormatError, read_depth_file

    try:
        views = read_depth_file(path)
    except (OSError, DepthFormatError) as error:
        raise ValueError(f"{path}: not a readable label file ({error})") from None
    labels = {}
    for image_id, view in scene.views.items():
        if image_id not in views:
            raise ValueError(f"{path}: no labels for view {image_id} ({view.name}) of {scene_path}")
        depth = views[image_id].depth
        if depth.shape != (view.height, view.width):
            raise ValueError(
                f"{path}: view {image_id} is {depth.shape[1]}x{depth.shape[0]}, but {scene_path} stores it at "
                f"{view.width}x{view.height} (labels must come from inference on this scene.h5)"
            )
        labels[image_id] = torch.from_numpy(depth)  # float32; the loss skips pixels <= 0 or not finite
    return labels


def _build_model(config: TrainConfig, init: Path | None):
    from pipeline.model import ModelConfig, PatchmatchNet, load_checkpoint

    if init is not None:
        model, _ = load_checkpoint(init, strict=True)
        return model
    try:
        model_config = ModelConfig.from_dict(dict(config.model)) if config.model else ModelConfig()
    except (TypeError, ValueError) as error:
        raise ValueError(f"train.model: {error}") from None
    return PatchmatchNet(model_config)


# ------------------------------------------------------------------------------------------ train


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
        steps: total optimizer steps (overrides ``config.steps`` / ``config.finetune.steps``).
        resume: continue from ``out_dir/last.pt`` (weights, optimizer, schedule, step, RNG) when
            it exists; without it the run starts from step 0 (so a workflow can always pass it).
        stop_at: stop (with a checkpoint) after this step although the schedule spans ``steps``.
        labels: pseudo-label files (``selfmvs pseudo-labels``), one per scene in the order of
            ``scenes`` (one for ``finetune``); used by the ``pseudo_label`` term.

    Raises:
        ValueError: bad arguments, scenes or checkpoints, each naming the culprit.
    """
    from pipeline.formats.scene_file import cap_num_sources, read_scene
    from pipeline.model import load_checkpoint, save_checkpoint

    out_dir = Path(out_dir)
    mode = "finetune" if finetune is not None else "train"
    if finetune is not None:
        if init is None and not (resume and (out_dir / LAST).is_file()):
            raise ValueError("train --finetune: an initial checkpoint (--init) is required")
        scene_paths = [Path(finetune)]
        total_steps = steps if steps is not None else config.finetune.steps
        learning_rate = config.finetune.learning_rate
        max_seconds = config.finetune.max_seconds
    else:
        scene_paths = [Path(s) for s in scenes]
        if not scene_paths:
            raise ValueError("train: no scenes given (--scenes scene.h5 ...)")
        total_steps = steps if steps is not None else config.steps
        learning_rate = config.learning_rate
        max_seconds = None
    if total_steps < 1:
        raise ValueError(f"train: steps must be >= 1, got {total_steps}")
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

    dist = _distributed_from_env()
    device = resolve_device(config.device, dist.local_rank)
    if dist.enabled and not torch.distributed.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    if config.amp != "off" and device.type != "cuda":
        log.warning("train.amp=%s ignored: mixed precision runs on CUDA only", config.amp)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.amp) if device.type == "cuda" else None

    try:
        # ---- model, optimizer, schedule (weights init seeded: every rank builds the same net)
        torch.manual_seed(config.seed)
        checkpoint_extra: dict[str, Any] = {}
        last = out_dir / LAST
        if resume and not last.is_file():
            # A workflow rule always passes --resume; the first run simply starts from the beginning.
            log.info("train --resume: %s not found, starting from step 0", last)
            resume = False
        init_sha256 = _sha256(Path(init)) if init is not None else None
        if resume:
            model, checkpoint_extra = load_checkpoint(last, strict=True)
            if checkpoint_extra.get("mode") != mode:
                raise ValueError(f"train --resume: {last} is a {checkpoint_extra.get('mode')!r} run, not {mode!r}")
            started_from = checkpoint_extra.get("init_sha256")
            if init_sha256 is not None and started_from is not None and started_from != init_sha256:
                # A rule reruns when its init changes, but its folder keeps the old run: resuming
                # that would silently hand back weights that never saw the new init.
                raise ValueError(
                    f"train --resume: {last} continues a run that started from other weights than --init {init} "
                    f"(sha256 {started_from[:12]}… against {init_sha256[:12]}…); remove {out_dir} to start afresh "
                    "from the new weights, or pass the --init that run started from"
                )
        else:
            model = _build_model(config, Path(init) if init is not None else None)
        model = model.to(device)
        freeze = config.finetune.freeze_batchnorm if mode == "finetune" else config.freeze_batchnorm
        model.freeze_batchnorm(freeze)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=config.weight_decay)
        # Fine-tuning runs at its constant rate from the first step: its budget is a few dozen
        # steps, which a warm-up meant for a long training run would mostly use up.
        lr_schedule = config.lr_schedule
        if mode == "finetune":
            lr_schedule = dataclasses.replace(lr_schedule, kind="constant", warmup_steps=0)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_multiplier(s, lr_schedule, total_steps)
        )
        scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
        start_step = 0
        if resume:
            optimizer.load_state_dict(checkpoint_extra["optimizer"])
            schedule.load_state_dict(checkpoint_extra["scheduler"])
            if "scaler" in checkpoint_extra and checkpoint_extra["scaler"]:
                scaler.load_state_dict(checkpoint_extra["scaler"])
            start_step = int(checkpoint_extra["step"])
            torch.set_rng_state(checkpoint_extra["rng"]["torch"])
            if device.type == "cuda" and checkpoint_extra["rng"].get("cuda") is not None:
                torch.cuda.set_rng_state(checkpoint_extra["rng"]["cuda"], device)
            log.info("resumed %s at step %d from %s", mode, start_step, last)
        net = model
        if dist.enabled:
            net = torch.nn.parallel.DistributedDataParallel(
                model,
                device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=config.find_unused_parameters,
            )

        # ---- objective
        loss_config = config.loss
        overrides = {k: v for k, v in dataclasses.asdict(loss_config.weights).items()}
        labels_only = mode == "finetune" and config.finetune.objective == "labels"
        if labels_only:  # self-training on the scene's own labels: that term alone
            overrides = {term: 0.0 for term in overrides} | {"pseudo_label": config.finetune.label_weight}
            if label_paths is None:
                raise ValueError(
                    "train --finetune: train.finetune.objective is 'labels' but no label file was given (--labels; "
                    "made by selfmvs infer -> fuse --masks -> pseudo-labels --transfer, as the workflow does); "
                    "set train.finetune.objective: photometric to fine-tune on the photos alone"
                )
        recipe = get_recipe(loss_config.recipe, overrides)
        cosegmentation = None
        if "cosegmentation" in recipe.weights:
            cosegmentation = make_cosegmentation(
                config.vgg16_weights, loss_config.cosegmentation.layer,
                loss_config.cosegmentation.num_segments, loss_config.cosegmentation.iterations,
            )
            if cosegmentation is not None:
                cosegmentation = cosegmentation.to(device)
        objective = SelfSupervisedLoss(
            recipe, top_k=loss_config.top_k, gradient_weight=loss_config.gradient_weight,
            robust=loss_config.robust, huber_delta=loss_config.huber_delta,
            smoothness_order=loss_config.smoothness_order, smoothness_inverse=loss_config.smoothness_inverse,
            cross_view_max_error=loss_config.cross_view_max_error, cosegmentation=cosegmentation,
        )
        terms = objective.active_terms
        if "pseudo_label" in terms and label_paths is None:
            raise ValueError("train.loss.weights.pseudo_label is set but no label files were given (--labels)")
        if label_paths is not None and "pseudo_label" not in terms:
            log.warning("%d label file(s) given, but train.loss.weights.pseudo_label is 0: they are not used", len(label_paths))
            label_paths = None
        aug = aug_params = loss_config.augmentation
        if dist.is_main:
            log.info("%s: recipe %s, terms %s, %d steps, device %s, %d process(es)",
                     mode, recipe.name, {t: recipe.weights[t] for t in terms}, total_steps, device, dist.world_size)

        # ---- data
        loaded = [read_scene(path, load_images=True) for path in scene_paths]
        full = mode == "finetune" and (config.finetune.full_resolution or labels_only)
        size = None if full else (config.height, config.width)
        crop = (1.0, 1.0) if mode == "finetune" else config.crop_scale
        label_maps = None
        if label_paths is not None:
            label_maps = [_read_labels(path, scene, scene_path) for path, scene, scene_path in zip(label_paths, loaded, scene_paths)]
        stored = min(scene.num_sources for scene in loaded)
        num_sources = cap_num_sources(config.num_sources, stored, "train.num_sources", ", ".join(map(str, scene_paths)))
        sampler = ViewSampler(loaded, num_sources, size, crop, names=scene_paths, labels=label_maps,
                              mirror_probability=config.mirror_probability)
        batch_size = 1 if size is None else config.batch_size
        if "cross_view" in terms and config.num_sources < 1:
            raise ValueError("train: the cross-view term needs at least one source view")

        # ---- bookkeeping
        columns = ["step", "lr", "loss", *terms, "augmentation_weight", "seconds"]
        rows = _read_csv(out_dir / CSV_NAME, start_step) if (resume and dist.is_main) else []
        end_step = total_steps if stop_at is None else min(total_steps, stop_at)
        if dist.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            if not resume:  # a fresh run: numbered checkpoints of an older run must not outrank ours
                stale = sorted(out_dir.glob("step_*.pt"))
                for old in stale:
                    old.unlink()
                if stale:
                    log.info("removed %d checkpoint(s) of an earlier run from %s", len(stale), out_dir)
        progress = None
        if dist.is_main and config.progress:
            from tqdm import tqdm

            progress = tqdm(total=end_step, initial=start_step, desc=mode, unit="step", dynamic_ncols=True)
        started = time.monotonic()

        def checkpoint(step: int) -> None:
            if not dist.is_main:
                return
            extra = {
                "mode": mode,
                "step": step,
                "total_steps": total_steps,
                "optimizer": optimizer.state_dict(),
                "scheduler": schedule.state_dict(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                "rng": {
                    "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                },
                "seed": config.seed,
                "world_size": dist.world_size,
                "recipe": recipe.name,
                "scenes": [str(p) for p in scene_paths],
                "labels": [str(p) for p in label_paths] if label_paths is not None else [],
                "init_sha256": checkpoint_extra.get("init_sha256", init_sha256),  # a resumed run keeps its own
            }
            save_checkpoint(out_dir / f"step_{step:07d}.pt", model, extra)
            save_checkpoint(last, model, extra)
            numbered = sorted(out_dir.glob("step_*.pt"))
            for old in numbered[: max(0, len(numbered) - config.keep_checkpoints)]:
                old.unlink(missing_ok=True)
            _write_csv(out_dir / CSV_NAME, rows, columns)
            _plot(out_dir / PLOT_NAME, rows, terms)

        # ---- loop
        step = start_step
        while step < end_step:
            tic = time.perf_counter()
            generator = torch.Generator().manual_seed(_mix(config.seed, step, dist.rank))
            batch = sampler.batch(step, batch_size, dist.rank, dist.world_size, config.seed, generator)
            batch = {k: v.to(device) for k, v in batch.items()}
            aug_weight = augmentation_weight(
                step, recipe.weights.get("augmentation", 0.0), aug.growth, aug.growth_every, aug.max_weight
            )
            total, values = _train_step(
                net, objective, optimizer, scaler, batch, terms, aug_params, aug_weight, generator,
                amp_dtype, config.grad_clip, device,
            )
            schedule.step()
            step += 1
            first_step = step == start_step + 1
            if first_step:
                # The first step also loads the kernels (compiles them on a machine's first run: about a
                # minute on 2 CPU cores), so the time budget counts from its end: a first run on a new
                # machine fine-tunes as many steps as later ones.
                started = time.monotonic()
                if dist.is_main:
                    log.info("%s: first step %.1f s (kernels loaded; compiled on a machine's first run)",
                             mode, time.perf_counter() - tic)
            if dist.enabled:
                packed = torch.stack([total.detach(), *[values[t].detach() for t in terms]]).to(device)
                torch.distributed.all_reduce(packed)
                packed /= dist.world_size
                total, values = packed[0], {t: packed[i + 1] for i, t in enumerate(terms)}
            row = {"step": step, "lr": optimizer.param_groups[0]["lr"], "loss": float(total),
                   "augmentation_weight": aug_weight, "seconds": time.perf_counter() - tic}
            row.update({t: float(values[t]) for t in terms})
            if not math.isfinite(row["loss"]):
                raise FloatingPointError(f"train: loss is {row['loss']} at step {step} (terms {row})")
            rows.append(row)
            if progress is not None:
                progress.update(1)
                progress.set_postfix({"loss": f"{row['loss']:.4f}", **{t: f"{row[t]:.3g}" for t in terms}})
            out_of_time = max_seconds is not None and not first_step and time.monotonic() - started > max_seconds
            if dist.enabled and max_seconds is not None:  # every rank stops at the same step
                flag = torch.tensor([float(out_of_time)], device=device)
                torch.distributed.all_reduce(flag)
                out_of_time = bool(flag.item() > 0)
            if step % config.checkpoint_every == 0 or step == end_step or out_of_time:
                checkpoint(step)
            if out_of_time:
                log.info("%s: time budget of %.0f s spent after step %d", mode, max_seconds, step)
                break
        if step == start_step and dist.is_main and not last.is_file():
            checkpoint(step)
        if progress is not None:
            progress.close()
        if dist.enabled:
            torch.distributed.barrier()
        return last
    finally:
        if dist.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _split(stage_depths, chunks: int) -> list[dict[int, list[torch.Tensor]]]:
    parts = [dict() for _ in range(chunks)]
    for stage, depths in stage_depths.items():
        pieces = [d.chunk(chunks, 0) for d in depths]
        for c in range(chunks):
            parts[c][stage] = [p[c] for p in pieces]
    return parts


def _sha256(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: initial checkpoint (--init) not found")
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _train_step(net, objective, optimizer, scaler, batch, terms, aug_params, aug_weight, generator, amp_dtype, grad_clip, device):
    """One optimizer step; every forward of the step is one batched call (DDP needs one forward)."""
    images, K, poses, ranges = batch["images"], batch["K"], batch["cam_from_world"], batch["depth_range"]
    batch_size, views = images.shape[:2]
    inputs = [(images, K, poses, ranges[:, 0])]
    keep = None
    if "augmentation" in terms:
        augmented, keep = augment_images(images, generator, aug_params)
        inputs.append((augmented, K, poses, ranges[:, 0]))
    if "cross_view" in terms:
        order = [1, 0, *range(2, views)]  # the first source as reference, the reference as its source
        inputs.append((images[:, order], K[:, order], poses[:, order], ranges[:, 1]))
    stacked = [torch.cat(parts) for parts in zip(*inputs)]
    amp = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    optimizer.zero_grad(set_to_none=True)
    with amp:
        output = net(
            [stacked[0][:, v] for v in range(views)],
            [stacked[1][:, v].float() for v in range(views)],
            [stacked[2][:, v].float() for v in range(views)],
            stacked[3][:, 0].float(),
            stacked[3][:, 1].float(),
        )
    parts = _split(output.stage_depths, len(inputs))
    index = 1
    augmented_depths = cross_depth = None
    if "augmentation" in terms:
        augmented_depths = parts[index]
        index += 1
    if "cross_view" in terms:
        cross_depth = parts[index][0][-1]
    total, values = objective(
        images, K.float(), poses.float(), parts[0], mask=batch["mask"], labels=batch.get("label"),
        augmented_stage_depths=augmented_depths, augmentation_keep=keep, cross_depth=cross_depth,
        generator=generator, weight_overrides={"augmentation": aug_weight} if "augmentation" in terms else None,
    )
    scaler.scale(total).backward()
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return total.detach(), {t: v.detach() for t, v in values.items()}


# -------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None, help="YAML config (section 'train'); defaults otherwise")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder (last.pt, losses.csv, losses.png)")
    parser.add_argument("--scenes", type=Path, nargs="+", default=[], help="scene.h5 files to train on")
    parser.add_argument("--finetune", type=Path, default=None, metavar="SCENE_H5", help="fine-tune on one scene")
    parser.add_argument("--init", type=Path, default=None, metavar="CHECKPOINT", help="start from these weights")
    parser.add_argument("--steps", type=int, default=None, help="total optimizer steps (overrides the config)")
    parser.add_argument("--resume", action="store_true", help="continue from CHECKPOINT_DIR/last.pt")
    parser.add_argument("--labels", type=Path, nargs="+", default=None, metavar="LABELS_H5",
                        help="pseudo-label files (selfmvs pseudo-labels), one per scene in the order of --scenes "
                        "(one with --finetune); used when train.loss.weights.pseudo_label > 0, and by fine-tuning's default "
                        "objective (train.finetune.objective: labels), which needs it")


def main(args: argparse.Namespace) -> int:
    config = section(load_config(args.config), "train", TrainConfig)
    if args.finetune is not None and args.scenes:
        raise ValueError("train: give either --scenes or --finetune, not both")
    path = run_train(
        config, args.out, args.scenes, finetune=args.finetune, init=args.init, steps=args.steps, resume=args.resume,
        labels=args.labels,
    )
    if _distributed_from_env().is_main:
        print(path)
    return 0
