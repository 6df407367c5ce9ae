"""Role resolution: the standard Keras Tuner variables, the Indexed Job's index and host names, standalone."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from jobs.config import ConfigError, load_config
from jobs.distributed.roles import (
    DistributedConfig,
    Role,
    apply_role,
    read_done_marker,
    resolve_role,
    search_marked_done,
    write_done_marker,
)
from jobs.errors import RoleError

K8S = DistributedConfig(service="mnist-tune", port=8470)


def test_no_variables_means_standalone() -> None:
    role = resolve_role({"HOSTNAME": "laptop"}, K8S)
    assert role == Role("standalone")
    assert not role.distributed
    assert role.environment() == {}


def test_index_without_service_is_standalone() -> None:
    # A plain Indexed Job (or a one-pod Job) without the headless Service stays a lone search.
    assert resolve_role({"JOB_COMPLETION_INDEX": "0"}, DistributedConfig()).kind == "standalone"


@pytest.mark.parametrize(
    ("tuner_id", "kind"),
    [("chief", "chief"), ("chief-a", "chief"), ("tuner0", "worker"), ("tuner7", "worker")],
)
def test_standard_variables_pick_the_role(tuner_id: str, kind: str) -> None:
    env = {
        "KERASTUNER_TUNER_ID": tuner_id,
        "KERASTUNER_ORACLE_IP": "10.0.0.5",
        "KERASTUNER_ORACLE_PORT": "9000",
    }
    role = resolve_role({**env, "JOB_COMPLETION_INDEX": "3"}, K8S)  # explicit variables win
    assert (role.kind, role.tuner_id, role.target, role.source) == (
        kind,
        tuner_id,
        "10.0.0.5:9000",
        "environment",
    )
    assert role.environment() == env


@pytest.mark.parametrize("missing", ["KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"])
def test_partial_standard_variables_are_an_error_naming_the_missing_one(missing: str) -> None:
    env = {
        "KERASTUNER_TUNER_ID": "tuner1",
        "KERASTUNER_ORACLE_IP": "10.0.0.5",
        "KERASTUNER_ORACLE_PORT": "9000",
    }
    del env[missing]
    with pytest.raises(RoleError, match=missing):
        resolve_role(env, K8S)


@pytest.mark.parametrize("port", ["http", "0", "70000"])
def test_bad_port_is_an_error(port: str) -> None:
    env = {"KERASTUNER_TUNER_ID": "tuner1", "KERASTUNER_ORACLE_IP": "h", "KERASTUNER_ORACLE_PORT": port}
    with pytest.raises(RoleError, match="KERASTUNER_ORACLE_PORT"):
        resolve_role(env, K8S)


def test_index_zero_is_the_chief_listening_on_all_interfaces() -> None:
    role = resolve_role({"JOB_COMPLETION_INDEX": "0", "HOSTNAME": "mnist-tune-0"}, K8S)
    assert (role.kind, role.tuner_id, role.target, role.source) == (
        "chief",
        "chief",
        "0.0.0.0:8470",
        "kubernetes",
    )


@pytest.mark.parametrize(("index", "hostname"), [("1", "mnist-tune-1"), ("12", "my-run-2-12")])
def test_other_indexes_are_workers_that_reach_pod_zero_through_the_service(index: str, hostname: str) -> None:
    role = resolve_role({"JOB_COMPLETION_INDEX": index, "HOSTNAME": hostname}, K8S)
    job = hostname.rsplit("-", 1)[0]
    assert role.kind == "worker"
    assert role.tuner_id == f"tuner{index}"
    assert role.target == f"{job}-0.mnist-tune:8470"


def test_job_name_setting_overrides_the_hostname() -> None:
    settings = DistributedConfig(service="svc", job_name="search", port=1234)
    role = resolve_role({"JOB_COMPLETION_INDEX": "2", "HOSTNAME": "whatever"}, settings)
    assert role.target == "search-0.svc:1234"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"JOB_COMPLETION_INDEX": "x", "HOSTNAME": "j-x"}, "not an integer"),
        ({"JOB_COMPLETION_INDEX": "-1", "HOSTNAME": "j--1"}, "negative"),
        ({"JOB_COMPLETION_INDEX": "2", "HOSTNAME": "mnist-tune-3"}, "HOSTNAME"),
        ({"JOB_COMPLETION_INDEX": "2"}, "TUNE_DISTRIBUTED__JOB_NAME"),
    ],
)
def test_unusable_index_or_hostname_is_an_error(env: dict[str, str], message: str) -> None:
    with pytest.raises(RoleError, match=message):
        resolve_role(env, K8S)


def test_apply_role_sets_and_clears_the_keras_tuner_variables() -> None:
    environ = {"KERASTUNER_TUNER_ID": "old", "KERASTUNER_ORACLE_IP": "old", "OTHER": "kept"}
    worker = Role("worker", "tuner2", "mnist-tune-0.mnist-tune", 8470, "kubernetes")
    apply_role(worker, environ)
    assert environ == {
        "KERASTUNER_TUNER_ID": "tuner2",
        "KERASTUNER_ORACLE_IP": "mnist-tune-0.mnist-tune",
        "KERASTUNER_ORACLE_PORT": "8470",
        "OTHER": "kept",
    }
    apply_role(Role("standalone"), environ)
    assert environ == {"OTHER": "kept"}


def test_distributed_section_comes_from_the_environment() -> None:
    config = load_config(
        "smoke",
        environ={"TUNE_DISTRIBUTED__SERVICE": "svc", "TUNE_DISTRIBUTED__LEASE_TIMEOUT_SECONDS": "30"},
    )
    assert config.distributed.service == "svc"
    assert config.distributed.lease_timeout_seconds == 30
    with pytest.raises(ConfigError, match="distributed.rpc_timeout_seconds"):
        load_config("smoke", environ={"TUNE_DISTRIBUTED__RPC_TIMEOUT_SECONDS": "0"})
    with pytest.raises(ConfigError, match="heartbeat_seconds .* at most half of lease_timeout_seconds"):
        load_config("smoke", environ={"TUNE_DISTRIBUTED__HEARTBEAT_SECONDS": "100"})


def test_done_marker_is_scoped_to_the_run(tmp_path) -> None:
    assert read_done_marker(tmp_path) is None
    assert not search_marked_done(tmp_path, "job-a")
    write_done_marker(tmp_path, "job-a", finalized=False)
    assert search_marked_done(tmp_path, "job-a")
    assert not search_marked_done(tmp_path, "job-b")  # a marker left by an earlier Job does not count
    write_done_marker(tmp_path, "job-a", finalized=True)
    assert read_done_marker(tmp_path)["finalized"] is True
    assert [p.name for p in tmp_path.iterdir()] == ["search_done.json"]  # no temporary file left behind


def test_the_job_exits_2_on_inconsistent_distributed_variables(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KERASTUNER_", "TUNE_"))}
    env.update(KERASTUNER_TUNER_ID="tuner1", KERASTUNER_ORACLE_IP="127.0.0.1", TUNE_OUTPUT=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-m", "jobs.tune", "--preset", "smoke"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "missing: KERASTUNER_ORACLE_PORT" in result.stderr
    assert not any(tmp_path.iterdir())  # failed before touching the output
