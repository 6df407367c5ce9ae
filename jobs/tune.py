"""The tuning job's entry point: ``python -m jobs.tune --preset {seed,default,smoke} [...]`` (docs/tuning.md).

The command line is :mod:`jobs.cli`; the steps are :mod:`jobs.pipeline` (config -> data -> search -> final
fit -> export). The names below stay importable from here for scripts such as ``bench/tune_bench.py``.
"""

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
