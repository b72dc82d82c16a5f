"""``selfmvs export-checkpoint``: strip a training checkpoint down to what inference needs."""

from __future__ import annotations

from pipeline.model.checkpoint import export_weights


def add_arguments(parser) -> None:
    parser.add_argument("src", help="training checkpoint (e.g. results/_training/checkpoint/last.pt)")
    parser.add_argument("dst", help="where to write the weights-only checkpoint")
    parser.add_argument("--note", default="", help="free text stored with it (e.g. the training command)")


def main(args) -> int:
    export_weights(args.src, args.dst, args.note)
    return 0
