"""``python -m jobs.tune`` (docs/tuning.md): the entry point over :mod:`jobs.cli`; the step functions stay
importable from here for scripts such as ``bench/tune_bench.py``."""

from __future__ import annotations

import sys

from jobs.cli import main
from jobs.data import load_data
from jobs.errors import (
    EXIT_CONFIG,
    EXIT_DATA,
    EXIT_EXPORT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SEARCH,
    ExportError,
    SearchError,
)
from jobs.pipeline import FinalResult, finalize, run, run_role
from jobs.runtime import output_paths, setup_runtime
from jobs.search import build_tuner, run_search

__all__ = [
    "EXIT_CONFIG",
    "EXIT_DATA",
    "EXIT_EXPORT",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_SEARCH",
    "ExportError",
    "FinalResult",
    "SearchError",
    "build_tuner",
    "finalize",
    "load_data",
    "main",
    "output_paths",
    "run",
    "run_role",
    "run_search",
    "setup_runtime",
]

if __name__ == "__main__":
    sys.exit(main())
