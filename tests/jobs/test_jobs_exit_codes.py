"""One exit-code table (jobs/errors.py): the README's and docs/tuning.md's copies, the Job's
podFailurePolicy and --help agree with it, compared cell by cell (rewording prose around them breaks
nothing)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from jobs import errors
from jobs.cli import parse_args
from jobs.errors import EXIT_CODES, FAIL_JOB_CODES
from tests.support import REPO

CODES = [row.code for row in EXIT_CODES]
RETRIED = [row.code for row in EXIT_CODES if row.policy == "retry"]
HEADER = ["code", "meaning", "Kubernetes `podFailurePolicy`"]


def _exit_code_table(path: Path) -> list[list[str]]:
    """The body of the one Markdown table in ``path`` whose header is :data:`HEADER`, as cells."""
    tables: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in [*path.read_text().splitlines(), ""]:
        if line.startswith("|"):
            current.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif current:
            tables.append(current)
            current = []
    found = [table[2:] for table in tables if table[0] == HEADER]
    assert len(found) == 1, f"{path.name}: {len(found)} tables headed {HEADER}"
    return found[0]


def test_the_table_is_consistent() -> None:
    assert len(set(CODES)) == len(CODES)
    assert FAIL_JOB_CODES == (errors.EXIT_CONFIG, errors.EXIT_DATA, errors.EXIT_SEARCH)
    assert errors.EXIT_OK not in FAIL_JOB_CODES + tuple(RETRIED)
    for cls, code in [
        (errors.ConfigError, 2),
        (errors.RoleError, 2),
        (errors.DataError, 3),
        (errors.SearchError, 4),
        (errors.KerasTunerVersionError, 4),
        (errors.ExportError, 5),
        (errors.DistributedError, 6),
    ]:
        assert issubclass(cls, errors.JobError) and cls.exit_code == code and code in CODES


def test_the_readme_table_is_the_table() -> None:
    expected = [[str(row.code), row.meaning, row.policy] for row in EXIT_CODES]
    assert _exit_code_table(REPO / "README.md") == expected


def test_the_tuning_doc_table_is_the_table_with_longer_meanings() -> None:
    rows = _exit_code_table(REPO / "docs" / "tuning.md")
    assert [(code, policy) for code, _, policy in rows] == [(str(r.code), r.policy) for r in EXIT_CODES]
    for (code, meaning, _), row in zip(rows, EXIT_CODES, strict=True):
        assert meaning.startswith(row.meaning), f"docs/tuning.md: {code} says {meaning!r}"


def test_help_lists_every_code(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert errors.describe_exit_codes() in text


def test_the_jobs_pod_failure_policy_fails_exactly_the_fail_job_codes() -> None:
    docs = {doc["kind"]: doc for doc in yaml.safe_load_all((REPO / "k8s" / "tune-job.yaml").read_text())}
    rules = docs["Job"]["spec"]["podFailurePolicy"]["rules"]
    on_codes = [rule for rule in rules if "onExitCodes" in rule]
    assert [rule["action"] for rule in on_codes] == ["FailJob"]
    assert on_codes[0]["onExitCodes"]["operator"] == "In"
    assert on_codes[0]["onExitCodes"]["values"] == list(FAIL_JOB_CODES)
    # Everything else (retried codes included) falls through to backoffLimit: retried.
    assert not set(RETRIED) & set(on_codes[0]["onExitCodes"]["values"])
