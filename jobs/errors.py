"""The job's errors and exit codes: one table (read by the CLI, the docs test, the Job's podFailurePolicy);
each error class carries its code and :func:`jobs.cli.main` maps them in one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_DATA = 3
EXIT_SEARCH = 4
EXIT_EXPORT = 5
EXIT_DISTRIBUTED = 6
EXIT_INTERRUPTED = 130

Policy = Literal["", "FailJob", "retry"]


@dataclass(frozen=True)
class ExitCode:
    """One row of the table: the code, its short meaning, and what the Kubernetes Job does with it."""

    code: int
    meaning: str
    policy: Policy  # "" = success or not seen by a Job; FailJob = retrying cannot help; retry = backoffLimit


# The decision (docs/tuning.md, "Exit codes"): a failure that a rerun would repeat fails the Job at once
# (2, 3, 4); one that a rerun can get past is retried (5: the rerun exports without searching again;
# 6: the chief comes back or the wait succeeds; 130: a stopped pod).
EXIT_CODES: tuple[ExitCode, ...] = (
    ExitCode(EXIT_OK, "done", ""),
    ExitCode(EXIT_CONFIG, "bad config", "FailJob"),
    ExitCode(EXIT_DATA, "data error", "FailJob"),
    ExitCode(EXIT_SEARCH, "fatal search error", "FailJob"),
    ExitCode(EXIT_EXPORT, "export error", "retry"),
    ExitCode(EXIT_DISTRIBUTED, "distributed: chief unreachable or a wait timed out", "retry"),
    ExitCode(EXIT_INTERRUPTED, "interrupted", "retry"),
)
FAIL_JOB_CODES = tuple(row.code for row in EXIT_CODES if row.policy == "FailJob")


def describe_exit_codes() -> str:
    """One line for ``--help``: ``0 done, 2 bad config, ...``."""
    return "exit codes: " + ", ".join(f"{row.code} {row.meaning}" for row in EXIT_CODES)


class JobError(Exception):
    """A failure the job reports as one log line and its exit code (never a traceback)."""

    exit_code = 1
    label = "error"


class ConfigError(JobError):
    """The configuration is invalid; the message names the field and what is allowed."""

    exit_code = EXIT_CONFIG
    label = "bad configuration"


class RoleError(ConfigError):
    """The distributed environment variables contradict each other (a configuration error)."""


class DataError(JobError):
    """The data is missing, malformed or inconsistent; the message names the file or folder."""

    exit_code = EXIT_DATA
    label = "data error"


class SearchError(JobError):
    """The search cannot go on (fatal Keras Tuner error, too many failed trials, nothing scored)."""

    exit_code = EXIT_SEARCH
    label = "search failed"


class KerasTunerVersionError(SearchError):
    """The installed keras-tuner is not the one whose internals :mod:`jobs.kt_compat` was checked against."""


class ExportError(JobError):
    """The final model could not be published to the model repository."""

    exit_code = EXIT_EXPORT
    label = "export failed"


class DistributedError(JobError):
    """The chief is unreachable or a distributed wait timed out; the pod should be retried (exit 6)."""

    exit_code = EXIT_DISTRIBUTED
    label = "distributed search"
