"""``python -m jobs.tune`` (docs/tuning.md): the job's entry point; everything is in :mod:`jobs.cli`."""

from __future__ import annotations

import sys

from jobs.cli import main

if __name__ == "__main__":
    sys.exit(main())
