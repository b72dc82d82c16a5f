"""The training loop: model, optimizer and schedule, resume, the steps, checkpoints and the safety stop.

Reproducible: every random choice of step ``s`` (samples, crops, augmentation, NMF start) comes
from a generator seeded by (seed, s, rank), so a resumed run draws what an uninterrupted one
would; the global torch RNG state is checkpointed as well. The number of steps is fixed before the
first one (``train.steps``, or for fine-tuning :func:`pipeline.training.schedule.finetune_steps`),
never by the clock: a time limit (``train.max_seconds`` / ``train.finetune.max_seconds``) is only
a safety stop, which warns and is recorded in the checkpoint (``stopped_early``) and ``summary.json``.

Recipe ``mvs2`` trains MVS^2's symmetric objective: every view of a sample is the reference in
turn (:func:`pipeline.training.step.symmetric_train_step`); the other recipes (and fine-tuning on
labels) step on the objective of one reference (:func:`pipeline.training.step.train_step`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from pipeline.config import TrainConfig
from pipeline.formats.scene_file import cap_num_sources
from pipeline.losses import augmentation_weight
from pipeline.model.device import resolve_device
from pipeline.training.checkpoints import CheckpointFolder
from pipeline.training.data import build_model, check_same_inputs, init_sha256, read_labels, run_inputs
from pipeline.training.distributed import Distributed
from pipeline.training.objective import build_objective, feature_reference, trains_symmetric
from pipeline.training.sampler import ViewSampler, mix_seed
from pipeline.training.schedule import finetune_steps, lr_multiplier
from pipeline.training.step import symmetric_train_step, train_step

log = logging.getLogger("selfmvs.train")

# The clock of the safety stop (a name of its own so that tests can make the machine "slow").
clock = time.monotonic


def train(
    config: TrainConfig,
    folder: Path,
    mode: str,
    scene_paths: Sequence[Path],
    scenes: Sequence,
    *,
    init: Path | None = None,
    steps: int | None = None,
    resume: bool = False,
    stop_at: int | None = None,
    label_paths: Sequence[Path] | None = None,
) -> Path:
    """Train (``mode`` "train") or fine-tune ("finetune") on read scenes; returns ``folder/last.pt``.

    Args:
        scenes: ``pipeline.formats.scene_file.Scene`` objects (images loaded) of ``scene_paths``.
        Others: as :func:`pipeline.stages.train.run_train`.
    """
    finetuning = mode == "finetune"
    dist = Distributed.from_env()
    try:
        device = resolve_device(config.device, dist.local_rank)
    except ValueError as error:
        raise ValueError(f"train.{error}") from None
    dist.init(device)
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    if config.amp != "off" and device.type != "cuda":
        log.warning("train.amp=%s ignored: mixed precision runs on CUDA only", config.amp)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.amp) if device.type == "cuda" else None
    try:
        # ---- data first (no random draws): the fine-tuning budget is scaled to the scene
        full = finetuning and (config.finetune.full_resolution or config.finetune.objective == "labels")
        size = None if full else (config.height, config.width)
        crop = (1.0, 1.0) if finetuning else config.crop_scale
        stored = min(scene.num_sources for scene in scenes)
        num_sources = cap_num_sources(config.num_sources, stored, "train.num_sources", ", ".join(map(str, scene_paths)))
        sampler = ViewSampler(scenes, num_sources, size, crop, names=scene_paths,
                              mirror_probability=config.mirror_probability)
        batch_size = 1 if size is None else config.batch_size
        if steps is not None:
            total_steps = steps
        elif finetuning:
            total_steps = finetune_steps(config.finetune, batch_size * sampler.reference_megapixels())
        else:
            total_steps = config.steps
        if total_steps < 1:
            raise ValueError(f"train: steps must be >= 1, got {total_steps}")
        max_seconds = config.finetune.max_seconds if finetuning else config.max_seconds

        # ---- model, optimizer, schedule (weights init seeded: every rank builds the same net)
        torch.manual_seed(config.seed)
        out = CheckpointFolder(folder, config.keep_checkpoints)
        checkpoint_extra: dict[str, Any] = {}
        if resume and not out.last.is_file():
            # A workflow rule always passes --resume; the first run simply starts from the beginning.
            log.info("train --resume: %s not found, starting from step 0", out.last)
            resume = False
        init_digest = init_sha256(init) if init is not None else None
        inputs = run_inputs(config, scene_paths, label_paths)
        if resume:
            model, checkpoint_extra = _load_for_resume(out.last, mode, init, init_digest, folder)
            check_same_inputs(checkpoint_extra.get("inputs"), inputs, out.last, folder, scene_paths, label_paths)
        else:
            model = build_model(config, init)
        model = model.to(device)
        model.freeze_batchnorm(config.finetune.freeze_batchnorm if finetuning else config.freeze_batchnorm)
        model.train()
        learning_rate = config.finetune.learning_rate if finetuning else config.learning_rate
        optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=config.weight_decay)
        # Fine-tuning runs at its constant rate from the first step: its budget is a few dozen
        # steps, which a warm-up meant for a long training run would mostly use up.
        lr_schedule = config.lr_schedule
        if finetuning:
            lr_schedule = dataclasses.replace(lr_schedule, kind="constant", warmup_steps=0)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(s, lr_schedule, total_steps))
        scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
        start_step = 0
        if resume:
            optimizer.load_state_dict(checkpoint_extra["optimizer"])
            schedule.load_state_dict(checkpoint_extra["scheduler"])
            if checkpoint_extra.get("scaler"):
                scaler.load_state_dict(checkpoint_extra["scaler"])
            start_step = int(checkpoint_extra["step"])
            torch.set_rng_state(checkpoint_extra["rng"]["torch"])
            if device.type == "cuda" and checkpoint_extra["rng"].get("cuda") is not None:
                torch.cuda.set_rng_state(checkpoint_extra["rng"]["cuda"], device)
            log.info("resumed %s at step %d from %s", mode, start_step, out.last)
        net = dist.wrap(model, device, config.find_unused_parameters)

        # ---- objective, then the labels it needs
        # The feature term's fallback extractor is a frozen copy of the network as it is now, before
        # the first step; a resumed run restores the copy its checkpoint holds (the run's start).
        from_scratch = (init_digest if not resume else checkpoint_extra.get("init_sha256", init_digest)) is None
        initial_features = checkpoint_extra.get("feature_reference") if resume else None
        recipe, objective, aug_params = build_objective(
            config, mode, label_paths is not None, device, model,
            from_scratch=from_scratch, initial_features=initial_features,
        )
        reference_state = feature_reference(objective)
        if resume and reference_state is not None and initial_features is None:
            log.warning("train --resume: %s holds no initial feature maps of the feature term (a run that did not "
                        "train it); its frozen copy is taken from the resumed weights", out.last)
        terms = objective.active_terms
        if "pseudo_label" in terms and label_paths is None:
            raise ValueError("train.loss.weights.pseudo_label is set but no label files were given (--labels)")
        if label_paths is not None and "pseudo_label" not in terms:
            log.warning("%d label file(s) given, but train.loss.weights.pseudo_label is 0: they are not used", len(label_paths))
            label_paths = None
        if label_paths is not None:
            sampler.set_labels([read_labels(p, s, sp) for p, s, sp in zip(label_paths, scenes, scene_paths)])
        if "cross_view" in terms and config.num_sources < 1:
            raise ValueError("train: the cross-view term needs at least one source view")
        symmetric = trains_symmetric(config, mode, recipe, terms)
        sampler.view_masks = symmetric  # the symmetric objective masks every view, not the reference alone
        if dist.is_main:
            log.info("%s: recipe %s%s, terms %s, %d steps, device %s, %d process(es)",
                     mode, recipe.name, " (symmetric: every view of a sample the reference in turn)" if symmetric else "",
                     {t: recipe.weights[t] for t in terms}, total_steps, device, dist.world_size)

        # ---- bookkeeping
        columns = ["step", "lr", "loss", *terms, "augmentation_weight", "seconds"]
        rows = out.read_rows(start_step) if (resume and dist.is_main) else []
        end_step = total_steps if stop_at is None else min(total_steps, stop_at)
        if dist.is_main:
            out.start(resume)
        progress = None
        if dist.is_main and config.progress:
            from tqdm import tqdm

            progress = tqdm(total=end_step, initial=start_step, desc=mode, unit="step", dynamic_ncols=True)
        stopped_early = None

        def checkpoint(step: int) -> None:
            if not dist.is_main:
                return
            extra = {
                "mode": mode, "step": step, "total_steps": total_steps,
                "optimizer": optimizer.state_dict(), "scheduler": schedule.state_dict(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                "rng": {"torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
                "seed": config.seed, "world_size": dist.world_size, "recipe": recipe.name,
                "scenes": [str(p) for p in scene_paths],
                "labels": [str(p) for p in label_paths] if label_paths is not None else [],
                "init_sha256": checkpoint_extra.get("init_sha256", init_digest),  # a resumed run keeps its own
                "inputs": inputs,
                "stopped_early": stopped_early,
            }
            if reference_state is not None:
                extra["feature_reference"] = reference_state
            out.save(step, model, extra, rows, columns, terms)

        def flush(window_started: float) -> float:
            """Read the window's losses back in one transfer, log their rows, and check them."""
            if not pending:
                return window_started
            now = time.perf_counter()
            seconds = (now - window_started) / len(pending)
            losses = torch.stack([p[3] for p in pending]).cpu().tolist()
            for (done, lr, weight, _), (loss, *parts) in zip(pending, losses):
                row = {"step": done, "lr": lr, "loss": loss, "augmentation_weight": weight, "seconds": seconds,
                       **dict(zip(terms, parts))}
                if not math.isfinite(loss):
                    raise FloatingPointError(f"train: loss is {loss} at step {done} (terms {row})")
                rows.append(row)
            pending.clear()
            if progress is not None:
                progress.set_postfix({"loss": f"{rows[-1]['loss']:.4f}", **{t: f"{rows[-1][t]:.3g}" for t in terms}})
            return now

        # ---- loop
        aug = config.loss.augmentation
        pending: list[tuple[int, float, float, torch.Tensor]] = []
        started = clock()
        window_started = time.perf_counter()
        step = start_step
        while step < end_step:
            tic = time.perf_counter()
            generator = torch.Generator().manual_seed(mix_seed(config.seed, step, dist.rank))
            batch = sampler.batch(step, batch_size, dist.rank, dist.world_size, config.seed, generator)
            batch = {k: v.to(device) for k, v in batch.items()}
            aug_weight = augmentation_weight(
                step, recipe.weights.get("augmentation", 0.0), aug.growth, aug.growth_every, aug.max_weight
            )
            if symmetric:
                total, values = symmetric_train_step(
                    net, model, objective, optimizer, scaler, batch, generator, amp_dtype, config.grad_clip, device,
                )
            else:
                total, values = train_step(
                    net, objective, optimizer, scaler, batch, terms, aug_params, aug_weight, generator,
                    amp_dtype, config.grad_clip, device,
                )
            schedule.step()
            step += 1
            first_step = step == start_step + 1
            if first_step:
                # The first step also loads the kernels (compiles them on a machine's first run: about a
                # minute on 2 CPU cores), so the time limit counts from its end.
                started = clock()
                if dist.is_main:
                    log.info("%s: first step %.1f s (kernels loaded; compiled on a machine's first run)",
                             mode, time.perf_counter() - tic)
            total, *reduced = dist.mean([total, *[values[t] for t in terms]], device)
            # The losses stay on the device until the window closes: one host synchronisation per window.
            pending.append((step, optimizer.param_groups[0]["lr"], aug_weight,
                            torch.stack([v.float() for v in (total, *reduced)])))
            if progress is not None:
                progress.update(1)
            out_of_time = False
            if max_seconds is not None:  # every rank stops at the same step
                out_of_time = dist.any(not first_step and clock() - started > max_seconds, device)
            if out_of_time and step < end_step:
                stopped_early = {"reason": "max_seconds", "max_seconds": float(max_seconds),
                                 "steps_done": step, "steps_planned": end_step}
                if dist.is_main:
                    log.warning("%s: STOPPED EARLY by the time limit of %.0f s after step %d of %d planned: the "
                                "weights depend on this machine's speed (raise %s or lower the steps)",
                                mode, max_seconds, step, end_step,
                                "train.finetune.max_seconds" if finetuning else "train.max_seconds")
            save = step % config.checkpoint_every == 0 or step == end_step or stopped_early
            if save or first_step or step % config.log_every == 0:  # the first step's time is its own
                window_started = flush(window_started)
            if save:
                checkpoint(step)
            if stopped_early:
                break
        if step == start_step and dist.is_main and not out.last.is_file():
            checkpoint(step)
        if progress is not None:
            progress.close()
        if dist.is_main:
            out.summarise({"mode": mode, "steps_planned": end_step, "steps_done": step, "stopped_early": stopped_early,
                           "final_loss": rows[-1]["loss"] if rows else None})
        dist.barrier()
        return out.last
    finally:
        dist.close()


def _load_for_resume(last: Path, mode: str, init: Path | None, init_sha256: str | None, folder: Path):
    from pipeline.model import load_checkpoint

    model, extra = load_checkpoint(last, strict=True)
    if extra.get("mode") != mode:
        raise ValueError(f"train --resume: {last} is a {extra.get('mode')!r} run, not {mode!r}")
    started_from = extra.get("init_sha256")
    if init_sha256 is not None and started_from is not None and started_from != init_sha256:
        # A rule reruns when its init changes, but its folder keeps the old run: resuming
        # that would silently hand back weights that never saw the new init.
        raise ValueError(
            f"train --resume: {last} continues a run that started from other weights than --init {init} "
            f"(sha256 {started_from[:12]}… against {init_sha256[:12]}…); remove {folder} to start afresh "
            "from the new weights, or pass the --init that run started from"
        )
    return model, extra
