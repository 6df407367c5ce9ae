"""One exit-code table (jobs/errors.py): the docs, the README, the Job's podFailurePolicy and --help agree."""

from __future__ import annotations

import re

import yaml

from jobs import errors
from jobs.errors import EXIT_CODES, FAIL_JOB_CODES
from tests.support import REPO

CODES = [row.code for row in EXIT_CODES]
RETRIED = [row.code for row in EXIT_CODES if row.policy == "retry"]


def _numbers(text: str) -> list[int]:
    """``2, 3 and 4`` -> [2, 3, 4]."""
    return [int(n) for n in re.findall(r"\d+", text)]


def _code_list(text: str) -> dict[int, str]:
    """``0 done, 2 bad config, ...`` (or with ``;``) up to the first full stop -> {code: meaning}."""
    listing = text.split(". ", 1)[0].rstrip(".")
    separator = ";" if ";" in listing else ","
    pairs = [item.strip().split(" ", 1) for item in listing.split(separator)]
    return {int(code): meaning.strip() for code, meaning in pairs}


def _policy_sentences(text: str) -> tuple[list[int], list[int]]:
    fail = re.search(r"([\d, and]+) fail the Job at once", text)
    retried = re.search(r"([\d, and]+) are retried", text)
    assert fail and retried, f"no 'fail the Job at once' / 'are retried' sentence in: {text}"
    return _numbers(fail.group(1)), _numbers(retried.group(1))


def _assert_matches_table(listed: dict[int, str], where: str) -> None:
    assert list(listed) == CODES, f"{where} lists {list(listed)}, jobs/errors.py has {CODES}"
    for row in EXIT_CODES:
        assert listed[row.code].startswith(row.meaning), f"{where}: {row.code} says {listed[row.code]!r}"


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


def test_tuning_doc_table_matches() -> None:
    text = (REPO / "docs" / "tuning.md").read_text()
    section = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if re.match(r"\| \d+ \|", line)]
    listed = {int(code): meaning.strip() for code, meaning, _ in rows}
    _assert_matches_table(listed, "docs/tuning.md")
    policies = {int(code): policy.strip() for code, _, policy in rows}
    assert policies == {row.code: row.policy for row in EXIT_CODES}


def test_interfaces_doc_matches() -> None:
    text = (REPO / "docs" / "interfaces.md").read_text()
    line = re.search(r"^- Exit codes[^:]*: (.*?)(?=^- |^$)", text, re.M | re.S)
    assert line, "docs/interfaces.md has no '- Exit codes' item"
    item = " ".join(line.group(1).split())
    _assert_matches_table(_code_list(item), "docs/interfaces.md")
    assert _policy_sentences(item) == (list(FAIL_JOB_CODES), RETRIED)


def test_readme_bullet_matches() -> None:
    text = (REPO / "README.md").read_text()
    decisions = text.split("## Decisions", 1)[1].split("\n## ", 1)[0]
    bullet = re.search(r"^- \*\*Exit codes\*\*[^:]*: (.*?)(?=^- |\Z)", decisions, re.M | re.S)
    assert bullet, "README.md: no '**Exit codes**' bullet under '## Decisions'"
    item = " ".join(bullet.group(1).split())
    _assert_matches_table(_code_list(item), "README.md")
    assert _policy_sentences(item) == (list(FAIL_JOB_CODES), RETRIED)


def test_the_jobs_pod_failure_policy_fails_exactly_the_fail_job_codes() -> None:
    docs = {doc["kind"]: doc for doc in yaml.safe_load_all((REPO / "k8s" / "tune-job.yaml").read_text())}
    rules = docs["Job"]["spec"]["podFailurePolicy"]["rules"]
    on_codes = [rule for rule in rules if "onExitCodes" in rule]
    assert [rule["action"] for rule in on_codes] == ["FailJob"]
    assert on_codes[0]["onExitCodes"]["operator"] == "In"
    assert on_codes[0]["onExitCodes"]["values"] == list(FAIL_JOB_CODES)
    # Everything else (retried codes included) falls through to backoffLimit: retried.
    assert not set(RETRIED) & set(on_codes[0]["onExitCodes"]["values"])
