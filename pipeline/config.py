"""Schema-validated configuration.

The one source of truth for options, their defaults and their descriptions is
``pipeline/config.schema.yaml``; :func:`load_config` validates a YAML file (or dict) against it,
fills in the defaults and returns plain dicts, and :func:`section` turns one section into the
stage's typed dataclass. Snakemake validates its ``config`` against the same schema.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import typing
from pathlib import Path
from typing import Any, Mapping

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")


class ConfigError(ValueError):
    """A configuration that does not match the schema; the message names the file and the key."""


def load_schema() -> dict:
    with open(SCHEMA_PATH, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


# YAML 1.1 (PyYAML, and Snakemake's config loading) reads "3e-5" -- no dot -- as a string; YAML 1.2
# and every ML config a user copies from read it as a number.
_SCIENTIFIC = re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$")


def _wants_number(schema: Mapping[str, Any]) -> bool:
    types = schema.get("type")
    types = [types] if isinstance(types, str) else list(types or [])
    return "number" in types and "string" not in types


def _fill_defaults(validator_class):
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
                value = instance.get(name)
                if isinstance(value, str) and _SCIENTIFIC.match(value.strip()) and _wants_number(subschema):
                    instance[name] = float(value)
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _fill_defaults(jsonschema.Draft202012Validator)


def _error_message(error: jsonschema.ValidationError) -> str:
    """The schema's message, said as a bad key where a key's name broke a ``propertyNames`` rule
    (a scene name is a folder under results/)."""
    if "propertyNames" in error.absolute_schema_path and error.validator == "pattern":
        return (f"key {error.instance!r} is not an allowed name: use letters, digits, '_', '.', '-', "
                f"starting with a letter or digit (pattern {error.validator_value})")
    return error.message


def validate_config(config: Mapping[str, Any], source: str = "<config>") -> dict:
    """Validate ``config`` against the schema, fill defaults, and return a new dict.

    Raises:
        ConfigError: naming ``source`` and the offending key path.
    """
    config = copy.deepcopy(dict(config))
    errors = sorted(_Validator(load_schema()).iter_errors(config), key=lambda e: list(e.path))
    if errors:
        lines = []
        for error in errors[:10]:
            where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
            lines.append(f"  at {where}: {_error_message(error)}")
        raise ConfigError(f"{source}: invalid configuration\n" + "\n".join(lines))
    return config


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> dict:
    """Read a YAML config (or start empty), apply ``overrides`` (top-level keys), validate."""
    raw: dict = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            with open(path, encoding="utf-8") as handle:
                raw = yaml.safe_load(handle) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML: {error}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    for key, value in (overrides or {}).items():
        raw[key] = value
    return validate_config(raw, source)


def parse_assignments(items: list[str] | tuple[str, ...]) -> dict:
    """Command-line ``KEY=VALUE`` items as a (nested) mapping: values are read as YAML
    (``false`` -> False, ``[1, 2]`` -> a list), dotted keys nest (``loss.top_k=2`` ->
    ``{"loss": {"top_k": 2}}``).

    Raises:
        ValueError: naming the item when it is not ``KEY=VALUE``.
    """
    result: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        *parents, leaf = key.strip().split(".")
        node = result
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = yaml.safe_load(value)
    return result


T = typing.TypeVar("T")


def from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    """Build dataclass ``cls`` from a (validated) mapping, recursing into nested dataclasses.

    Keys the dataclass does not know are an error: a typo must not be silently ignored.
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown option(s) {sorted(unknown)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints.get(name)
        if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
            value = from_dict(hint, value)
        elif isinstance(value, list) and typing.get_origin(hint) is tuple:
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def section(config: Mapping[str, Any], name: str, cls: type[T]) -> T:
    """The typed dataclass of one top-level section of a validated config."""
    return from_dict(cls, config.get(name, {}))


# ---------------------------------------------------------------------------------------------
# Typed sections. Each stage owns its block below; the fields mirror config.schema.yaml
# (same names, same defaults), and tests check that the two agree.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    name: str = "demo"
    seed: int = 0
    num_views: int = 10
    width: int = 320
    height: int = 240
    distortion: bool = False


@dataclasses.dataclass(frozen=True)
class TrainingDataConfig:
    seeds: tuple[int, ...] = tuple(range(1000, 1014))
    num_views: int = 12
    width: int = 400
    height: int = 300


# --- prepare (owned by the prepare stage) ----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    """Options of ``selfmvs prepare`` (COLMAP scene folder -> scene.h5); see config.schema.yaml."""

    images_dir: str = "images"
    undistort_mode: str = "valid"
    max_image_size: int = 800
    size_multiple: int = 8
    fit: str = "crop"
    num_sources: int = 10
    theta0: float = 5.0
    sigma1: float = 1.0
    sigma2: float = 10.0
    depth_percentiles: tuple[float, float] = (1.0, 99.0)
    depth_stretch: tuple[float, float] = (0.75, 1.25)
    min_points: int = 10
    num_depth_min: int = 32
    num_depth_max: int = 512


# --- train (owned by the train stage) ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LRScheduleConfig:
    """``train.lr_schedule``: a multiplier of the learning rate per step (warm-up, then the kind)."""

    kind: str = "cosine"
    warmup_steps: int = 100
    min_ratio: float = 0.01
    milestones: tuple[int, ...] = ()
    gamma: float = 0.5


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """``train.finetune``: per-scene self-supervised fine-tuning."""

    enabled: bool = True
    steps: int = 300
    max_seconds: float | None = 120.0
    learning_rate: float = 0.0001
    freeze_batchnorm: bool = True
    full_resolution: bool = False
    objective: str = "labels"
    label_weight: float = 0.25
    label_transfer: bool = True


@dataclasses.dataclass(frozen=True)
class LossWeightsConfig:
    """``train.loss.weights``: per-term overrides of the recipe's weights (None keeps the recipe's)."""

    photometric: float | None = None
    ssim: float | None = None
    smoothness: float | None = None
    augmentation: float | None = None
    cosegmentation: float | None = None
    cross_view: float | None = None
    depth_normal: float | None = None
    pseudo_label: float | None = None


@dataclasses.dataclass(frozen=True)
class AugmentationConfig:
    """``train.loss.augmentation``: JDACS augmentation ranges and weight schedule."""

    growth: float = 2.0
    growth_every: int = 500
    max_weight: float = 0.16
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    gamma: float = 1.5
    occlusions: int = 2
    occlusion_size: tuple[float, float] = (0.1, 0.3)


@dataclasses.dataclass(frozen=True)
class CoSegmentationConfig:
    """``train.loss.cosegmentation``: VGG16 layer and NMF settings."""

    layer: str = "relu4_3"
    num_segments: int = 4
    iterations: int = 10


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """``train.loss``: the self-supervised objective."""

    recipe: str = "unsup_mvsnet"
    weights: LossWeightsConfig = LossWeightsConfig()
    top_k: int = 2
    gradient_weight: float = 1.0
    robust: str = "l1"
    huber_delta: float = 0.05
    smoothness_order: int = 2
    smoothness_inverse: bool = True
    cross_view_max_error: float = 0.05
    augmentation: AugmentationConfig = AugmentationConfig()
    cosegmentation: CoSegmentationConfig = CoSegmentationConfig()


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """``train``: self-supervised training / fine-tuning (see config.schema.yaml for each option)."""

    seed: int = 0
    steps: int = 2000
    batch_size: int = 2
    num_sources: int = 4
    width: int = 320
    height: int = 240
    crop_scale: tuple[float, float] = (0.7, 1.0)
    mirror_probability: float = 0.0
    learning_rate: float = 0.001
    weight_decay: float = 0.0
    lr_schedule: LRScheduleConfig = LRScheduleConfig()
    grad_clip: float = 1.0
    freeze_batchnorm: bool = False
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    device: str = "auto"
    amp: str = "off"
    num_threads: int | None = None
    progress: bool = True
    find_unused_parameters: bool = False
    vgg16_weights: str | None = None
    model: dict = dataclasses.field(default_factory=dict)
    finetune: FinetuneConfig = FinetuneConfig()
    loss: LossConfig = LossConfig()


# --- infer (owned by the infer stage) ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PlaneFillConfig:
    """``infer.plane_fill``: planar in-fill of low-texture regions (pipeline.scene.planar_fill)."""

    enabled: bool = True
    texture_std: float = 0.015
    window: int = 7
    min_area: int = 150
    ring: int = 4
    inlier_tolerance: float = 0.01
    min_inlier_fraction: float = 0.5


@dataclasses.dataclass(frozen=True)
class InferConfig:
    """``infer``: scene.h5 + checkpoint -> depth.h5 (see config.schema.yaml for each option)."""

    checkpoint: str | None = None
    num_sources: int = 6
    device: str = "auto"
    max_size: int | None = None
    num_threads: int | None = None
    mask_invalid: bool = True
    feature_cache: int | None = None
    mmap_threshold_kib: int = 512
    flip_average: bool = True
    plane_fill: PlaneFillConfig = PlaneFillConfig()
    model: dict = dataclasses.field(default_factory=dict)


# --- fuse (owned by the fuse stage) -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FuseConfig:
    """Depth-map fusion (pipeline.fusion); the meaning of each threshold is in its module docstring."""

    min_confidence: float = 0.5
    max_reprojection_error: float = 1.0
    max_relative_depth_error: float = 0.01
    min_consistent_views: int = 3
    num_sources: int = 10
    sampling: str = "bilinear"
    dynamic: bool = False
    dynamic_reprojection_step: float = 0.25
    dynamic_relative_depth_step: float = 0.0025
    normals: bool = True
    device: str = "auto"
    num_threads: int = 1


# --- evaluate / report (owned by the evaluate and report stages) ------------------------------


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """Evaluation (pipeline.evaluation): distances in scene units or fractions of the GT diagonal."""

    thresholds: tuple[float, ...] = ()
    threshold_fractions: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01)
    distance_cap: float | None = None
    distance_cap_fraction: float = 0.05
    voxel_size: float | None = None
    voxel_fraction: float = 0.0005
    max_points: int = 1000000
    depth_thresholds: tuple[float, ...] = (0.005, 0.01, 0.02)
    sparse_tau: float | None = None
    sparse_tau_fraction: float = 0.005
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class ReportConfig:
    """Report pictures and page (pipeline.report)."""

    max_views: int = 6
    cloud_points: int = 40000
    viewpoints: int = 3
    dpi: int = 100
