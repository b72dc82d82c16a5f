"""``selfmvs config``: validate a configuration against the schema and write it with defaults filled.

The workflow snapshots its configuration with this verb into ``results/<scene>/config.yaml``; every
later stage of that scene reads the snapshot, and the snapshot records how the results were made.
"""

from __future__ import annotations

import json
import sys

import yaml

from pipeline.config import ConfigError, load_config, validate_config
from pipeline.formats.atomic import atomic_path
from pipeline.formats.paths import check_outputs_distinct


def add_arguments(parser) -> None:
    parser.add_argument("out", nargs="?", help="write the validated config here (default: print it)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--config", help="YAML config file to validate")
    source.add_argument("--json", help="config as a JSON string (what the Snakefile passes)")


def main(args) -> int:
    if args.config is not None and args.out is not None:
        check_outputs_distinct({"config": args.config}, {"out": args.out})
    if args.json is not None:
        try:
            raw = json.loads(args.json)
        except json.JSONDecodeError as error:
            raise ConfigError(f"--json: not valid JSON: {error}") from None
        config = validate_config(raw, "--json")
    else:
        config = load_config(args.config)
    text = yaml.safe_dump(config, sort_keys=False)
    if args.out is None:
        sys.stdout.write(text)
        return 0
    with atomic_path(args.out) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return 0
