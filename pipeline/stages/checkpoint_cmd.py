"""``selfmvs export-checkpoint``: strip a training checkpoint down to what inference needs."""

from __future__ import annotations

import yaml

from pipeline.model.checkpoint import export_weights


def add_arguments(parser) -> None:
    parser.add_argument("src", help="training checkpoint (e.g. results/_training/checkpoint/last.pt)")
    parser.add_argument("dst", help="where to write the weights-only checkpoint")
    parser.add_argument("--note", default="", help="free text stored with it (e.g. the training command)")
    parser.add_argument(
        "--model", action="append", default=[], metavar="KEY=VALUE",
        help="change a model option of the shipped file (YAML value), e.g. refinement=false or "
        "stage_upsampling=nearest; the weights must still fit; repeatable",
    )


def parse_overrides(items: list[str]) -> dict:
    """``["refinement=false"]`` -> ``{"refinement": False}``; a malformed item is a clear error."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"export-checkpoint --model: expected KEY=VALUE, got {item!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def main(args) -> int:
    export_weights(args.src, args.dst, args.note, parse_overrides(args.model))
    return 0
