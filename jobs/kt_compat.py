"""Every place the job reaches into Keras Tuner beyond its public API, checked against the pinned version
(on an upgrade: re-check :data:`RELIED_ON` in the new source, then raise :data:`PINNED_VERSION`)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from importlib import metadata
from typing import Any

from jobs.errors import JobError, KerasTunerVersionError, SearchError

log = logging.getLogger(__name__)

PINNED_VERSION = "1.4.8"

# (module, attribute) pairs, and the Oracle attributes, that the job relies on and Keras Tuner does not
# document. Each is used only through a function of this module.
RELIED_ON: tuple[tuple[str, str], ...] = (
    ("keras_tuner.src.utils", "save_json"),  # looked up on the module at every call: patchable
    ("keras_tuner.src.distribute.oracle_client", "TIMEOUT"),  # every oracle call's deadline, no argument
    ("keras_tuner.src.distribute.oracle_chief", "OracleServicer"),
    ("keras_tuner.src.protos", "get_service"),
    ("keras_tuner.src.protos", "get_service_grpc"),
    ("keras_tuner.src.engine.trial", "Trial"),
    ("keras_tuner.src.engine.trial", "TrialStatus"),
    ("keras_tuner.src.config", "DEBUG"),  # True: every failed trial's traceback is printed to stderr
)
ORACLE_ATTRIBUTES = ("_retry_queue", "ongoing_trials", "trials", "end_order", "tuner_ids", "verbose")

_saved: dict[str, Any] = {}  # "save_json": Keras Tuner's own writer, once the atomic one is installed


def installed_version() -> str | None:
    try:
        return metadata.version("keras-tuner")
    except metadata.PackageNotFoundError:
        return None


def check_version() -> None:
    """Fail at start-up, before any search, when keras-tuner is not the version this module was checked on."""
    found = installed_version()
    if found != PINNED_VERSION:
        raise KerasTunerVersionError(
            f"keras-tuner {found or 'is not installed'}{' is installed' if found else ''}; the job is "
            f"checked against {PINNED_VERSION} and relies on its internals: re-check "
            f"{', '.join(f'{m}.{a}' for m, a in RELIED_ON)} and Oracle "
            f"{', '.join(ORACLE_ATTRIBUTES)} (jobs/kt_compat.py), then update PINNED_VERSION"
        )


def missing_internals() -> list[str]:
    """The names of :data:`RELIED_ON` and :data:`ORACLE_ATTRIBUTES` that the installed Keras Tuner lacks."""
    import importlib

    import keras_tuner as kt

    missing = []
    for module_name, attribute in RELIED_ON:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            missing.append(module_name)
            continue
        if not hasattr(module, attribute):
            missing.append(f"{module_name}.{attribute}")
    oracle = kt.oracles.RandomSearchOracle(objective=kt.Objective("score", "max"), max_trials=1)
    missing.extend(f"Oracle.{name}" for name in ORACLE_ATTRIBUTES if not hasattr(oracle, name))
    return missing


def check() -> None:
    """:func:`check_version` and :func:`missing_internals`: what a tuner needs before it is built."""
    check_version()
    missing = missing_internals()
    if missing:
        raise KerasTunerVersionError(f"keras-tuner lacks {', '.join(missing)} (see jobs/kt_compat.py)")


# --- the one fatal search condition -------------------------------------------------------------------

# Keras Tuner signals "too many consecutive failed trials" with a bare RuntimeError whose message starts so
# (Oracle._check_consecutive_failures); tests/jobs/test_jobs_kt_compat.py raises the real one.
CONSECUTIVE_FAILURES_MESSAGE = "Number of consecutive failures exceeded the limit"


def is_consecutive_failures(exc: BaseException) -> bool:
    """Whether ``exc`` is Keras Tuner's "consecutive failures exceeded the limit" (the search must stop)."""
    return isinstance(exc, RuntimeError) and str(exc).startswith(CONSECUTIVE_FAILURES_MESSAGE)


@contextlib.contextmanager
def search_failures() -> Iterator[None]:
    """Around a search (standalone ``tuner.search`` or the chief's serving loop), and only a search: Keras
    Tuner's fatal conditions become :class:`SearchError` (exit 4, the Job fails at once). Any other error,
    a ``RuntimeError`` from TensorFlow included, passes through unchanged."""
    import keras_tuner as kt

    try:
        yield
    except kt.errors.FatalError as exc:
        if isinstance(exc, JobError):  # e.g. a worker's lost chief: keeps its own exit code
            raise
        raise SearchError(f"fatal error in the search: {exc}") from exc
    except RuntimeError as exc:
        if not is_consecutive_failures(exc):
            raise
        raise SearchError(str(exc)) from exc


# --- atomic state files --------------------------------------------------------------------------------


def keras_tuner_save_json(path: str | os.PathLike[str], obj: Any) -> str:
    """Keras Tuner's own (in-place) ``save_json``, whether or not the atomic one is installed."""
    from keras_tuner.src import utils

    return _saved.get("save_json", utils.save_json)(path, obj)


def save_json_atomically(path: str | os.PathLike[str], obj: Any) -> str:
    """Keras Tuner's ``save_json``, made atomic: a process killed mid-write leaves the previous file.

    Keras Tuner rewrites its state (``oracle.json``, ``trial.json``, ``tuner0.json``) in place, so a
    SIGKILL between the truncation and the end of the write leaves a file the next run cannot reload.
    Here the JSON goes to a temporary file in the same directory, renamed over the old one (atomic on
    POSIX file systems, NFS included). Remote paths (``gs://``) keep Keras Tuner's own writer.
    """
    path = os.fspath(path)
    if "://" in path:
        return keras_tuner_save_json(path, obj)
    text = json.dumps(obj)
    descriptor, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(descriptor, "w") as file:
            os.fchmod(file.fileno(), 0o644)  # as open() would create it: other pods may read it
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return text


def install_atomic_save_json() -> None:
    """Make every Keras Tuner state write atomic in this process; called when a tuner is built."""
    from keras_tuner.src import utils

    if utils.save_json is save_json_atomically:
        return
    _saved["save_json"] = utils.save_json
    # Keras Tuner looks the function up on its utils module at every call (``utils.save_json(...)``).
    utils.save_json = save_json_atomically
    log.debug("Keras Tuner state files are written atomically")


def quiet_failed_trials() -> None:
    """Keep failed trials' tracebacks out of stderr (Keras Tuner prints them while ``config.DEBUG``); the
    job logs each failure's last line, and the whole traceback stays in the trial's ``trial.json``."""
    from keras_tuner.src import config

    config.DEBUG = False


def uninstall_atomic_save_json() -> None:
    """Put Keras Tuner's own writer back (tests compare the two)."""
    from keras_tuner.src import utils

    if "save_json" in _saved:
        utils.save_json = _saved["save_json"]


# --- distributed: the client's deadline, the oracle's retry queue, gRPC plumbing ------------------------


def set_rpc_timeout(seconds: float) -> None:
    """Keras Tuner waits up to a module constant (60 min) on every oracle call and takes no argument for it
    (keras-team/keras-tuner#990); a worker must give up sooner so that the Job restarts it."""
    from keras_tuner.src.distribute import oracle_client

    oracle_client.TIMEOUT = seconds


def requeue(oracle: Any, trial_id: str) -> None:
    """Have ``create_trial`` hand ``trial_id`` out next, as ``Oracle.reload()`` does for running trials."""
    oracle._retry_queue.append(trial_id)


def unqueue(oracle: Any, trial_id: str) -> bool:
    """Take ``trial_id`` off the retry queue; False if it was not queued."""
    if trial_id in oracle._retry_queue:
        oracle._retry_queue.remove(trial_id)
        return True
    return False


def oracle_servicer_class() -> type:
    from keras_tuner.src.distribute import oracle_chief

    return oracle_chief.OracleServicer


def service() -> Any:
    """The generated gRPC messages (``CreateTrialResponse``, ...)."""
    from keras_tuner.src import protos

    return protos.get_service()


def service_grpc() -> Any:
    from keras_tuner.src import protos

    return protos.get_service_grpc()


def trial_module() -> Any:
    """``keras_tuner.src.engine.trial`` (``Trial``, ``TrialStatus``)."""
    from keras_tuner.src.engine import trial

    return trial
