"""How the job's entry points (the search, a Katib trial, promotion) log: one line format on stderr."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class Rfc3339Formatter(logging.Formatter):
    """:data:`FORMAT` with an RFC 3339 time first (``2026-12-07T14:45:26.802+00:00 INFO ...``): Katib's
    collector takes a line's first word as its time only in that form (else the zero time)."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


def setup(level: str = "INFO", *, rfc3339: bool = False) -> None:
    """Log at ``level`` (a name, any case) to stderr; ``rfc3339`` for lines a Katib collector reads."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(Rfc3339Formatter(FORMAT) if rfc3339 else logging.Formatter(FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
