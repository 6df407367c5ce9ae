"""``python -m jobs`` is ``python -m jobs.tune``."""

import sys

from jobs.tune import main

sys.exit(main())
