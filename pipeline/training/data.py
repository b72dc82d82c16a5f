"""What a run starts from: label maps of a scene, the initial network, the digests a resume checks."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import torch

from pipeline.config import TrainConfig
from pipeline.formats.paths import file_sha256

log = logging.getLogger(__name__)


def read_labels(path: Path, scene, scene_path: Path) -> dict[int, torch.Tensor]:
    """image_id -> (H, W) float32 label depth of every view of ``scene`` (checked by the format's reader)."""
    from pipeline.formats.labels_file import read_labels_file

    # float32; the loss skips pixels <= 0 or not finite
    return {image_id: torch.from_numpy(depth) for image_id, depth in read_labels_file(path, scene, scene_path).items()}


def build_model(config: TrainConfig, init: Path | None):
    """The network a run starts from: ``init``'s weights with ``train.model`` replacing options of
    its stored config, or a fresh one of the recipe's backbone with ``train.model``.

    A recipe that names a backbone (``jdacs_ms``: CVP-MVSNet) gets it unless ``train.model`` says otherwise.
    With ``init``, loading is strict, except that ``train.model: {refinement: spn}`` on weights
    without an SPN starts the SPN fresh (:func:`pipeline.model.load_checkpoint`).
    """
    from pipeline.losses import get_recipe
    from pipeline.model import ModelConfig, build_model as build_network, load_checkpoint

    if init is not None:
        model, _ = load_checkpoint(init, strict=True, model_overrides=dict(config.model) or None)
        return model
    recipe = get_recipe(config.loss.recipe)
    options = {**recipe.model, **dict(config.model)}
    if recipe.model and options != dict(config.model):
        log.info("recipe %s: model %s (train.model overrides it)", recipe.name, dict(recipe.model))
    try:
        model_config = ModelConfig.from_dict(options) if options else ModelConfig()
    except (TypeError, ValueError) as error:
        raise ValueError(f"train.model: {error}") from None
    return build_network(model_config)


def init_sha256(path: Path) -> str:
    """The content identity of the ``--init`` checkpoint (recorded so a resume can check it)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: initial checkpoint (--init) not found")
    return file_sha256(path)


# Settings that say how a run is carried out, not what it computes: a resumed run may change them.
# `steps` is among them so that a finished run can be extended (with a cosine or step schedule the
# rate of the remaining steps then follows the new length).
OPERATIONAL_SETTINGS = ("steps", "checkpoint_every", "keep_checkpoints", "progress", "num_threads", "device",
                        "log_every", "max_seconds", "find_unused_parameters")


def run_inputs(config: TrainConfig, scene_paths, label_paths) -> dict:
    """The identity of what a run learns from: a digest of its settings (all but
    :data:`OPERATIONAL_SETTINGS`) and the sha256 of every scene and label file, in order."""
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in OPERATIONAL_SETTINGS}
    if isinstance(settings.get("finetune"), dict):
        settings["finetune"] = {k: v for k, v in settings["finetune"].items() if k not in ("steps", "max_seconds")}
    text = json.dumps(settings, sort_keys=True, default=str)
    return {"settings_sha256": hashlib.sha256(text.encode()).hexdigest(),
            "scenes": [file_sha256(p) for p in scene_paths],
            "labels": [file_sha256(p) for p in label_paths] if label_paths is not None else []}


def check_same_inputs(stored: dict | None, current: dict, last: Path, folder: Path, scene_paths, label_paths) -> None:
    """A run resumes only when its settings and input files are provably those it started with."""
    def refuse(why: str):
        raise ValueError(f"train --resume: {last} {why}; remove {folder} to start afresh with these inputs")

    if stored is None:
        refuse("records no digests of its settings and input files (a checkpoint written before 2026-12-07), "
               "so it cannot be shown to continue this run")
    if stored["settings_sha256"] != current["settings_sha256"]:
        refuse("was trained with other train settings than these (only steps, checkpointing, threads, device, "
               "progress, log_every and time limits may change on resume)")
    for kind, paths in (("scenes", scene_paths), ("labels", label_paths or [])):
        before, now = stored.get(kind, []), current[kind]
        if len(before) != len(now):
            refuse(f"was trained on {len(before)} {kind[:-1]} file(s), this run gives {len(now)}")
        for path, old, new in zip(paths, before, now):
            if old != new:
                refuse(f"was trained on other content of {kind[:-1]} file {path} (sha256 {old[:12]}… against "
                       f"{new[:12]}…)")
