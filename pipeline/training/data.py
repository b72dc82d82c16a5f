"""What a run starts from: label maps of a scene, the initial network, the init file's digest."""

from __future__ import annotations

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
