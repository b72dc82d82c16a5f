"""What a run starts from: label maps of a scene, the initial network, the init file's digest."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.config import TrainConfig
from pipeline.formats.paths import file_sha256


def read_labels(path: Path, scene, scene_path: Path) -> dict[int, torch.Tensor]:
    """image_id -> (H, W) float32 label depth of every view of ``scene`` (checked by the format's reader)."""
    from pipeline.formats.labels_file import read_labels_file

    # float32; the loss skips pixels <= 0 or not finite
    return {image_id: torch.from_numpy(depth) for image_id, depth in read_labels_file(path, scene, scene_path).items()}


def build_model(config: TrainConfig, init: Path | None):
    """The network a run starts from: ``init``'s weights with ``train.model`` replacing options of
    its stored config, or a fresh one built from ``train.model``.

    With ``init``, loading is strict, except that ``train.model: {refinement: spn}`` on weights
    without an SPN starts the SPN fresh (:func:`pipeline.model.load_checkpoint`).
    """
    from pipeline.model import ModelConfig, PatchmatchNet, load_checkpoint

    if init is not None:
        model, _ = load_checkpoint(init, strict=True, model_overrides=dict(config.model) or None)
        return model
    try:
        model_config = ModelConfig.from_dict(dict(config.model)) if config.model else ModelConfig()
    except (TypeError, ValueError) as error:
        raise ValueError(f"train.model: {error}") from None
    return PatchmatchNet(model_config)


def init_sha256(path: Path) -> str:
    """The content identity of the ``--init`` checkpoint (recorded so a resume can check it)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: initial checkpoint (--init) not found")
    return file_sha256(path)
