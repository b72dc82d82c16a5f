"""Stages: one module per workflow rule, each a thin adapter ``run_<stage>(inputs, outputs, config)``
that a test can call. The command line that calls them is :mod:`pipeline.cli`'s; a stage imports
torch and the other heavy libraries inside its function, so that ``selfmvs --help`` stays fast."""
