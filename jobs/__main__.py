"""``python -m jobs`` is ``python -m jobs.tune``."""

import sys

from jobs.cli import main

sys.exit(main())
