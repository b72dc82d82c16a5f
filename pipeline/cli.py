"""The ``selfmvs`` command: thin verbs over the stage functions.

Each verb lives in a stage module that provides ``add_arguments(parser)`` and ``main(args) -> int``.
Modules are imported lazily so that ``selfmvs --help`` is fast and does not import torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# verb -> (module, one-line help). Order is the order of the workflow.
VERBS: dict[str, tuple[str, str]] = {
    "render-scene": ("pipeline.stages.render", "render a synthetic scene folder (images/, sparse/, gt/)"),
    "sfm": ("pipeline.stages.sfm", "register photos without a COLMAP model (pycolmap, CPU) -> sparse/"),
    "prepare": ("pipeline.stages.prepare", "COLMAP model + photos -> scene.h5 (undistort, views, depth ranges)"),
    "train": ("pipeline.stages.train", "self-supervised training or per-scene fine-tuning -> checkpoint"),
    "export-checkpoint": ("pipeline.stages.checkpoint_cmd", "strip a training checkpoint to weights + config for shipping"),
    "infer": ("pipeline.stages.infer", "scene.h5 + checkpoint -> depth.h5 (depth and confidence per view)"),
    "fuse": ("pipeline.stages.fuse", "depth.h5 -> fused.ply (geometric + photometric consistency)"),
    "pseudo-labels": ("pipeline.stages.labels", "depth.h5 + fused_masks.h5 -> self-training labels (the depth fusion kept)"),
    "evaluate": ("pipeline.stages.evaluate", "fused.ply / depth.h5 vs ground truth or sparse points -> eval.json"),
    "report": ("pipeline.stages.report", "pictures and an HTML page of a scene's results"),
    "config": ("pipeline.stages.config_cmd", "validate a config, fill defaults, write or print it"),
    "inspect": ("pipeline.stages.inspect", "print a readable summary of a selfmvs HDF5 file"),
    "export-mvsnet": ("pipeline.stages.mvsnet_io", "scene.h5 -> MVSNet layout (images/, cams/, pair.txt)"),
    "import-mvsnet": ("pipeline.stages.mvsnet_io", "MVSNet layout -> scene.h5"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selfmvs",
        description="Self-supervised multi-view stereo: photos registered by COLMAP in, "
        "depth maps, a fused point cloud and a report out. Each verb is one workflow stage.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, (_, help_text) in VERBS.items():
        sub.add_parser(verb, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Parse the global part first; the verb's own parser takes the rest.
    verb_index = next((i for i, a in enumerate(argv) if a in VERBS), None)
    if verb_index is None:
        if not argv or "-h" in argv or "--help" in argv:
            parser.print_help()
            return 0
        parser.parse_args(argv)  # reports the unknown verb or option and exits with status 2
        return 2
    global_args = parser.parse_args(argv[: verb_index + 1])
    verb = argv[verb_index]
    module_name, help_text = VERBS[verb]
    logging.basicConfig(
        level=logging.DEBUG if global_args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    module = importlib.import_module(module_name)
    verb_parser = argparse.ArgumentParser(prog=f"selfmvs {verb}", description=help_text)
    module.add_arguments(verb_parser, verb) if _takes_verb(module) else module.add_arguments(verb_parser)
    verb_args = verb_parser.parse_args(argv[verb_index + 1 :])
    verb_args.verb = verb
    try:
        return int(module.main(verb_args) or 0)
    except (ValueError, FileNotFoundError) as error:
        # Bad input is reported as one clear line, not a traceback from deep inside.
        logging.getLogger("selfmvs").debug("details", exc_info=True)
        print(f"selfmvs {verb}: error: {error}", file=sys.stderr)
        return 1


def _takes_verb(module) -> bool:
    import inspect

    return len(inspect.signature(module.add_arguments).parameters) == 2
