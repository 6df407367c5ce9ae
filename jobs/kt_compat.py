"""Every place the job reaches into Keras Tuner beyond its public API, checked against the pinned version
(on an upgrade: re-check :data:`RELIED_ON` and :data:`ORACLE_ATTRIBUTES` in the new source, then raise
:data:`PINNED_VERSION`).

- :class:`OracleAdapter`: every read and write of an Oracle's state that is not public API (the trials a
  tuner holds, the retry queue, the connected tuner ids, quiet mode, the saved ``oracle.json``).
- :func:`patched`: the process-wide patches (atomic state writes, no traceback printing, the oracle
  client's deadline), applied on entry and undone on exit; the job enters it once (:mod:`jobs.pipeline`).
- :func:`search_failures`: the one place Keras Tuner's fatal conditions become exit 4.
- The gRPC servicer class, messages and the ``Trial`` module the chief and the worker use.
"""

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
# Oracle attributes read or written by OracleAdapter only.
ORACLE_ATTRIBUTES = ("_retry_queue", "ongoing_trials", "trials", "tuner_ids", "verbose")
ORACLE_STATE_FILE = "oracle.json"  # the Oracle's saved state in the project directory (Oracle.save)


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


_saved: dict[str, Any] = {}  # "save_json": Keras Tuner's own writer while :func:`patched` is active


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


@contextlib.contextmanager
def patched(rpc_timeout_seconds: float | None = None) -> Iterator[None]:
    """Keras Tuner's process-wide globals, patched while the job runs and restored on exit.

    - ``utils.save_json`` becomes :func:`save_json_atomically` (Keras Tuner looks it up on its module at
      every call, so every state file it writes goes through it);
    - ``config.DEBUG`` is False: Keras Tuner would print every failed trial's traceback to stderr; the job
      logs its last line and ``trial.json`` keeps the whole one;
    - with ``rpc_timeout_seconds``, ``oracle_client.TIMEOUT``: Keras Tuner waits up to this module constant
      (60 min) on every oracle call and takes no argument for it (keras-team/keras-tuner#990); a worker
      must give up sooner so that the Job restarts it.

    Checks the pinned version and every internal first (:func:`check`).
    """
    from keras_tuner.src import config, utils
    from keras_tuner.src.distribute import oracle_client

    check()
    saved = (utils.save_json, config.DEBUG, oracle_client.TIMEOUT)
    nested = utils.save_json is save_json_atomically  # entered again inside itself: keep the original
    if not nested:
        _saved["save_json"] = utils.save_json
    utils.save_json = save_json_atomically
    config.DEBUG = False
    if rpc_timeout_seconds is not None:
        oracle_client.TIMEOUT = rpc_timeout_seconds
    log.debug("Keras Tuner patched (atomic writes, quiet failures, rpc timeout %s)", rpc_timeout_seconds)
    try:
        yield
    finally:
        utils.save_json, config.DEBUG, oracle_client.TIMEOUT = saved
        if not nested:
            _saved.pop("save_json", None)


# --- the Oracle's non-public state --------------------------------------------------------------------


class OracleAdapter:
    """Every read and write of a Keras Tuner Oracle's state beyond its public methods.

    Keras Tuner has no public call for "this trial's worker is gone" or "this trial stays with its
    worker"; the adapter does what ``Oracle.reload()`` does with trials that were running when the process
    stopped (drop them from ``ongoing_trials``, append their ids to the private ``_retry_queue``, which
    ``create_trial`` serves first). It holds no state of its own; callers that run beside the oracle's gRPC
    thread hold the oracle's lock (``keras_tuner.synchronized`` on a function whose first argument is the
    oracle), as :mod:`jobs.distributed.chief` does.
    """

    def __init__(self, oracle: Any) -> None:
        self.oracle = oracle

    # reads
    def trials(self) -> list[Any]:
        """Every trial the oracle has recorded (a copy of the list)."""
        return list(self.oracle.trials.values())

    def trial(self, trial_id: str) -> Any | None:
        return self.oracle.trials.get(trial_id)

    def running(self) -> dict[str, Any]:
        """``{tuner_id: trial}`` for every trial handed out and not ended (a copy)."""
        return dict(self.oracle.ongoing_trials)

    def running_trial(self, tuner_id: str) -> Any | None:
        return self.oracle.ongoing_trials.get(tuner_id)

    def connected_tuners(self) -> set[str]:
        """Tuner ids that asked for a trial and were not yet told STOPPED."""
        return set(self.oracle.tuner_ids)

    # writes
    def quiet(self) -> None:
        """Turn Keras Tuner's console display off. On a chief it keeps per-trial start times that a
        restarted chief may not have reloaded, and ending such a trial raised KeyError."""
        self.oracle.verbose = 0

    def requeue(self, trial_id: str) -> None:
        """Have ``create_trial`` hand ``trial_id`` out next, as ``Oracle.reload()`` does."""
        self.oracle._retry_queue.append(trial_id)

    def unqueue(self, trial_id: str) -> bool:
        """Take ``trial_id`` off the retry queue; False if it was not queued."""
        if trial_id in self.oracle._retry_queue:
            self.oracle._retry_queue.remove(trial_id)
            return True
        return False

    def reassign(self, tuner_id: str) -> Any | None:
        """Take the trial ``tuner_id`` holds away from it and queue it for the next ``create_trial``; returns
        that trial (None if the tuner held none). The caller saves the oracle."""
        trial = self.oracle.ongoing_trials.pop(tuner_id, None)
        if trial is not None:
            self.requeue(trial.trial_id)
        return trial

    def keep_with(self, tuner_id: str, trial_id: str) -> bool:
        """Leave a trial that ``reload()`` queued again with the tuner that was running it; False if the
        trial is unknown or was not queued (it finished, or another tuner has it)."""
        if trial_id in self.oracle.trials and self.unqueue(trial_id):
            self.oracle.ongoing_trials[tuner_id] = self.oracle.trials[trial_id]
            return True
        return False

    @staticmethod
    def handed_out_before(project_dir: str | os.PathLike[str]) -> dict[str, str]:
        """``{tuner_id: trial_id}`` the oracle had handed out when it was last saved in ``project_dir``
        (``oracle.json``), read before ``reload()`` re-queues them; empty if there is no readable state."""
        try:
            with open(os.path.join(os.fspath(project_dir), ORACLE_STATE_FILE)) as file:
                state = json.load(file)
        except (OSError, ValueError):
            return {}
        ongoing = state.get("ongoing_trials", {}) if isinstance(state, dict) else {}
        return {str(k): str(v) for k, v in ongoing.items()} if isinstance(ongoing, dict) else {}


# --- distributed: gRPC plumbing ------------------------------------------------------------------------


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
