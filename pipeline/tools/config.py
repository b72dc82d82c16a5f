"""``selfmvs config``: validate a configuration against the schema and write it with defaults filled.

The workflow snapshots its configuration with this verb into ``results/<scene>/config.yaml``; every
later stage of that scene reads the snapshot, and the snapshot records how the results were made.
"""

from __future__ import annotations

import json
import os
import sys

import yaml

from pipeline.config import ConfigError, load_config, validate_config
from pipeline.formats.atomic import atomic_path
from pipeline.formats.paths import check_outputs_distinct


def run_config(out: str | os.PathLike | None = None, *, config_path: str | os.PathLike | None = None,
               json_text: str | None = None) -> dict:
    """Validate the config of ``config_path`` (a YAML file), of ``json_text`` (what the Snakefile
    passes) or the defaults; write it with every default filled to ``out`` (atomically), or print
    it when ``out`` is None. Returns the validated config.

    Raises:
        ConfigError: naming the source and the key at fault.
    """
    if config_path is not None and json_text is not None:
        raise ValueError("config: give either a config file or a JSON string, not both")
    if config_path is not None and out is not None:
        check_outputs_distinct({"config": config_path}, {"out": out})
    if json_text is not None:
        try:
            raw = json.loads(json_text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"--json: not valid JSON: {error}") from None
        config = validate_config(raw, "--json")
    else:
        config = load_config(config_path)
    text = yaml.safe_dump(config, sort_keys=False)
    if out is None:
        sys.stdout.write(text)
        return config
    with atomic_path(out) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return config
