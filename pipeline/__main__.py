"""``python -m pipeline`` is the ``selfmvs`` command."""

import sys

from pipeline.cli import main

sys.exit(main())
