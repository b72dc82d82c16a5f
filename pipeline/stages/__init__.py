"""Stages: one module per workflow rule, each exposing a plain function ``run_<stage>(...)`` that a
test can call, plus ``add_arguments(parser)`` / ``main(args)`` used by :mod:`pipeline.cli`."""
