"""Checkpoints: the weights together with the :class:`ModelConfig` that built them; strict loading.

A checkpoint is a ``torch.save`` of plain types only (loadable with ``weights_only=True``)::

    {"kind": "selfmvs.patchmatchnet", "format_version": 1,
     "model_config": ModelConfig.to_dict(), "state_dict": {...}, "extra": {...}}

Loading is strict: a missing or unexpected key is an error naming the file and the keys, never a
network left partly random. ``kind`` names the file format, whatever the network: the backbone is
``model_config["backbone"]`` (absent in files written before CVP-MVSNet: PatchmatchNet).
One exception, logged: weights without an SPN (``spn.*``) loaded into
a network with ``refinement: "spn"`` start the SPN fresh; its last layer is zero, so the network
returns the depth it returned without it, and training goes on from there.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from ..formats.atomic import atomic_path
from .config import ModelConfig
from .cvp import CVPMVSNet
from .network import PatchmatchNet

log = logging.getLogger(__name__)

KIND = "selfmvs.patchmatchnet"
SPN_PREFIX = "spn."
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and what is wrong."""


def build_model(config: ModelConfig | None = None) -> PatchmatchNet | CVPMVSNet:
    """The network ``config.backbone`` names, with random weights (PatchmatchNet's defaults when None)."""
    config = config if config is not None else ModelConfig()
    return CVPMVSNet(config) if config.backbone == "cvp" else PatchmatchNet(config)


def save_checkpoint(path: str | os.PathLike, model: PatchmatchNet | CVPMVSNet, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``model``'s weights and config (plus ``extra``: epoch, optimizer state, ...) atomically.

    ``extra`` must hold plain types and tensors (it is read back with ``weights_only=True``).
    """
    if not isinstance(model, (PatchmatchNet, CVPMVSNet)):
        raise TypeError(f"save_checkpoint: expected a PatchmatchNet or CVPMVSNet, got {type(model).__name__}")
    payload = {
        "kind": KIND,
        "format_version": FORMAT_VERSION,
        "model_config": model.config.to_dict(),
        "state_dict": {key: value.detach().cpu() for key, value in model.state_dict().items()},
        "extra": dict(extra or {}),
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The raw checkpoint dictionary, checked for kind and version."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a file that is not a checkpoint
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(payload, dict) or payload.get("kind") != KIND:
        kind = payload.get("kind") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path}: not a selfmvs PatchmatchNet checkpoint (kind={kind!r})")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format_version {payload.get('format_version')!r}, expected {FORMAT_VERSION}"
        )
    for key in ("model_config", "state_dict"):
        if key not in payload:
            raise CheckpointError(f"{path}: checkpoint lacks {key!r}")
    return payload


def load_checkpoint(
    path: str | os.PathLike,
    strict: bool = True,
    map_location: str | torch.device = "cpu",
    model_overrides: Mapping[str, Any] | None = None,
) -> tuple[PatchmatchNet | CVPMVSNet, dict]:
    """Build the network from the stored config and load its weights.

    Args:
        path: a file written by :func:`save_checkpoint`.
        strict: if True (the default) any missing or unexpected weight, or a shape mismatch, is an
            error; if False, missing and unexpected keys are allowed (shapes must still agree).
        map_location: device of the returned model.
        model_overrides: :class:`ModelConfig` options replacing the stored ones (e.g.
            ``{"refinement": False}``); the weights must still fit (strict loading checks it).
            ``{"refinement": "spn"}`` on weights without ``spn.*`` keys builds the SPN fresh
            (logged; the depth is unchanged until it trains); some ``spn.*`` keys but not all are
            still an error.

    Returns:
        (model in eval mode, extra dict).

    Raises:
        CheckpointError: naming ``path`` and the offending keys.
    """
    path = Path(path)
    payload = read_checkpoint(path)
    try:
        config = ModelConfig.from_dict({**payload["model_config"], **dict(model_overrides or {})})
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: invalid model_config: {error}") from None
    model = build_model(config)
    state_dict = payload["state_dict"]
    if config.refinement == "spn" and not any(key.startswith(SPN_PREFIX) for key in state_dict):
        fresh = {key: value for key, value in model.state_dict().items() if key.startswith(SPN_PREFIX)}
        state_dict = {**state_dict, **fresh}
        log.info("%s: no SPN weights (spn.*) in the checkpoint; refinement 'spn' starts with a fresh SPN "
                 "(%d tensors; its last layer is zero, so the depth is the refinement network's until it trains)",
                 path, len(fresh))
    load_weights(model, state_dict, strict=strict, source=str(path))
    return model.to(map_location).eval(), dict(payload.get("extra") or {})


def load_weights(model: PatchmatchNet | CVPMVSNet, state_dict: Mapping[str, torch.Tensor], strict: bool = True, source: str = "<state_dict>") -> None:
    """Load ``state_dict`` into ``model``, with errors that name ``source`` and the keys."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = sorted(
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in set(expected) & set(state_dict)
        if tuple(state_dict[key].shape) != tuple(expected[key].shape)
    )
    problems = []
    if strict and missing:
        problems.append(f"missing keys ({len(missing)}): {_shorten(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_shorten(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches ({len(mismatched)}): {_shorten(mismatched)}")
    if problems:
        raise CheckpointError(f"{source}: checkpoint does not match the network: " + "; ".join(problems))
    model.load_state_dict(state_dict, strict=strict)


def _shorten(items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def export_weights(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    note: str = "",
    model_overrides: Mapping[str, Any] | None = None,
) -> Path:
    """Ship a training checkpoint: the weights and model config, without optimizer/RNG state.

    Keeps the training facts a user needs to know what they run (step, recipe, scenes, seed) and
    adds ``note`` (e.g. the command that trained it). ``model_overrides`` changes inference options
    of the stored :class:`ModelConfig` (e.g. ``{"refinement": False}``); they are recorded in the
    extra as ``model_overrides``, added to those of ``src`` when it is itself an exported file (so a
    re-export keeps the whole list of departures, and its note unless a new one is given). The
    result loads strictly like any checkpoint.
    """
    model, extra = load_checkpoint(src, strict=True, model_overrides=model_overrides)
    kept = {key: extra[key] for key in ("mode", "step", "total_steps", "recipe", "seed", "scenes") if key in extra}
    note = note or extra.get("note", "")
    if note:
        kept["note"] = note
    overrides = {**extra.get("model_overrides", {}), **(model_overrides or {})}
    if overrides:
        kept["model_overrides"] = overrides
    return save_checkpoint(dst, model, kept)
