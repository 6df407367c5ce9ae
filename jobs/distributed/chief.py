"""The chief of a distributed search: Keras Tuner's oracle over gRPC plus leases on running trials, on an
injectable clock (docs/distributed.md says what it changes in Keras Tuner and why)."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent import futures
from pathlib import Path
from typing import Any, TypeVar

import grpc
import keras_tuner

from jobs import kt_compat
from jobs.distributed.roles import (
    DONE_MARKER,
    DistributedConfig,
    Role,
    read_done_marker,
    search_marked_done,
    write_done_marker,
)
from jobs.errors import DistributedError
from jobs.pushmetrics import ProgressPusher, snapshot

log = logging.getLogger(__name__)

T = TypeVar("T")
BEST_METRIC = "val_accuracy"
Clock = Callable[[], float]
_trial = kt_compat.trial_module()  # Trial, TrialStatus
Adapter = kt_compat.OracleAdapter


class Leases:
    """When the chief last heard of each running trial (by ``clock``), and how often each lost its worker."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self.last_seen: dict[str, float] = {}
        self.losses: Counter[str] = Counter()

    def touch(self, trial_id: str) -> None:
        self.last_seen[trial_id] = self.clock()


def _finished(trial: Any) -> bool:
    return trial.status in (_trial.TrialStatus.COMPLETED, _trial.TrialStatus.FAILED)


@keras_tuner.synchronized
def _take_back(oracle: Any, tuner_id: str, leases: Leases, max_losses: int, reason: str) -> None:
    """Hand the trial ``tuner_id`` was running out again, or fail it after ``max_losses`` losses.

    Keras Tuner has no public call for "this trial's worker is gone": :meth:`OracleAdapter.reassign` does
    what its own ``Oracle.reload()`` does with trials that were running when the process stopped.
    """
    adapter = Adapter(oracle)
    trial = adapter.running_trial(tuner_id)
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
        trial.status = _trial.TrialStatus.FAILED
        trial.message = f"lost its worker {leases.losses[trial.trial_id]} times; last: {reason}"
        oracle.end_trial(trial)  # records the failure, saves, drops it from ongoing_trials
        return
    log.warning("trial %s: %s; handing it out again", trial.trial_id, reason)
    adapter.reassign(tuner_id)
    oracle.save()


@keras_tuner.synchronized
def _accept_result(oracle: Any, trial: Any, leases: Leases) -> None:
    """Record a worker's result; if its trial had been re-queued meanwhile, it need not run again."""
    adapter = Adapter(oracle)
    recorded = adapter.trial(trial.trial_id)
    if recorded is not None and _finished(recorded) and recorded.status == trial.status:
        # The same result sent again (the worker's first EndTrial was cut off by a chief restart).
        leases.last_seen.pop(trial.trial_id, None)
        log.info("trial %s: %s already recorded", trial.trial_id, trial.status)
        return
    adapter.unqueue(trial.trial_id)
    oracle.end_trial(trial)
    leases.last_seen.pop(trial.trial_id, None)
    ended = oracle.get_trial(trial.trial_id)
    finished = sum(_finished(t) for t in adapter.trials())
    log.info(
        "trial %s %s, score %s (%d trials finished)", ended.trial_id, ended.status, ended.score, finished
    )


@keras_tuner.synchronized
def _restore_leases(oracle: Any, saved_ongoing: Mapping[str, str], leases: Leases) -> None:
    """After a chief restart, leave running trials with their workers instead of re-queueing them.

    ``Oracle.reload()`` re-queues every trial that was running, but the workers of a restarted chief are
    usually still training those trials and will report them: re-queueing would run each twice. A trial
    whose worker really is gone comes back through the lease timeout.
    """
    adapter = Adapter(oracle)
    for tuner_id, trial_id in saved_ongoing.items():
        if adapter.keep_with(tuner_id, trial_id):
            leases.touch(trial_id)
            log.info("trial %s stays with %s after the chief restart", trial_id, tuner_id)


@keras_tuner.synchronized
def _expire_leases(oracle: Any, leases: Leases, settings: DistributedConfig, since: float) -> None:
    """Take back every running trial whose worker was silent longer than the lease (since ``since``)."""
    now = leases.clock()
    for tuner_id, trial in Adapter(oracle).running().items():
        silent = now - leases.last_seen.get(trial.trial_id, since)
        if silent > settings.lease_timeout_seconds:
            reason = f"no word from worker {tuner_id} for {silent:.0f} s"
            _take_back(oracle, tuner_id, leases, settings.max_trial_losses, reason)


@keras_tuner.synchronized
def _state(oracle: Any) -> tuple[bool, int, int | None]:
    """(every recorded trial finished, trials running, trials the oracle may still create)."""
    adapter = Adapter(oracle)
    finished = all(_finished(t) for t in adapter.trials())
    return finished, len(adapter.running()), oracle.remaining_trials()


class _Servicer(kt_compat.oracle_servicer_class()):  # type: ignore[misc]
    """Keras Tuner's servicer plus leases: restarted workers, heartbeats, and no early STOPPED."""

    def __init__(self, oracle: Any, chief: ChiefServer) -> None:
        super().__init__(oracle)
        self.chief = chief

    def CreateTrial(self, request: Any, context: Any) -> Any:  # noqa: N802 (gRPC method name)
        self.chief.last_request = self.chief.clock()
        trial = _hand_out(self.oracle, request.tuner_id, self.chief)
        return kt_compat.service().CreateTrialResponse(trial=trial.to_proto())

    def GetTrial(self, request: Any, context: Any) -> Any:  # noqa: N802
        self.chief.leases.touch(request.trial_id)  # the worker's heartbeat
        return super().GetTrial(request, context)

    def EndTrial(self, request: Any, context: Any) -> Any:  # noqa: N802
        trial = _trial.Trial.from_proto(request.trial)
        try:
            _accept_result(self.oracle, trial, self.chief.leases)
        except Exception as exc:  # e.g. too many consecutive failed trials: the search must stop
            self.chief.fatal = exc
            raise
        return kt_compat.service().EndTrialResponse()


@keras_tuner.synchronized
def _hand_out(oracle: Any, tuner_id: str, chief: ChiefServer) -> Any:
    # A worker only asks for a trial after ending its last one; if it still holds one, it restarted.
    if Adapter(oracle).running_trial(tuner_id) is not None:
        reason = f"worker {tuner_id} restarted during the trial"
        _take_back(oracle, tuner_id, chief.leases, chief.settings.max_trial_losses, reason)
    trial = oracle.create_trial(tuner_id)
    if trial.status == _trial.TrialStatus.STOPPED:
        chief.stop_triggered = True
        if not all(_finished(t) for t in Adapter(oracle).trials()):
            # Keep the worker: a running trial may lose its worker and need another one.
            return _trial.Trial(oracle.get_space(), status=_trial.TrialStatus.IDLE)
    elif trial.status == _trial.TrialStatus.RUNNING:
        chief.leases.touch(trial.trial_id)
    return trial


class ChiefServer:
    """The oracle over gRPC (one thread, as Keras Tuner's) with a main loop that bounds every wait."""

    def __init__(
        self,
        oracle: Any,
        role: Role,
        settings: DistributedConfig,
        pusher: ProgressPusher | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        # Keras Tuner's console display keeps per-trial start times that a restarted chief may not have
        # reloaded (they are saved only after the trial was handed out): ending such a trial would
        # raise KeyError in the display. The chief logs trial results itself instead.
        Adapter(oracle).quiet()
        self.oracle = oracle
        self.role = role
        self.settings = settings
        self.pusher = pusher
        self.clock = clock  # leases and the idle timeout; tests drive it
        self.leases = Leases(clock)
        self.stop_triggered = False
        self.fatal: Exception | None = None
        self.started = self.last_request = clock()
        self.port: int | None = None
        self._server: grpc.Server | None = None

    def start(self) -> int:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="oracle"))
        kt_compat.service_grpc().add_OracleServicer_to_server(_Servicer(self.oracle, self), server)
        try:
            self.port = server.add_insecure_port(self.role.target)
        except RuntimeError as exc:
            raise DistributedError(f"cannot listen on {self.role.target}: {exc}") from exc
        server.start()
        self._server = server
        self.started = self.last_request = self.clock()
        log.info("chief oracle listening on %s (port %d)", self.role.target, self.port)
        return self.port

    def check_leases(self) -> None:
        """Hand out again every trial whose worker has been silent longer than the lease."""
        _expire_leases(self.oracle, self.leases, self.settings, self.started)

    def done(self, marked_done: bool = False) -> bool:
        finished, _, remaining = _state(self.oracle)
        return finished and (self.stop_triggered or remaining == 0 or (remaining is None and marked_done))

    def wait_until_done(self, marked_done: bool = False) -> None:
        """Serve until every trial has finished; raise DistributedError when no worker shows up."""
        while True:
            if self.fatal is not None:
                raise self.fatal
            self.check_leases()
            if self.pusher is not None:
                self.pusher.update(snapshot(self.oracle, BEST_METRIC))
            if self.done(marked_done):
                log.info("search done: every trial has finished")
                return
            _, running, _ = _state(self.oracle)
            idle = self.clock() - self.last_request
            if running == 0 and idle > self.settings.idle_timeout_seconds:
                raise DistributedError(f"no worker asked the chief for a trial in {idle:.0f} s")
            time.sleep(self.settings.poll_seconds)

    def stop(self, drain: bool = True) -> None:
        """Stop serving; with ``drain``, first give polling workers time to hear STOPPED."""
        if self._server is None:
            return
        deadline = time.monotonic() + (self.settings.shutdown_grace_seconds if drain else 0)
        while drain and Adapter(self.oracle).connected_tuners() and time.monotonic() < deadline:
            time.sleep(min(self.settings.poll_seconds, 0.2))
        self._server.stop(grace=1.0).wait()
        self._server = None
        log.info("chief oracle stopped")


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
    _restore_leases(tuner.oracle, Adapter.handed_out_before(project_dir), server.leases)
    # Writes oracle.json and chief.json; without chief.json a restarted chief would not reload the
    # search (keras-team/keras-tuner#976). Keras Tuner's own chief does the same before serving.
    tuner.save()
    marked = search_marked_done(project_dir, settings.run_id)
    if marker is not None and not server.done(marked):
        (Path(project_dir) / DONE_MARKER).unlink(missing_ok=True)  # stale: from a finished earlier search
        marked = False
    server.start()
    try:
        with kt_compat.search_failures():  # the search's fatal errors (exit 4); finalize's are its own
            server.wait_until_done(marked)
        write_done_marker(project_dir, settings.run_id, finalized=False)
        result = finalize()
        write_done_marker(project_dir, settings.run_id, finalized=True)
        if pusher is not None:
            pusher.success()
    finally:
        server.stop(drain=server.fatal is None)
    return result
