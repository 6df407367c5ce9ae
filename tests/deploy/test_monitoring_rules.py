"""promtool: the alert rules' unit tests pass, the rules and the Prometheus config are valid."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support import REPO
from tests.support.tools import require_tools

MONITORING = REPO / "monitoring"


@pytest.fixture(autouse=True)
def _tools():
    require_tools("promtool")


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["promtool", *args], check=False, cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_alert_rule_unit_tests_pass() -> None:
    tests = sorted((MONITORING / "tests").glob("*.test.yml"))
    assert len(tests) == 2
    result = promtool("test", "rules", *map(str, tests))
    assert result.returncode == 0, result.stdout + result.stderr
    assert (result.stdout + result.stderr).count("SUCCESS") == len(tests)


def test_rules_are_valid() -> None:
    result = promtool("check", "rules", str(MONITORING / "rules" / "digits-alerts.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_config_is_valid(tmp_path: Path) -> None:
    # The config names its rule files by their in-container path: point them at the repository's copy.
    config = (MONITORING / "prometheus.yml").read_text()
    assert "/etc/prometheus/rules/*.yml" in config
    local = tmp_path / "prometheus.yml"
    local.write_text(config.replace("/etc/prometheus/rules/", f"{MONITORING / 'rules'}/"))
    result = promtool("check", "config", str(local))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rules found" not in result.stdout and "rules found" in result.stdout


def test_a_wrong_expectation_fails(tmp_path: Path) -> None:
    """The rule tests have teeth: flipping one expected alert label makes promtool fail."""
    original = (MONITORING / "tests" / "digits-alerts.test.yml").read_text()
    assert "instance: a, model: mnist}" in original
    broken = tmp_path / "broken.test.yml"
    broken.write_text(
        original.replace("instance: a, model: mnist}", "instance: b, model: mnist}", 1).replace(
            "../rules/digits-alerts.yml", str(MONITORING / "rules" / "digits-alerts.yml")
        )
    )
    assert promtool("test", "rules", str(broken)).returncode != 0
