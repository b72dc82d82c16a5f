"""``selfmvs export-checkpoint``: strip a training checkpoint down to what inference needs."""

from __future__ import annotations

from pipeline.config import parse_assignments
from pipeline.formats.paths import check_outputs_distinct
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


def main(args) -> int:
    try:
        overrides = parse_assignments(args.model)
    except ValueError as error:
        raise SystemExit(f"export-checkpoint --model: {error}") from None
    check_outputs_distinct({"training checkpoint": args.src}, {"weights": args.dst})
    export_weights(args.src, args.dst, args.note, overrides)
    return 0
