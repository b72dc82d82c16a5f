"""Configuration: one typed dataclass per section, validated YAML in, dataclasses out.

Every option is declared once, as a field of its section's dataclass below, with its default and a
one-line description (:func:`option`); the domain modules take these dataclasses as their parameters
(:mod:`pipeline.fusion` fuses with a ``FuseConfig``, :mod:`pipeline.scene.planar_fill` fills with a
``PlaneFillConfig``, and so on). ``pipeline/config.schema.yaml`` adds the bounds (minimum, enum, ...)
for validation -- by :func:`load_config` here and by the Snakefile -- and repeats the names, types,
defaults and descriptions, which ``tests/test_config.py`` checks field by field against the
dataclasses. :func:`load_config` validates a YAML file (or dict) once, fills in the defaults and
returns plain dicts; :func:`section` turns one section into its dataclass.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import re
import typing
from pathlib import Path
from typing import Any, Literal, Mapping

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
    import jsonschema

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


@functools.lru_cache(maxsize=1)
def _validator_class():
    # jsonschema is imported at the first validation, not with this module: `selfmvs --help` reads
    # the option descriptions here and stays fast.
    import jsonschema

    return _fill_defaults(jsonschema.Draft202012Validator)


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
    errors = sorted(_validator_class()(load_schema()).iter_errors(config), key=lambda e: list(e.path))
    if errors:
        lines = []
        for error in errors[:10]:
            where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
            lines.append(f"  at {where}: {_error_message(error)}")
        raise ConfigError(f"{source}: invalid configuration\n" + "\n".join(lines))
    return config


def _merge(base: dict, overrides: Mapping[str, Any]) -> dict:
    """``base`` with ``overrides`` written over it; mappings merge key by key, other values replace."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            value = _merge(dict(merged[key]), value)
        merged[key] = value
    return merged


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> dict:
    """Read a YAML config (or start empty), write ``overrides`` over it, validate the result once.

    ``overrides`` is nested like the config (``{"demo": {"seed": 3}}`` changes one option of the
    section and keeps the others): command-line flags go through the same validation as the file.
    """
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
    if overrides:
        raw = _merge(raw, overrides)
        source += " with command-line options"
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


#: Scene names (keys of ``scenes:`` and ``demo.name``) are folder names under results/: no ``.``/``..``,
#: no separators, no leading ``_`` (the workflow's own ``_training*`` folders).
SCENE_NAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_.-]*$"


def option(default: Any = dataclasses.MISSING, description: str = "", *, factory=None, pattern: str | None = None) -> Any:
    """A dataclass field declaring one option: its default (or ``factory``), its description and, for a
    string, the regular expression its values must match.

    Raises:
        TypeError: when the description is empty (every option says what it means).
    """
    if not description.strip():
        raise TypeError("an option needs a description")
    metadata = {"description": description}
    if pattern is not None:
        metadata["pattern"] = pattern
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def describe(cls: type, name: str) -> str:
    """The description of option ``name`` of section dataclass ``cls`` (for help texts and docs)."""
    for field in dataclasses.fields(cls):
        if field.name == name:
            return field.metadata["description"]
    raise KeyError(f"{cls.__name__} has no option {name!r}")


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
# Typed sections: one frozen dataclass per section, each field declared once with its default and
# its description. The domain modules take these dataclasses as their parameters (fusion, planar
# fill, augmentation, view selection). config.schema.yaml repeats names, types, defaults and
# descriptions and adds the bounds; tests/test_config.py proves the two agree field by field.
# ---------------------------------------------------------------------------------------------


# --- demo ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """``demo``: the synthetic scene rendered when no scenes are given."""

    name: str = option("demo", "scene name under results/ (letters, digits, _ . -, starting with a letter or digit)",
                       pattern=SCENE_NAME_PATTERN)
    seed: int = option(0, "random seed of geometry and textures")
    num_views: int = option(10, "number of rendered views")
    width: int = option(320, "image width, pixels")
    height: int = option(240, "image height, pixels")
    distortion: bool = option(False, "render through an OPENCV lens model")


# --- prepare ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    """``prepare``: COLMAP scene folder -> scene.h5; also the parameters of
    :func:`pipeline.scene.view_selection.select_views` (``num_sources``, ``theta0``, ``sigma1``, ``sigma2``)."""

    images_dir: str = option("images", "folder of the photos, relative to the scene folder")
    undistort_mode: Literal["valid", "full", "keep_size"] = option("valid",
        "valid: shrink/grow the undistorted image until no pixel is blank (COLMAP's blank_pixels=0); full: keep "
        "every original pixel, blank border marked in the mask (blank_pixels=1); keep_size: same size and K as "
        "the original, blank pixels marked in the mask")
    max_image_size: int = option(800,
        "longest image side after resizing, pixels (never scaled up; 0 = no limit). 800 keeps DTU's 800x600 "
        "images as they are and fits PatchmatchNet training in GPU memory")
    size_multiple: int = option(8, "both sides become a multiple of this (PatchmatchNet works at 1/8 resolution)")
    fit: Literal["crop", "resize"] = option(
        "crop", "reach size_multiple by a centred crop (exact aspect) or by a slight resize")
    num_sources: int = option(10,
        "source views kept per reference view, best MVSNet score first; stored in scene.h5, it caps "
        "train/infer/fuse.num_sources (a larger setting is capped with a warning)")
    theta0: float = option(5.0, "MVSNet view-selection score, preferred triangulation angle, degrees")
    sigma1: float = option(1.0, "MVSNet score, Gaussian width below theta0, degrees")
    sigma2: float = option(10.0, "MVSNet score, Gaussian width above theta0, degrees")
    depth_percentiles: tuple[float, float] = option((1.0, 99.0),
        "percentiles of the visible sparse points' z-depths giving [near, far]")
    depth_stretch: tuple[float, float] = option((0.75, 1.25),
        "near and far are multiplied by these (COLMAP's 0.75 / 1.25; [1, 1] = none)")
    min_points: int = option(10,
        "a view seeing fewer sparse points takes its depth range from all points in front of it (logged as a "
        "warning naming the view)")
    num_depth_min: int = option(32, "lower clamp of the suggested number of depth hypotheses")
    num_depth_max: int = option(512,
        "upper clamp of the suggested number of depth hypotheses (one-pixel parallax rule)")


# --- train --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LRScheduleConfig:
    """``train.lr_schedule``: a multiplier of the learning rate per step (warm-up, then the kind)."""

    kind: Literal["constant", "cosine", "step"] = option("cosine",
        "constant: no decay; cosine: cosine decay to min_ratio; step: times gamma at each milestone")
    warmup_steps: int = option(100, "linear warm-up from 0")
    min_ratio: float = option(0.01, "cosine: final multiplier")
    milestones: tuple[int, ...] = option((), "step: steps at which the rate is multiplied by gamma")
    gamma: float = option(0.5, "step: factor at each milestone")


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """``train.finetune``: per-scene self-supervised fine-tuning."""

    enabled: bool = option(False,
        "workflow: fine-tune the checkpoint on each scene before infer. Off by default: on 640x480 rooms 54 steps "
        "gained 8-9.5 points within 1 % on validation rooms and 4.3 on the held-out ones, but lowered the cloud's "
        "precision at 0.5 % there (82.8 -> 80.1) and made photos -> cloud ~6x one network pass plus fusion instead "
        "of 1.9x (docs/benchmarks.md, 2026-12-07)")
    steps: int | None = option(None, "optimizer steps; null = scaled to the scene by megapixel_steps")
    megapixel_steps: float = option(16.5,
        "with steps null: steps = megapixel_steps / (megapixels of a step's reference images: batch size x "
        "width x height, or the stored size with full_resolution or objective labels), clamped to [min_steps,"
        " max_steps]; a fixed amount of work, so the weights never depend on the machine's speed. 16.5 gives "
        "215 steps on the 320x240 demo scene, what the former 120 s budget made there with objective labels "
        "on a quiet 2-core CPU (214 and 221 steps, docs/benchmarks.md); 54 on 640x480")
    min_steps: int = option(10, "fewest steps of a scaled budget")
    max_steps: int = option(300, "most steps of a scaled budget")
    max_seconds: float | None = option(1800.0,
        "safety stop, seconds, counted from the end of the first step, which also loads (on a machine's first"
        " run: compiles) the kernels (null = none); when it cuts fine-tuning short it logs a WARNING and "
        "records stopped_early in the checkpoint and summary.json")
    learning_rate: float = option(0.0001, "constant AdamW learning rate of fine-tuning")
    freeze_batchnorm: bool = option(True, "keep BatchNorm running statistics fixed")
    full_resolution: bool = option(False,
        "objective photometric: use the stored resolution instead of width x height (objective labels always "
        "does)")
    objective: Literal["labels", "photometric"] = option("labels",
        "labels: self-training on the scene itself, no ground truth: the checkpoint's own depth where `selfmvs "
        "fuse` keeps it, plus depth other views kept carried into the pixels a view's own fusion drops (`selfmvs "
        "pseudo-labels --transfer`; the workflow makes the file, `selfmvs train --finetune` takes it with "
        "--labels); the pseudo_label term alone, at the stored resolution. photometric: the train.loss recipe's "
        "self-supervised terms on the scene's photos (the self-trained shipped file loses accuracy with it: "
        "docs/benchmarks.md).")
    label_weight: float = option(0.25, "objective labels: weight of the pseudo_label term")
    label_transfer: bool = option(True,
        "objective labels: the workflow also carries depth between views into the labels (selfmvs pseudo-labels "
        "--transfer)")


@dataclasses.dataclass(frozen=True)
class LossWeightsConfig:
    """``train.loss.weights``: per-term overrides of the recipe's weights (None keeps the recipe's)."""

    photometric: float | None = option(None, "robust colour and image-gradient reconstruction term")
    ssim: float | None = option(None, "structural-similarity reconstruction term")
    smoothness: float | None = option(None, "edge-aware depth smoothness term")
    augmentation: float | None = option(None, "JDACS data-augmentation consistency term (train.loss.augmentation)")
    cosegmentation: float | None = option(None,
        "JDACS co-segmentation consistency term (train.loss.cosegmentation)")
    cross_view: float | None = option(None, "MVS^2 cross-view depth consistency term (cross_view_max_error)")
    depth_normal: float | None = option(None, "M3VSNet depth-normal consistency term")
    feature: float | None = option(None,
        "M3VSNet feature-wise consistency term (frozen ImageNet VGG16 from train.vgg16_weights; without it a "
        "frozen copy of the network's own feature maps at the start of training)")
    pseudo_label: float | None = option(None,
        "self-training on label files (`selfmvs pseudo-labels`, passed with `selfmvs train --labels`); in no "
        "recipe, off unless set")


@dataclasses.dataclass(frozen=True)
class AugmentationConfig:
    """``train.loss.augmentation``: JDACS augmentation ranges and weight schedule; also the parameters of
    :func:`pipeline.losses.augmentation.augment_images` (which reads the ranges only)."""

    growth: float = option(2.0, "factor applied to the weight every growth_every steps")
    growth_every: int = option(500, "steps between growths (0 = constant)")
    max_weight: float = option(0.16, "cap of the grown weight")
    brightness: float = option(0.2, "additive brightness offset drawn from [-b, b]")
    contrast: float = option(0.2, "contrast factor drawn from [1 - c, 1 + c] (around the per-image mean)")
    saturation: float = option(0.2, "saturation factor drawn from [1 - s, 1 + s] (around the grey value)")
    gamma: float = option(1.5, "gamma drawn log-uniformly from [1 / g, g]")
    occlusions: int = option(2, "number of rectangles blanked in the reference")
    occlusion_size: tuple[float, float] = option((0.1, 0.3),
        "[min, max] side of a rectangle as a fraction of the image side")


@dataclasses.dataclass(frozen=True)
class CoSegmentationConfig:
    """``train.loss.cosegmentation``: VGG16 layer and NMF settings."""

    layer: Literal["relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3"] = option(
        "relu4_3", "VGG16 layer whose features are factorised")
    num_segments: int = option(4, "NMF components: segments shared by the views of a sample")
    iterations: int = option(10, "NMF multiplicative updates")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """``train.loss``: the self-supervised objective."""

    recipe: Literal["unsup_mvsnet", "mvs2", "m3vsnet", "jdacs", "jdacs_ms"] = option("mvs2",
        "the published system whose terms and weights are used (pipeline.losses.recipes). Default mvs2: ahead of "
        "the other losses on PatchmatchNet at an equal step budget on held-out objects, rooms and DTU photos, at "
        "about 4x the cost per step of unsup_mvsnet (docs/benchmarks.md, 2026-12-07)")
    weights: LossWeightsConfig = option(LossWeightsConfig(),
        "Per-term weight overrides of the recipe (null keeps the recipe's, 0 turns a term off).")
    top_k: int = option(2,
        "best source views averaged per pixel (k of train.num_sources; k = num_sources averages every view and so"
        " gives no occlusion handling)")
    gradient_weight: float = option(1.0, "image-gradient error weight in the photometric term")
    robust: Literal["l1", "huber"] = option(
        "l1", "penalty of the photometric error: l1, or huber (huber_delta)")
    huber_delta: float = option(0.05, "huber: error at which the penalty turns from quadratic to linear")
    smoothness_order: Literal[1, 2] = option(
        2, "smoothness on first (1) or second (2) differences of the depth")
    smoothness_inverse: bool = option(True,
        "smooth the mean-normalised inverse depth (linear on any plane, so second differences leave every plane "
        "free; those of the depth bend slanted planes)")
    cross_view_max_error: float = option(0.05, "relative error above which pairs count as occluded")
    cross_view_max_reprojection_error: float = option(2.0,
        "forward-backward reprojection error (pixels at the training resolution) above which cross-view pairs "
        "count as occluded")
    augmentation: AugmentationConfig = option(AugmentationConfig(),
        "JDACS augmentation: ranges and the weight schedule weight * growth ** (step // growth_every).")
    cosegmentation: CoSegmentationConfig = option(CoSegmentationConfig(),
        "JDACS co-segmentation: VGG16 layer and NMF settings.")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """``train``: self-supervised training / fine-tuning."""

    seed: int = option(0, "seed of weights init, sampling, crops and augmentation")
    steps: int = option(2000, "optimizer steps of training")
    max_seconds: float | None = option(None,
        "safety stop of training, seconds, counted from the end of the first step (null = none); when it cuts"
        " the run short it logs a WARNING and records stopped_early in the checkpoint and summary.json")
    batch_size: int = option(2, "samples per step (per process)")
    num_sources: int = option(4,
        "source views per sample (best-ranked first); more than loss.top_k, so that the photometric loss can "
        "leave out views that do not see a pixel; at most the scene's prepare.num_sources (capped with a warning)")
    width: int = option(320, "training image width (multiple of 8)")
    height: int = option(240, "training image height (multiple of 8)")
    crop_scale: tuple[float, float] = option((0.7, 1.0),
        "The reference is a random crop covering this fraction range of the image side (same aspect as "
        "width/height), resized to width x height; sources are resized whole.")
    mirror_probability: float = option(0.0,
        "Chance that a training sample is the left-right mirror image of the scene's (images, mask and labels "
        "flipped, cameras reflected with them: a consistent scene). Applies to fine-tuning too. 0: never (no "
        "random draw, runs reproduce as before). Measured for the workflow's per-scene fine-tuning (0.5): held-"
        "out 84.38 against 84.30 % within 1 %, DTU scan 24 0.1077 against 0.1068 % — neutral, so off; for "
        "training from scratch not measured (docs/benchmarks.md, 2026-11-28).")
    learning_rate: float = option(0.001, "peak AdamW learning rate")
    weight_decay: float = option(0.0, "AdamW decoupled weight decay")
    lr_schedule: LRScheduleConfig = option(LRScheduleConfig(),
        "Learning-rate schedule of training (a multiplier of learning_rate per step); fine-tuning runs at a "
        "constant finetune.learning_rate.")
    grad_clip: float = option(1.0, "max global gradient norm (0 = no clipping)")
    freeze_batchnorm: bool = option(False,
        "keep BatchNorm running statistics fixed while training (fine-tuning has its own switch, "
        "train.finetune.freeze_batchnorm); for short runs from trained weights, e.g. self-training")
    checkpoint_every: int = option(500, "steps between checkpoints")
    keep_checkpoints: int = option(3, "numbered checkpoints kept (last.pt always)")
    device: Literal["auto", "cpu", "cuda"] = option("auto", "auto: cuda when available, else cpu")
    amp: Literal["off", "bf16", "fp16"] = option("off", "mixed precision (CUDA only)")
    num_threads: int | None = option(None, "CPU threads of torch (null: torch's default)")
    progress: bool = option(True, "show a tqdm progress bar")
    log_every: int = option(10,
        "Steps whose losses are read back from the device together (one host synchronisation per window, not per step): losses.csv still has a row per step, its `seconds` the mean wall time of the window's steps, and a non-finite loss stops the run at the end of its window, naming the step. Checkpoints and the last step also close a window.")
    find_unused_parameters: bool = option(False, "DistributedDataParallel option")
    vgg16_weights: str | None = option(None,
        "Local torchvision-format VGG16 ImageNet state dict for the co-segmentation and feature terms; null turns "
        "co-segmentation off (logged) and gives the feature term a frozen copy of the network's own feature maps "
        "at the start of training (the --init weights', or from scratch a fixed random projection; logged).")
    model: dict = option(factory=dict, description=
        "ModelConfig overrides (pipeline.model.ModelConfig fields): of a network trained from scratch, or of the "
        "--init weights' stored config (refinement: spn on weights without an SPN adds a fresh one, which "
        "leaves the depth unchanged until it trains)")
    finetune: FinetuneConfig = option(FinetuneConfig(),
        "Per-scene self-supervised fine-tuning (--finetune SCENE_H5 --init CHECKPOINT).")
    loss: LossConfig = option(LossConfig(), "The self-supervised objective.")


# --- infer --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PlaneFillConfig:
    """``infer.plane_fill``: planar in-fill of low-texture regions; also the parameters of
    :func:`pipeline.scene.planar_fill.planar_fill` (which ignores ``enabled``)."""

    enabled: bool = option(True, "false: depth.h5 holds the network's estimate everywhere")
    texture_std: float = option(0.015,
        "low texture: local standard deviation of the grey image (values in [0, 1]) below this")
    window: int = option(7, "odd side of the window of that standard deviation, pixels")
    min_area: int = option(150, "smallest low-texture region filled, pixels")
    ring: int = option(4, "width of the textured ring around a region the plane is fitted to, pixels")
    inlier_tolerance: float = option(0.01,
        "a ring pixel fits the plane when their inverse depths agree within this fraction")
    min_inlier_fraction: float = option(0.3,
        "a region is filled only when at least this fraction of its ring fits one plane. 0.3 (with max_brightness"
        " 0.97) against 0.5: validation rooms 3200-3202 29.6 -> 32.7 % within 1 %, object scenes 1000-1001 unchanged"
        " (+0.1), DTU photos: fused points inside the object masks 90.1 -> 96.0 %, sparse agreement unchanged"
        " (docs/benchmarks.md, 2026-12-07)")
    max_brightness: float = option(0.97,
        "a low-texture region whose median grey value (image values in [0, 1]) is at least this is left alone: "
        "clipped to white, nothing was measured there (the white backdrop of the DTU photos); 1: every region may be "
        "filled")
    min_brightness: float = option(0.1,
        "a low-texture region whose median grey value (image values in [0, 1]) is below this is left alone: "
        "nearly black, too little light was measured there (the unlit background of the DTU photos); 0: every "
        "region may be filled (docs/benchmarks.md, 2026-12-07: chosen with confident_within and "
        "fuse.filled_min_consistent_views)")
    confident_within: float | None = option(0.1,
        "a filled pixel keeps the network's confidence only where the plane's depth is within this fraction of "
        "the network's own estimate there; elsewhere its confidence is 0: the depth map holds the plane, fusion "
        "leaves it out (null: every filled pixel keeps the network's confidence). With min_brightness 0.1 and "
        "fuse.filled_min_consistent_views 2, against none of the three: validation rooms 3200-3205 cloud F-score "
        "at 0.5 % 46.2 -> 47.9, precision 81.3 -> 82.2; DTU photos: fused points inside the object masks 96.07 -> "
        "96.15 % (docs/benchmarks.md, 2026-12-07)")
    max_planes: int = option(1,
        "planes fitted to a region's ring (each next one to the ring pixels the earlier ones leave); with more than "
        "one, min_inlier_fraction counts the ring pixels any of them fits and each pixel of the region takes the plane "
        "nearest the network's depth there (a region across the crease of two walls)")
    max_disagreement: float | None = option(None,
        "a pixel takes a plane only where the plane's inverse depth is within this fraction of the network's "
        "(null: wherever the plane lies in the view's depth range)")


@dataclasses.dataclass(frozen=True)
class InferConfig:
    """``infer``: scene.h5 + checkpoint -> depth.h5."""

    checkpoint: str | None = option(None,
        "workflow: checkpoint to infer with (null: the shipped one, pipeline/checkpoints/selfmvs_synthetic.pt)")
    num_sources: int = option(6,
        "source views per reference (the best-ranked ones); more gives better depth and costs time and memory: 6 "
        "instead of 4 measured +1.9 to +2.9 points within 1 % on four held-out scenes for about 1.3x the time at "
        "640x480 (README; 4 is PatchmatchNet's DTU setting and that of the speed target); at most the scene's "
        "prepare.num_sources (capped with a warning)")
    device: Literal["auto", "cpu", "cuda"] = option("auto", "auto: cuda when available, else cpu")
    max_size: int | None = option(None,
        "Longest image side the network sees; larger views are downscaled (depth.h5 then holds the smaller maps "
        "with K at their resolution). null: full resolution.")
    num_threads: int | None = option(None, "CPU threads of torch (null: torch's default)")
    mask_invalid: bool = option(True, "depth and confidence 0 outside the view's valid-pixel mask")
    feature_cache: int | None = option(None,
        "Views whose network features stay in memory for reuse as sources of the next references (each view's "
        "features are then computed once, not once per reference); 0: off; null: num_sources + 1, the views of "
        "one reference (a smaller cache computes features again: 640x480, 4 sources, 2 views: +0.1 s/view for ~5 "
        "MB less; docs/benchmarks.md, 2026-11-27).")
    mmap_threshold_kib: int = option(512,
        "CPU runs, glibc: allocations of at least this many KiB get pages of their own that are returned when "
        "freed, instead of the heap, where the freed tensors of a forward leave holes that stay resident "
        "(640x480, 4 sources: peak 374 MB at 0.43-0.45 s/view, against 423-454 MB at 0.32-0.33 s/view with 0); 0:"
        " glibc's default (faster, larger). Set per process (mallopt); no effect without glibc.")
    flip_average: bool = option(True,
        "Estimate each view a second time on the left-right mirrored scene (images flipped, cameras reflected) "
        "and combine the two maps: their mean where they agree within 2 %, else the more confident one. Twice the"
        " network time and about 100 MB more peak memory at 800x600; measured (shipped file, 6 sources, no fine-"
        "tuning): DTU scan 24 sparse median error 0.1116 % against 0.1285 % with one pass, held-out synthetic "
        "scenes 83.60 % within 1 % against 82.84 % (docs/benchmarks.md, 2026-11-28). false: one pass (the setting of the speed "
        "and memory targets against PatchmatchNet).")
    cuda_graph: bool = option(True,
        "CUDA inference: capture the network's forward of a view (given the cached features) as a CUDA graph "
        "once per input shape and replay it for every view of that shape, instead of launching its kernels one "
        "by one from Python (pipeline.inference.graph). A capture that fails logs a WARNING and the forward "
        "stays eager. Costs about one forward's peak memory per captured shape. No effect on the CPU.")
    plane_fill: PlaneFillConfig = option(PlaneFillConfig(),
        "Planar in-fill of low-texture regions (pipeline.scene.planar_fill, a planar prior as in ACMP): where the"
        " image has no texture, matching says nothing about depth; each such region whose textured surroundings "
        "are mostly one plane takes that plane's depth (RANSAC fit of the inverse depth, affine in the pixel "
        "coordinates). depth.h5 marks those pixels (per view `filled`). Measured (shipped file, 6 sources, no "
        "fine-tuning, with flip_average): held-out synthetic scenes 88.87 / 88.33 / 85.46 / 86.93 % within 1 % "
        "against 88.39 / 81.50 / 77.51 / 87.00 %; DTU scan 24 sparse median error unchanged (docs/benchmarks.md, 2026-11-28); "
        "~0.06-0.09 s and ~20 MB more per 640x480 view. false: the network's depth everywhere.")
    model: dict = option(factory=dict, description=
        "ModelConfig options replacing the checkpoint's at inference, for those that leave the weights unchanged "
        "(iterations, num_initial_hypotheses, num_perturbation_hypotheses, perturbation_interval_scale, "
        "refinement, ...), e.g. {iterations: [1, 4, 1]}; a change the weights do not fit is an error naming the "
        "keys. {}: the checkpoint's own settings.")


# --- fuse ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FuseConfig:
    """``fuse``: depth-map fusion; also the parameters of :func:`pipeline.fusion.fuse_views` (which
    ignores ``device`` and ``num_threads``). The meaning of each threshold is in that module's docstring."""

    min_confidence: float = option(0.5, "photometric check: keep pixels with confidence >= this")
    max_reprojection_error: float = option(1.0,
        "geometric check: reference -> source -> reference round trip error, pixels")
    max_relative_depth_error: float = option(0.01, "geometric check: |d' - d| / d of the round trip")
    min_consistent_views: int = option(2,
        "sources that must agree (capped by the number of sources of the view); low-texture and filled pixels have "
        "their own counts below")
    low_texture_min_consistent_views: int | None = option(3,
        "sources that must agree for a pixel without texture (local grey standard deviation below low_texture_std, "
        "7 x 7 window) that the in-fill did not fill: matching says little there (null: min_consistent_views for "
        "every pixel; docs/benchmarks.md, 2026-12-07)")
    low_texture_std: float = option(0.015, "grey standard deviation (values in [0, 1]) below which a pixel has no texture")
    filled_min_consistent_views: int | None = option(2,
        "sources that must agree for a pixel of a low-texture region's plane (depth.h5's `filled`, "
        "infer.plane_fill) instead of min_consistent_views (null: min_consistent_views for every pixel); with "
        "infer.plane_fill.confident_within those are the planes the network's own depth agrees with "
        "(docs/benchmarks.md, 2026-12-07)")
    num_sources: int = option(10,
        "best source views checked per reference; at most the scene's prepare.num_sources (capped with a warning)")
    max_free_space_violations: int | None = option(2,
        "visibility check: drop a pixel when more than this many sources see past its point (their depth at its "
        "projection exceeds the point's by more than free_space_margin): the point floats in space those views "
        "see through (null: off; docs/benchmarks.md, 2026-12-07)")
    free_space_margin: float = option(0.02, "visibility check: relative depth beyond the point that counts as seeing past it")
    sampling: Literal["bilinear", "nearest"] = option("bilinear", "how source depths are read")
    dynamic: bool = option(False,
        "dynamic consistency (D2HC-RMVSNet): a source agrees at level n when errors <= n * step; kept if n "
        "sources agree at level n")
    dynamic_reprojection_step: float = option(0.25, "pixels per level")
    dynamic_relative_depth_step: float = option(0.0025, "relative depth error per level")
    normals: bool = option(True, "write nx ny nz (from the reference depth map)")
    device: Literal["auto", "cpu", "cuda"] = option("auto", "auto: CUDA when present")
    num_threads: int = option(1,
        "CPU threads of torch during fusion (0: torch's default); measured 10x faster with 1 than 2 on the "
        "crowded 2-core machine")

    def __post_init__(self) -> None:
        # Callers that build the dataclass in Python (not from a validated config) get the same
        # clear error for the values fusion cannot work with.
        if self.sampling not in ("bilinear", "nearest"):
            raise ValueError(f"sampling must be one of ('bilinear', 'nearest'), got {self.sampling!r}")
        counts = (self.min_consistent_views, self.num_sources, self.filled_min_consistent_views or 0,
                  self.low_texture_min_consistent_views or 0)
        if min(counts) < 0:
            raise ValueError(
                f"min_consistent_views, num_sources, filled_min_consistent_views and "
                f"low_texture_min_consistent_views must be >= 0, got {counts}"
            )
        if (self.max_free_space_violations or 0) < 0:
            raise ValueError(f"max_free_space_violations must be >= 0 or null, got {self.max_free_space_violations}")
        for name in ("max_reprojection_error", "max_relative_depth_error", "free_space_margin", "low_texture_std",
                     "dynamic_reprojection_step", "dynamic_relative_depth_step"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")



# --- evaluate / report --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """``evaluate``: distances in scene units or fractions of the reference scale."""

    thresholds: tuple[float, ...] = option((), "precision/recall/F-score thresholds in scene units")
    threshold_fractions: tuple[float, ...] = option((0.001, 0.0025, 0.005, 0.01),
        "the same thresholds as fractions of the reference scale")
    distance_cap: float | None = option(None,
        "outlier cap (DTU: 20 mm) in scene units; null: distance_cap_fraction")
    distance_cap_fraction: float = option(0.05, "outlier cap as a fraction of the reference scale")
    voxel_size: float | None = option(None,
        "both clouds are voxel-downsampled to this size before distances; null: voxel_fraction; 0: off")
    voxel_fraction: float = option(0.0005, "voxel size as a fraction of the reference scale")
    max_points: int = option(1000000, "random subsample (seeded) of each cloud after voxel downsampling")
    depth_thresholds: tuple[float, ...] = option((0.005, 0.01, 0.02),
        "relative depth error thresholds of depth-map metrics")
    sparse_tau: float | None = option(None,
        "distance for 'sparse point has a fused point within tau', scene units; null: sparse_tau_fraction")
    sparse_tau_fraction: float = option(0.005, "sparse_tau as a fraction of the reference scale")
    seed: int = option(0, "seed of the random subsampling")


@dataclasses.dataclass(frozen=True)
class ReportConfig:
    """``report``: pictures and page."""

    max_views: int = option(6, "views shown in the depth / confidence / error figures")
    cloud_points: int = option(40000, "points drawn in the point-cloud renderings")
    viewpoints: int = option(3, "viewpoints of the point-cloud rendering")
    dpi: int = option(100, "resolution of the figures, dots per inch")


#: The typed top-level sections, by name. The other top-level keys of the schema (``scenes``,
#: ``training_data``, ``self_training``) are read by the workflow (Snakefile, rules/) only.
SECTIONS: dict[str, type] = {
    "demo": DemoConfig,
    "prepare": PrepareConfig,
    "train": TrainConfig,
    "infer": InferConfig,
    "fuse": FuseConfig,
    "evaluate": EvaluateConfig,
    "report": ReportConfig,
}
WORKFLOW_SECTIONS = ("scenes", "training_data", "self_training")
