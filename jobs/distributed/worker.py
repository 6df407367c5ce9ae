"""The worker of a distributed search: Keras Tuner's oracle client with bounded, repeated calls and
heartbeats, and the trial loop that tells a lost chief (exit 6) from a failed search (exit 4)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
import keras_tuner

from jobs import kt_compat
from jobs.distributed.roles import DistributedConfig, Role, search_marked_done
from jobs.errors import DistributedError

log = logging.getLogger(__name__)


class ChiefUnreachableError(DistributedError, keras_tuner.errors.FatalError):
    """No answer to an oracle call; a ``FatalError``, so Keras Tuner re-raises it, not failing a trial."""


class ChiefError(keras_tuner.errors.FatalError):
    """The chief answered an oracle call with an error (its search failed): not worth a retry (exit 4)."""


# gRPC codes that mean "no chief to talk to" (retry the pod) rather than "the chief failed the call".
_UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)
RETRY_PAUSE_SECONDS = 0.5  # between attempts of an oracle call cut off by a lost connection


def wait_for_chief(target: str, timeout: float) -> bool:
    """True once a gRPC connection to ``target`` is ready, False after ``timeout`` seconds."""
    channel = grpc.insecure_channel(target)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
        return True
    except grpc.FutureTimeoutError:
        return False
    finally:
        channel.close()


class WorkerOracle:
    """Wraps Keras Tuner's ``OracleClient`` on a worker.

    - a call that was on the wire when the chief went away (UNAVAILABLE, e.g. "connection reset") is
      sent again until ``rpc_timeout_seconds`` have passed, unless the volume says the search is done;
      Keras Tuner's client sends with ``wait_for_ready``, so the next attempt waits for the restarted
      chief (every oracle call is safe to repeat: the chief treats a second ``create_trial`` from the
      same worker as a restart, ignores a result it already recorded, and a repeated metric adds the
      same value at the same step);
    - any other gRPC failure becomes :class:`ChiefUnreachableError`, so a lost chief stops the search
      instead of being recorded as a failed trial (keras-team/keras-tuner#915);
    - an IDLE answer waits ``poll_seconds`` before the search loop asks again (it would spin otherwise);
    - while a trial runs, a heartbeat (a ``GetTrial`` call) tells the chief its worker is alive.
    """

    def __init__(
        self,
        client: Any,
        settings: DistributedConfig,
        search_done: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client = client
        self._settings = settings
        self._search_done = search_done
        self._clock, self._sleep = clock, sleep  # the retry budget; tests drive both
        self._beat_stop: threading.Event | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        give_up = self._clock() + self._settings.rpc_timeout_seconds
        while True:
            try:
                return getattr(self._client, name)(*args, **kwargs)
            except grpc.RpcError as exc:
                if (
                    exc.code() is grpc.StatusCode.UNAVAILABLE
                    and self._clock() < give_up
                    and not self._search_done()
                ):
                    log.warning("oracle call %s: chief unavailable (%s); sending again", name, exc.details())
                    self._sleep(RETRY_PAUSE_SECONDS)
                    continue
                self._stop_heartbeat()
                message = f"oracle call {name} failed: {exc.code()} {exc.details()}"
                if exc.code() in _UNREACHABLE:
                    raise ChiefUnreachableError(message) from exc
                raise ChiefError(message) from exc

    def create_trial(self, tuner_id: str) -> Any:
        trial = self._call("create_trial", tuner_id)
        if trial.status == _status().IDLE:
            self._sleep(self._settings.poll_seconds)
        elif trial.status == _status().RUNNING:
            self._start_heartbeat(trial.trial_id)
        return trial

    def end_trial(self, trial: Any) -> None:
        self._stop_heartbeat()
        self._call("end_trial", trial)

    def update_trial(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("update_trial", *args, **kwargs)

    def get_trial(self, trial_id: str) -> Any:
        return self._call("get_trial", trial_id)

    def get_space(self) -> Any:
        return self._call("get_space")

    def update_space(self, hyperparameters: Any) -> None:
        self._call("update_space", hyperparameters)

    def get_best_trials(self, num_trials: int = 1) -> Any:
        return self._call("get_best_trials", num_trials)

    def _start_heartbeat(self, trial_id: str) -> None:
        self._stop_heartbeat()
        stop = threading.Event()
        self._beat_stop = stop

        def beat() -> None:
            while not stop.wait(self._settings.heartbeat_seconds):
                try:
                    self._client.get_trial(trial_id)
                except Exception as exc:  # the search loop notices a lost chief on its next call
                    log.debug("heartbeat for trial %s failed: %s", trial_id, exc)

        threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True).start()

    def _stop_heartbeat(self) -> None:
        if self._beat_stop is not None:
            self._beat_stop.set()
            self._beat_stop = None


def _caused_by_lost_chief(exc: BaseException | None) -> bool:
    while exc is not None:
        if isinstance(exc, ChiefUnreachableError):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def run_worker(tuner: Any, search: Callable[[], object], role: Role, settings: DistributedConfig) -> int:
    """Run trials for the chief until its oracle says the search is over; return the exit code (0).

    ``search`` runs ``tuner.search(...)``. A chief that cannot be reached, at the start or mid-search,
    means 0 when the shared volume says the search is done, else :class:`DistributedError` (exit 6).
    """
    project_dir = tuner.project_dir
    if not wait_for_chief(role.target, settings.connect_timeout_seconds):
        if search_marked_done(project_dir, settings.run_id):
            log.info("chief %s is gone and the search is marked done; nothing to do", role.target)
            return 0
        raise DistributedError(
            f"chief oracle at {role.target} not reachable within {settings.connect_timeout_seconds:g} s"
        )
    tuner.oracle = WorkerOracle(
        tuner.oracle, settings, lambda: search_marked_done(project_dir, settings.run_id)
    )
    log.info("worker %s connected to chief %s", role.tuner_id, role.target)
    try:
        search()
    except Exception as exc:
        if not _caused_by_lost_chief(exc):
            raise
        if search_marked_done(project_dir, settings.run_id):
            log.info("the chief went away after the search was done (%s)", exc)
            return 0
        raise DistributedError(f"lost the chief oracle at {role.target}: {exc}") from exc
    log.info("worker %s: the oracle says the search is over", role.tuner_id)
    return 0


def _status() -> Any:
    return kt_compat.trial_module().TrialStatus
