"""What a run starts from: label maps of a scene, the initial network, the init file's digest."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from pipeline.config import TrainConfig


def read_labels(path: Path, scene, scene_path: Path) -> dict[int, torch.Tensor]:
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


def build_model(config: TrainConfig, init: Path | None):
    from pipeline.model import ModelConfig, PatchmatchNet, load_checkpoint

    if init is not None:
        model, _ = load_checkpoint(init, strict=True)
        return model
    try:
        model_config = ModelConfig.from_dict(dict(config.model)) if config.model else ModelConfig()
    except (TypeError, ValueError) as error:
        raise ValueError(f"train.model: {error}") from None
    return PatchmatchNet(model_config)


def file_sha256(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: initial checkpoint (--init) not found")
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
