"""``python -m psr``: the ``psr`` command line."""

import sys

from .cli import main

sys.exit(main())
