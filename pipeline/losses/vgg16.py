"""VGG16's convolutional part (Simonyan & Zisserman 2015, configuration D) for co-segmentation.

The layout follows torchvision's ``vgg16().features`` exactly, so a torchvision-format ImageNet
state dict (keys ``features.N.weight`` / ``features.N.bias``) loads into it; ``classifier.*`` keys
are ignored. Only the layers up to the requested ReLU are built.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

# Configuration D: channels of the 13 conv layers, "M" a 2x2 max pool.
_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

# ReLU name -> index in ``features`` (torchvision numbering).
RELU_INDEX = {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15, "relu4_3": 22, "relu5_3": 29}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VGG16Features(nn.Module):
    """VGG16 conv features up to and including ReLU ``layer``, on ImageNet-normalised input.

    Args:
        layer: one of ``RELU_INDEX`` (``relu4_3``: 512 channels at 1/8 resolution).

    Shape:
        - input: (B, 3, H, W) in [0, 1]; output: (B, C, H / 2**p, W / 2**p) with p pools passed
    """

    def __init__(self, layer: str = "relu4_3"):
        super().__init__()
        if layer not in RELU_INDEX:
            raise ValueError(f"layer: expected one of {sorted(RELU_INDEX)}, got {layer!r}")
        modules: list[nn.Module] = []
        channels = 3
        for item in _LAYOUT:
            if item == "M":
                modules.append(nn.MaxPool2d(2, 2))
            else:
                modules.append(nn.Conv2d(channels, item, 3, padding=1))
                modules.append(nn.ReLU(inplace=True))
                channels = item
        last = RELU_INDEX[layer]
        self.features = nn.Sequential(*modules[: last + 1])
        self.layer = layer
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.features((image - self.mean.to(image.dtype)) / self.std.to(image.dtype))

    def forward_layers(self, image: torch.Tensor, layers: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """The outputs of several ReLUs (each at or before ``layer``) in one pass.

        Shape:
            - image: (B, 3, H, W) in [0, 1] -> layer -> (B, C, H / 2**p, W / 2**p)
        """
        wanted = {}
        for name in layers:
            if name not in RELU_INDEX or RELU_INDEX[name] > RELU_INDEX[self.layer]:
                built = [n for n in RELU_INDEX if RELU_INDEX[n] <= RELU_INDEX[self.layer]]
                raise ValueError(f"layers: expected some of {built} (built up to {self.layer}), got {name!r}")
            wanted[RELU_INDEX[name]] = name
        x = (image - self.mean.to(image.dtype)) / self.std.to(image.dtype)
        out = {}
        for index, module in enumerate(self.features):
            x = module(x)
            if index in wanted:
                out[wanted[index]] = x  # a ReLU is followed by a conv or a pool: neither writes into x
            if len(out) == len(wanted):
                break
        return out

    def load_torchvision_weights(self, path: str | Path) -> None:
        """Load a torchvision-format VGG16 state dict from ``path`` (strict on the layers built).

        Raises:
            FileNotFoundError: if ``path`` does not exist.
            ValueError: if the file is not a state dict with the expected keys and shapes.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: VGG16 weights file not found")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises several types for a corrupt file
            raise ValueError(f"{path}: not a readable torch state dict ({error})") from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
        wanted = self.features.state_dict()
        selected = {}
        for key, tensor in wanted.items():
            full = f"features.{key}"
            if full not in state:
                raise ValueError(f"{path}: key {full!r} missing (not a torchvision VGG16 state dict?)")
            if tuple(state[full].shape) != tuple(tensor.shape):
                raise ValueError(f"{path}: {full} has shape {tuple(state[full].shape)}, expected {tuple(tensor.shape)}")
            selected[key] = state[full]
        self.features.load_state_dict(selected, strict=True)
        log.info("loaded VGG16 weights (up to %s) from %s", self.layer, path)
