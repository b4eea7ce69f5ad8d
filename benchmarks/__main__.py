"""``python -m benchmarks`` (from a checkout): see ``benchmarks.cli``."""

import sys

from benchmarks.cli import main

sys.exit(main())
