"""Tools: the verbs that are not workflow stages -- ``inspect``, ``config``, ``export-checkpoint``,
``export-mvsnet`` / ``import-mvsnet``. Like the stages, each is a plain function a test can call;
the command line around them is :mod:`pipeline.cli`'s."""
