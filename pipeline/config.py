"""Schema-validated configuration.

The one source of truth for options, their defaults and their descriptions is
``pipeline/config.schema.yaml``; :func:`load_config` validates a YAML file (or dict) against it,
fills in the defaults and returns plain dicts, and :func:`section` turns one section into the
stage's typed dataclass. Snakemake validates its ``config`` against the same schema.
"""

from __future__ import annotations

import copy
import dataclasses
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


def _fill_defaults(validator_class):
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _fill_defaults(jsonschema.Draft202012Validator)


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
            lines.append(f"  at {where}: {error.message}")
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


# --- prepare (owned by the prepare stage) ----------------------------------------------------

# --- train (owned by the train stage) ---------------------------------------------------------

# --- infer (owned by the infer stage) ---------------------------------------------------------

# --- fuse (owned by the fuse stage) -----------------------------------------------------------

# --- evaluate / report (owned by the evaluate and report stages) ------------------------------
