"""The chief (oracle server with leases) and the worker (trial loop with heartbeats) of a distributed search.

Built on Keras Tuner's own servicer and client; what it changes and why is in docs/distributed.md.
This module imports Keras Tuner and gRPC; the role logic that must load without them is in
:mod:`jobs.distributed`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent import futures
from pathlib import Path
from typing import Any, TypeVar

import grpc
import keras_tuner
from keras_tuner.src import protos
from keras_tuner.src.distribute import oracle_chief, oracle_client
from keras_tuner.src.engine import trial as trial_module

from jobs.distributed import (
    DONE_MARKER,
    ORACLE_STATE_FILE,
    DistributedConfig,
    DistributedError,
    Role,
    read_done_marker,
    search_marked_done,
    write_done_marker,
)
from jobs.pushmetrics import ProgressPusher, snapshot

log = logging.getLogger(__name__)

T = TypeVar("T")
BEST_METRIC = "val_accuracy"


class ChiefUnreachableError(DistributedError, keras_tuner.errors.FatalError):
    """No answer to an oracle call; a ``FatalError``, so Keras Tuner re-raises it, not failing a trial."""


class ChiefError(keras_tuner.errors.FatalError):
    """The chief answered an oracle call with an error (its search failed): not worth a retry (exit 4)."""


# gRPC codes that mean "no chief to talk to" (retry the pod) rather than "the chief failed the call".
_UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)
RETRY_PAUSE_SECONDS = 0.5  # between attempts of an oracle call cut off by a lost connection


# --- worker ---------------------------------------------------------------------------------------------


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
        self, client: Any, settings: DistributedConfig, search_done: Callable[[], bool] = lambda: False
    ) -> None:
        self._client = client
        self._settings = settings
        self._search_done = search_done
        self._beat_stop: threading.Event | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        give_up = time.monotonic() + self._settings.rpc_timeout_seconds
        while True:
            try:
                return getattr(self._client, name)(*args, **kwargs)
            except grpc.RpcError as exc:
                if (
                    exc.code() is grpc.StatusCode.UNAVAILABLE
                    and time.monotonic() < give_up
                    and not self._search_done()
                ):
                    log.warning("oracle call %s: chief unavailable (%s); sending again", name, exc.details())
                    time.sleep(RETRY_PAUSE_SECONDS)
                    continue
                self._stop_heartbeat()
                message = f"oracle call {name} failed: {exc.code()} {exc.details()}"
                if exc.code() in _UNREACHABLE:
                    raise ChiefUnreachableError(message) from exc
                raise ChiefError(message) from exc

    def create_trial(self, tuner_id: str) -> Any:
        trial = self._call("create_trial", tuner_id)
        if trial.status == trial_module.TrialStatus.IDLE:
            time.sleep(self._settings.poll_seconds)
        elif trial.status == trial_module.TrialStatus.RUNNING:
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
    # Keras Tuner waits up to this module constant (60 min) on every oracle call and takes no argument
    # for it; a worker must give up sooner so that the Job restarts it (keras-team/keras-tuner#990).
    oracle_client.TIMEOUT = settings.rpc_timeout_seconds
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


# --- chief: leases on running trials ----------------------------------------------------------------------


class _Leases:
    """When the chief last heard of each running trial, and how often each trial lost its worker."""

    def __init__(self) -> None:
        self.last_seen: dict[str, float] = {}
        self.losses: Counter[str] = Counter()

    def touch(self, trial_id: str) -> None:
        self.last_seen[trial_id] = time.monotonic()


def _finished(trial: Any) -> bool:
    return trial.status in (trial_module.TrialStatus.COMPLETED, trial_module.TrialStatus.FAILED)


@keras_tuner.synchronized
def _take_back(oracle: Any, tuner_id: str, leases: _Leases, max_losses: int, reason: str) -> None:
    """Hand the trial ``tuner_id`` was running out again, or fail it after ``max_losses`` losses.

    Keras Tuner has no public call for "this trial's worker is gone". We do what its own
    ``Oracle.reload()`` does with trials that were running when the process stopped: drop the trial
    from ``ongoing_trials`` and append its id to the private ``_retry_queue``, which ``create_trial``
    serves first. The private list is touched only here, in :func:`_accept_result` and in
    :func:`_restore_leases`.
    """
    trial = oracle.ongoing_trials.get(tuner_id)
    if trial is None:
        return
    leases.losses[trial.trial_id] += 1
    leases.last_seen.pop(trial.trial_id, None)
    if leases.losses[trial.trial_id] > max_losses:
        log.warning(
            "trial %s lost its worker %d times (%s): FAILED",
            trial.trial_id,
            leases.losses[trial.trial_id],
            reason,
        )
        trial.status = trial_module.TrialStatus.FAILED
        trial.message = f"lost its worker {leases.losses[trial.trial_id]} times; last: {reason}"
        oracle.end_trial(trial)  # records the failure, saves, drops it from ongoing_trials
        return
    log.warning("trial %s: %s; handing it out again", trial.trial_id, reason)
    oracle.ongoing_trials.pop(tuner_id)
    oracle._retry_queue.append(trial.trial_id)
    oracle.save()


@keras_tuner.synchronized
def _accept_result(oracle: Any, trial: Any, leases: _Leases) -> None:
    """Record a worker's result; if its trial had been re-queued meanwhile, it need not run again."""
    recorded = oracle.trials.get(trial.trial_id)
    if recorded is not None and _finished(recorded) and recorded.status == trial.status:
        # The same result sent again (the worker's first EndTrial was cut off by a chief restart).
        leases.last_seen.pop(trial.trial_id, None)
        log.info("trial %s: %s already recorded", trial.trial_id, trial.status)
        return
    if trial.trial_id in oracle._retry_queue:
        oracle._retry_queue.remove(trial.trial_id)
    oracle.end_trial(trial)
    leases.last_seen.pop(trial.trial_id, None)
    ended = oracle.trials[trial.trial_id]
    finished = sum(_finished(t) for t in oracle.trials.values())
    log.info(
        "trial %s %s, score %s (%d trials finished)", ended.trial_id, ended.status, ended.score, finished
    )


@keras_tuner.synchronized
def _restore_leases(oracle: Any, saved_ongoing: Mapping[str, str], leases: _Leases) -> None:
    """After a chief restart, leave running trials with their workers instead of re-queueing them.

    ``Oracle.reload()`` re-queues every trial that was running, but the workers of a restarted chief are
    usually still training those trials and will report them: re-queueing would run each twice. A trial
    whose worker really is gone comes back through the lease timeout.
    """
    for tuner_id, trial_id in saved_ongoing.items():
        if trial_id in oracle._retry_queue and trial_id in oracle.trials:
            oracle._retry_queue.remove(trial_id)
            oracle.ongoing_trials[tuner_id] = oracle.trials[trial_id]
            leases.touch(trial_id)
            log.info("trial %s stays with %s after the chief restart", trial_id, tuner_id)


@keras_tuner.synchronized
def _expire_leases(oracle: Any, leases: _Leases, settings: DistributedConfig, since: float) -> None:
    now = time.monotonic()
    for tuner_id, trial in list(oracle.ongoing_trials.items()):
        silent = now - leases.last_seen.get(trial.trial_id, since)
        if silent > settings.lease_timeout_seconds:
            reason = f"no word from worker {tuner_id} for {silent:.0f} s"
            _take_back(oracle, tuner_id, leases, settings.max_trial_losses, reason)


@keras_tuner.synchronized
def _state(oracle: Any) -> tuple[bool, int, int | None]:
    """(every recorded trial finished, trials running, trials the oracle may still create)."""
    trials = list(oracle.trials.values())
    return all(_finished(t) for t in trials), len(oracle.ongoing_trials), oracle.remaining_trials()


class _Servicer(oracle_chief.OracleServicer):
    """Keras Tuner's servicer plus leases: restarted workers, heartbeats, and no early STOPPED."""

    def __init__(self, oracle: Any, chief: ChiefServer) -> None:
        super().__init__(oracle)
        self.chief = chief

    def CreateTrial(self, request: Any, context: Any) -> Any:  # noqa: N802 (gRPC method name)
        self.chief.last_request = time.monotonic()
        trial = _hand_out(self.oracle, request.tuner_id, self.chief)
        return protos.get_service().CreateTrialResponse(trial=trial.to_proto())

    def GetTrial(self, request: Any, context: Any) -> Any:  # noqa: N802
        self.chief.leases.touch(request.trial_id)  # the worker's heartbeat
        return super().GetTrial(request, context)

    def EndTrial(self, request: Any, context: Any) -> Any:  # noqa: N802
        trial = trial_module.Trial.from_proto(request.trial)
        try:
            _accept_result(self.oracle, trial, self.chief.leases)
        except Exception as exc:  # e.g. too many consecutive failed trials: the search must stop
            self.chief.fatal = exc
            raise
        return protos.get_service().EndTrialResponse()


@keras_tuner.synchronized
def _hand_out(oracle: Any, tuner_id: str, chief: ChiefServer) -> Any:
    # A worker only asks for a trial after ending its last one; if it still holds one, it restarted.
    if tuner_id in oracle.ongoing_trials:
        reason = f"worker {tuner_id} restarted during the trial"
        _take_back(oracle, tuner_id, chief.leases, chief.settings.max_trial_losses, reason)
    trial = oracle.create_trial(tuner_id)
    if trial.status == trial_module.TrialStatus.STOPPED:
        chief.stop_triggered = True
        if not all(_finished(t) for t in oracle.trials.values()):
            # Keep the worker: a running trial may lose its worker and need another one.
            return trial_module.Trial(oracle.get_space(), status=trial_module.TrialStatus.IDLE)
    elif trial.status == trial_module.TrialStatus.RUNNING:
        chief.leases.touch(trial.trial_id)
    return trial


class ChiefServer:
    """The oracle over gRPC (one thread, as Keras Tuner's) with a main loop that bounds every wait."""

    def __init__(
        self, oracle: Any, role: Role, settings: DistributedConfig, pusher: ProgressPusher | None = None
    ) -> None:
        # Keras Tuner's console display keeps per-trial start times that a restarted chief may not have
        # reloaded (they are saved only after the trial was handed out): ending such a trial would
        # raise KeyError in the display. The chief logs trial results itself instead.
        oracle.verbose = 0
        self.oracle = oracle
        self.role = role
        self.settings = settings
        self.pusher = pusher
        self.leases = _Leases()
        self.stop_triggered = False
        self.fatal: Exception | None = None
        self.started = self.last_request = time.monotonic()
        self.port: int | None = None
        self._server: grpc.Server | None = None

    def start(self) -> int:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="oracle"))
        protos.get_service_grpc().add_OracleServicer_to_server(_Servicer(self.oracle, self), server)
        try:
            self.port = server.add_insecure_port(self.role.target)
        except RuntimeError as exc:
            raise DistributedError(f"cannot listen on {self.role.target}: {exc}") from exc
        server.start()
        self._server = server
        self.started = self.last_request = time.monotonic()
        log.info("chief oracle listening on %s (port %d)", self.role.target, self.port)
        return self.port

    def done(self, marked_done: bool = False) -> bool:
        finished, _, remaining = _state(self.oracle)
        return finished and (self.stop_triggered or remaining == 0 or (remaining is None and marked_done))

    def wait_until_done(self, marked_done: bool = False) -> None:
        """Serve until every trial has finished; raise DistributedError when no worker shows up."""
        while True:
            if self.fatal is not None:
                raise self.fatal
            _expire_leases(self.oracle, self.leases, self.settings, self.started)
            if self.pusher is not None:
                self.pusher.update(snapshot(self.oracle, BEST_METRIC))
            if self.done(marked_done):
                log.info("search done: every trial has finished")
                return
            _, running, _ = _state(self.oracle)
            idle = time.monotonic() - self.last_request
            if running == 0 and idle > self.settings.idle_timeout_seconds:
                raise DistributedError(f"no worker asked the chief for a trial in {idle:.0f} s")
            time.sleep(self.settings.poll_seconds)

    def stop(self, drain: bool = True) -> None:
        """Stop serving; with ``drain``, first give polling workers time to hear STOPPED."""
        if self._server is None:
            return
        deadline = time.monotonic() + (self.settings.shutdown_grace_seconds if drain else 0)
        while drain and self.oracle.tuner_ids and time.monotonic() < deadline:
            time.sleep(min(self.settings.poll_seconds, 0.2))
        self._server.stop(grace=1.0).wait()
        self._server = None
        log.info("chief oracle stopped")


def _saved_ongoing(project_dir: str | Path) -> dict[str, str]:
    """Which worker held which trial when the previous chief last saved (Keras Tuner's oracle.json)."""
    try:
        state = json.loads((Path(project_dir) / ORACLE_STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    ongoing = state.get("ongoing_trials", {})
    return {str(k): str(v) for k, v in ongoing.items()} if isinstance(ongoing, dict) else {}


def run_chief(
    tuner: Any,
    finalize: Callable[[], T],
    role: Role,
    settings: DistributedConfig,
    pusher: ProgressPusher | None = None,
) -> T | None:
    """Serve the oracle until the search is done, run ``finalize`` (fit, score, export), then stop.

    Returns ``finalize``'s result, or None when this Job's chief had already exported (a restart after
    the export): exactly one export per Job.
    """
    project_dir = tuner.project_dir
    marker = read_done_marker(project_dir)
    if settings.run_id and marker and marker.get("run_id") == settings.run_id and marker.get("finalized"):
        log.info("run %s was already finalized by an earlier chief; nothing to do", settings.run_id)
        return None
    server = ChiefServer(tuner.oracle, role, settings, pusher)
    _restore_leases(tuner.oracle, _saved_ongoing(project_dir), server.leases)
    # Writes oracle.json and chief.json; without chief.json a restarted chief would not reload the
    # search (keras-team/keras-tuner#976). Keras Tuner's own chief does the same before serving.
    tuner.save()
    marked = search_marked_done(project_dir, settings.run_id)
    if marker is not None and not server.done(marked):
        (Path(project_dir) / DONE_MARKER).unlink(missing_ok=True)  # stale: from a finished earlier search
        marked = False
    server.start()
    try:
        server.wait_until_done(marked)
        write_done_marker(project_dir, settings.run_id, finalized=False)
        result = finalize()
        write_done_marker(project_dir, settings.run_id, finalized=True)
        if pusher is not None:
            pusher.success()
    finally:
        server.stop(drain=server.fatal is None)
    return result
