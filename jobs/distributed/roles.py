"""Distributed tuning without heavy imports: the config section, the role (chief, worker, standalone) and
the done marker on the shared volume. The chief and the worker are :mod:`.chief` and :mod:`.worker`."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from jobs.errors import RoleError

log = logging.getLogger(__name__)

TUNER_ID_ENV = "KERASTUNER_TUNER_ID"
ORACLE_IP_ENV = "KERASTUNER_ORACLE_IP"
ORACLE_PORT_ENV = "KERASTUNER_ORACLE_PORT"
INDEX_ENV = "JOB_COMPLETION_INDEX"
CHIEF_ID = "chief"
DONE_MARKER = "search_done.json"


class DistributedConfig(BaseModel):
    """The ``distributed`` config section (env ``TUNE_DISTRIBUTED__<FIELD>``); every wait is bounded here."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    service: str | None = None  # headless Service of the Indexed Job; with JOB_COMPLETION_INDEX -> roles
    job_name: str | None = None  # the Job's name; None = HOSTNAME without its "-<index>" suffix
    port: int = Field(default=8470, ge=1, le=65535)  # the chief's oracle port inside the cluster
    run_id: str | None = None  # one id per Job (its UID): a restarted chief that already exported exits 0
    connect_timeout_seconds: float = Field(default=900.0, gt=0)  # worker start: wait for the chief
    rpc_timeout_seconds: float = Field(default=600.0, gt=0)  # each oracle call (a chief restart fits in)
    heartbeat_seconds: float = Field(default=15.0, gt=0)  # worker -> chief while a trial runs
    lease_timeout_seconds: float = Field(default=180.0, gt=0)  # silent worker: its trial is handed out again
    max_trial_losses: int = Field(default=3, ge=0)  # a trial that lost its worker more often is FAILED
    idle_timeout_seconds: float = Field(default=1800.0, gt=0)  # chief: no worker asked for work -> exit 6
    poll_seconds: float = Field(default=1.0, gt=0)  # worker's pause after IDLE; chief's check interval
    shutdown_grace_seconds: float = Field(default=15.0, ge=0)  # chief answers STOPPED this long at the end

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> DistributedConfig:
        # One late heartbeat must not cost a live worker its trial.
        if self.heartbeat_seconds * 2 > self.lease_timeout_seconds:
            raise ValueError(
                f"heartbeat_seconds ({self.heartbeat_seconds:g}) must be at most half of "
                f"lease_timeout_seconds ({self.lease_timeout_seconds:g})"
            )
        return self


@dataclass(frozen=True)
class Role:
    """What this process is in the search, and where the chief's oracle listens."""

    kind: Literal["standalone", "chief", "worker"]
    tuner_id: str | None = None
    oracle_host: str | None = None  # chief: bind address; worker: the chief's host name or IP
    oracle_port: int | None = None
    source: Literal["none", "environment", "kubernetes"] = "none"

    @property
    def distributed(self) -> bool:
        return self.kind != "standalone"

    @property
    def target(self) -> str:
        return f"{self.oracle_host}:{self.oracle_port}"

    def environment(self) -> dict[str, str]:
        """The standard Keras Tuner variables for this role (empty when standalone)."""
        if not self.distributed:
            return {}
        return {
            TUNER_ID_ENV: str(self.tuner_id),
            ORACLE_IP_ENV: str(self.oracle_host),
            ORACLE_PORT_ENV: str(self.oracle_port),
        }


def _port(text: str, name: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise RoleError(f"{name}={text!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise RoleError(f"{name}={port} is outside 1..65535")
    return port


def resolve_role(environ: Mapping[str, str], settings: DistributedConfig) -> Role:
    """The role from the standard Keras Tuner variables, else from the Indexed Job, else standalone.

    Keras Tuner's convention: an id containing "chief" runs the oracle, any other id is a worker.
    In an Indexed Job (``JOB_COMPLETION_INDEX`` and ``settings.service`` set) index 0 is the chief,
    listening on all interfaces; index i is worker ``tuner<i>`` and reaches the chief through the
    stable host name ``<job-name>-0.<service>`` that the headless Service gives pod 0.
    """
    given = {name: environ.get(name, "") for name in (TUNER_ID_ENV, ORACLE_IP_ENV, ORACLE_PORT_ENV)}
    if any(given.values()):
        missing = [name for name, value in given.items() if not value]
        if missing:
            raise RoleError(
                f"distributed tuning needs {TUNER_ID_ENV}, {ORACLE_IP_ENV} and {ORACLE_PORT_ENV} together; "
                f"missing: {', '.join(missing)}"
            )
        tuner_id = given[TUNER_ID_ENV]
        port = _port(given[ORACLE_PORT_ENV], ORACLE_PORT_ENV)
        kind = "chief" if CHIEF_ID in tuner_id else "worker"
        return Role(kind, tuner_id, given[ORACLE_IP_ENV], port, "environment")

    index_text = environ.get(INDEX_ENV, "")
    if not index_text or not settings.service:
        return Role("standalone")
    try:
        index = int(index_text)
    except ValueError:
        raise RoleError(f"{INDEX_ENV}={index_text!r} is not an integer") from None
    if index < 0:
        raise RoleError(f"{INDEX_ENV}={index} is negative")
    if index == 0:
        return Role("chief", CHIEF_ID, "0.0.0.0", settings.port, "kubernetes")
    job_name = settings.job_name
    if not job_name:
        hostname = environ.get("HOSTNAME", "")
        suffix = f"-{index}"
        if not hostname.endswith(suffix) or len(hostname) == len(suffix):
            raise RoleError(
                f"cannot derive the Job name from HOSTNAME={hostname!r} (expected '<job-name>{suffix}'); "
                "set TUNE_DISTRIBUTED__JOB_NAME"
            )
        job_name = hostname[: -len(suffix)]
    return Role("worker", f"tuner{index}", f"{job_name}-0.{settings.service}", settings.port, "kubernetes")


def apply_role(role: Role, environ: os._Environ[str] | dict[str, str] = os.environ) -> None:
    """Export the role as Keras Tuner's variables; call before the tuner is built (it reads them then)."""
    for name in (TUNER_ID_ENV, ORACLE_IP_ENV, ORACLE_PORT_ENV):
        environ.pop(name, None)
    environ.update(role.environment())


# --- the done marker on the shared volume -------------------------------------------------------------


def _marker(project_dir: str | Path) -> Path:
    return Path(project_dir) / DONE_MARKER


def read_done_marker(project_dir: str | Path) -> dict[str, Any] | None:
    try:
        return json.loads(_marker(project_dir).read_text())
    except (OSError, ValueError):
        return None


def write_done_marker(project_dir: str | Path, run_id: str | None, finalized: bool) -> None:
    """Record on the shared volume that the search (and, with ``finalized``, the export) is done."""
    path = _marker(project_dir)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"run_id": run_id or "", "finalized": finalized, "time": time.time()}))
    os.replace(tmp, path)  # atomic: a worker never reads half a marker


def search_marked_done(project_dir: str | Path, run_id: str | None) -> bool:
    marker = read_done_marker(project_dir)
    return marker is not None and marker.get("run_id", "") == (run_id or "")
