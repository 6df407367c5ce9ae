"""The chief's oracle server and the worker's client in one process, over real gRPC on loopback.

Workers are Keras Tuner ``BaseTuner``s in worker mode; the tests drive their oracle calls by hand to
reach each failure path (silent worker, restarted worker, chief restart, no chief) in about a second.
Leases and the idle timeout run on a clock the tests advance, so a loaded machine cannot fail them;
tests/distributed/test_distributed_search.py runs the whole path in real processes and real time.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import keras_tuner as kt
import pytest
from keras_tuner.src.distribute import oracle_client

from jobs.distributed.chief import ChiefServer, run_chief
from jobs.distributed.roles import DistributedConfig, Role, read_done_marker, write_done_marker
from jobs.distributed.worker import (
    RETRY_PAUSE_SECONDS,
    ChiefError,
    ChiefUnreachableError,
    WorkerOracle,
    run_worker,
)
from jobs.errors import DistributedError, SearchError
from jobs.pushmetrics import Snapshot, snapshot
from tests.support import free_port, wait_for

FAST = DistributedConfig(
    heartbeat_seconds=0.2,
    lease_timeout_seconds=1.0,
    poll_seconds=0.05,
    idle_timeout_seconds=30,
    rpc_timeout_seconds=5,
    connect_timeout_seconds=5,
    shutdown_grace_seconds=1,
)


class FakeClock:
    """A monotonic clock that moves only when a test advances it (or sleeps on it)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def build(hp: kt.HyperParameters) -> None:
    hp.Int("x", 0, 10_000)


def make_tuner(
    directory: Path, tuner_id: str, port: int, monkeypatch: pytest.MonkeyPatch, trials: int
) -> Any:
    """A Keras Tuner BaseTuner in the given role (Keras Tuner reads the role from the environment).

    ``trials`` 0 means Hyperband (brackets up to 9 epochs, factor 3), which has no trial budget.
    """
    monkeypatch.setenv("KERASTUNER_TUNER_ID", tuner_id)
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", str(port))
    objective = kt.Objective("score", "max")
    if trials == 0:
        oracle = kt.oracles.HyperbandOracle(objective=objective, max_epochs=9, factor=3, seed=1)
    else:
        oracle = kt.oracles.RandomSearchOracle(objective=objective, max_trials=trials, seed=1)
    return kt.engine.base_tuner.BaseTuner(
        oracle=oracle, hypermodel=build, directory=str(directory), project_name="p"
    )


class Cluster:
    """A chief serving in a background thread plus worker clients made on demand."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trials: int, settings=FAST, port=0):
        self.tmp_path, self.monkeypatch, self.trials, self.settings = tmp_path, monkeypatch, trials, settings
        self.chief_tuner = make_tuner(tmp_path, "chief", port, monkeypatch, trials)
        self.chief_tuner.save()
        self.clock = FakeClock()
        self.server = ChiefServer(
            self.chief_tuner.oracle, Role("chief", "chief", "127.0.0.1", port), settings, clock=self.clock
        )
        self.port = self.server.start()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            self.server.wait_until_done()
        except BaseException as exc:
            self.error = exc

    def worker(self, tuner_id: str) -> WorkerOracle:
        tuner = make_tuner(self.tmp_path, tuner_id, self.port, self.monkeypatch, self.trials)
        return WorkerOracle(tuner.oracle, self.settings)

    def finish(self, timeout: float = 10) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the chief did not finish"
        self.server.stop()

    @property
    def oracle(self) -> Any:
        return self.chief_tuner.oracle


def complete(worker: WorkerOracle, trial: Any, score: float = 0.5) -> None:
    worker.update_trial(trial.trial_id, {"score": score}, step=0)
    trial.status = "COMPLETED"
    worker.end_trial(trial)


@pytest.fixture(autouse=True)
def short_rpc_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(oracle_client, "TIMEOUT", FAST.rpc_timeout_seconds)


def test_silent_workers_trial_is_handed_to_another_worker(tmp_path, monkeypatch) -> None:
    cluster = Cluster(tmp_path, monkeypatch, trials=2)
    lost = cluster.worker("tuner1")
    trial = lost.create_trial("tuner1")
    lost._stop_heartbeat()  # the worker process "dies": no more heartbeats
    cluster.clock.advance(FAST.lease_timeout_seconds * 0.9)
    cluster.server.check_leases()  # what the serve loop does every poll_seconds
    assert cluster.oracle.ongoing_trials["tuner1"].trial_id == trial.trial_id  # not yet
    cluster.clock.advance(FAST.lease_timeout_seconds * 0.2)
    cluster.server.check_leases()
    assert "tuner1" not in cluster.oracle.ongoing_trials
    other = cluster.worker("tuner2")
    again = other.create_trial("tuner2")
    assert again.trial_id == trial.trial_id  # the lost trial comes first
    complete(other, again)
    complete(other, other.create_trial("tuner2"))
    assert other.create_trial("tuner2").status == "STOPPED"
    cluster.finish()
    statuses = sorted(t.status for t in cluster.oracle.trials.values())
    assert statuses == ["COMPLETED", "COMPLETED"]
    assert snapshot(cluster.oracle, "score") == Snapshot(completed=2, failed=0, best=0.5)


def test_heartbeats_keep_a_long_trial_with_its_worker(tmp_path, monkeypatch) -> None:
    cluster = Cluster(tmp_path, monkeypatch, trials=2)
    busy = cluster.worker("tuner1")
    trial = busy.create_trial("tuner1")
    seen = cluster.server.leases.last_seen

    def heard_since_the_clock_moved() -> bool:
        return seen.get(trial.trial_id) == cluster.clock()

    for _ in range(3):  # 2.4 lease timeouts in all, each step shorter than one
        cluster.clock.advance(FAST.lease_timeout_seconds * 0.8)
        wait_for(heard_since_the_clock_moved, timeout=30, what="a heartbeat")
        cluster.server.check_leases()
    other = cluster.worker("tuner2")
    assert other.create_trial("tuner2").trial_id != trial.trial_id
    assert cluster.oracle.ongoing_trials["tuner1"].trial_id == trial.trial_id
    busy._stop_heartbeat()
    cluster.server.stop(drain=False)


def test_restarted_worker_gets_its_trial_back_and_the_losses_are_bounded(tmp_path, monkeypatch) -> None:
    settings = FAST.model_copy(update={"max_trial_losses": 1, "lease_timeout_seconds": 60})
    cluster = Cluster(tmp_path, monkeypatch, trials=2, settings=settings)
    first = cluster.worker("tuner1").create_trial("tuner1")
    restarted = cluster.worker("tuner1")  # same id: the Job's replacement pod for this index
    second = restarted.create_trial("tuner1")
    assert second.trial_id == first.trial_id  # handed out again (loss 1 of 1)
    third = cluster.worker("tuner1").create_trial("tuner1")  # lost again: over budget
    assert third.trial_id != first.trial_id
    assert cluster.oracle.trials[first.trial_id].status == "FAILED"
    assert "lost its worker 2 times" in cluster.oracle.trials[first.trial_id].message
    worker = cluster.worker("tuner2")
    cluster.server.stop(drain=False)
    del worker


def test_a_waiting_worker_hears_idle_until_every_trial_has_finished(tmp_path, monkeypatch) -> None:
    cluster = Cluster(tmp_path, monkeypatch, trials=2)
    slow, fast = cluster.worker("tuner1"), cluster.worker("tuner2")
    slow_trial = slow.create_trial("tuner1")
    complete(fast, fast.create_trial("tuner2"))
    # Keras Tuner would answer STOPPED here; the worker must stay in case slow_trial loses its worker.
    assert fast.create_trial("tuner2").status == "IDLE"
    assert not cluster.server.done()
    complete(slow, slow_trial)
    assert fast.create_trial("tuner2").status == "STOPPED"
    assert slow.create_trial("tuner1").status == "STOPPED"
    cluster.finish()
    assert cluster.error is None
    assert cluster.oracle.tuner_ids == set()  # both workers were told to stop


def test_a_worker_told_idle_waits_on_its_own_clock(tmp_path, monkeypatch) -> None:
    cluster = Cluster(tmp_path, monkeypatch, trials=1)
    busy = cluster.worker("tuner1")
    trial = busy.create_trial("tuner1")
    clock = FakeClock()
    tuner = make_tuner(tmp_path, "tuner2", cluster.port, monkeypatch, trials=1)
    settings = FAST.model_copy(update={"poll_seconds": 3.0})
    waiting = WorkerOracle(tuner.oracle, settings, clock=clock, sleep=clock.advance)
    started = time.monotonic()
    assert waiting.create_trial("tuner2").status == "IDLE"
    assert clock.now == 1000 + 3.0  # the pause after IDLE went to the injected sleep...
    assert time.monotonic() - started < 2.5  # ...not to time.sleep
    complete(busy, trial)
    cluster.finish()


def test_chief_without_workers_gives_up_after_the_idle_timeout(tmp_path, monkeypatch) -> None:
    settings = FAST.model_copy(update={"idle_timeout_seconds": 5})
    cluster = Cluster(tmp_path, monkeypatch, trials=2, settings=settings)
    cluster.clock.advance(4)
    cluster.thread.join(1)
    assert cluster.thread.is_alive()  # 4 s idle: still serving
    cluster.clock.advance(2)
    cluster.thread.join(30)
    cluster.server.stop(drain=False)
    assert isinstance(cluster.error, DistributedError)
    assert "no worker asked" in str(cluster.error)


def test_worker_fails_fast_without_a_chief_unless_the_search_is_done(tmp_path, monkeypatch) -> None:
    settings = FAST.model_copy(update={"connect_timeout_seconds": 0.5, "run_id": "job-1"})
    role = Role("worker", "tuner1", "127.0.0.1", 1)  # nothing listens on port 1
    tuner = make_tuner(tmp_path, "tuner1", 1, monkeypatch, trials=2)
    started = time.monotonic()
    with pytest.raises(DistributedError, match="not reachable"):
        run_worker(tuner, lambda: None, role, settings)
    assert time.monotonic() - started < 5
    write_done_marker(tuner.project_dir, "job-1", finalized=True)
    assert run_worker(tuner, lambda: None, role, settings) == 0


def test_a_lost_chief_mid_search_is_a_fatal_keras_tuner_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(oracle_client, "TIMEOUT", 0.5)
    cluster = Cluster(tmp_path, monkeypatch, trials=2)
    worker = cluster.worker("tuner1")
    trial = worker.create_trial("tuner1")
    cluster.server.stop(drain=False)
    with pytest.raises(ChiefUnreachableError) as caught:
        worker.update_trial(trial.trial_id, {"score": 1.0})
    assert isinstance(caught.value, kt.errors.FatalError)  # Keras Tuner re-raises it: no failed trial


class _Unavailable(grpc.RpcError):
    """What a call on the wire gets when the chief's connection resets (cannot be staged on demand)."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "Stream removed (recvmsg:Connection reset by peer)"


class _FlakyClient:
    """Stands in for Keras Tuner's OracleClient: ``get_space`` fails ``failures`` times, then answers."""

    def __init__(self, failures: int) -> None:
        self.failures, self.calls = failures, 0

    def get_space(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise _Unavailable()
        return "space"


def test_a_call_cut_off_by_a_lost_connection_is_sent_again() -> None:
    clock = FakeClock()
    client = _FlakyClient(failures=2)
    assert WorkerOracle(client, FAST, clock=clock, sleep=clock.advance).get_space() == "space"
    assert client.calls == 3
    assert clock.now == 1000 + 2 * RETRY_PAUSE_SECONDS


def test_a_call_cut_off_is_not_retried_past_the_rpc_timeout_or_a_finished_search() -> None:
    clock = FakeClock()
    settings = FAST.model_copy(update={"rpc_timeout_seconds": 2.2})
    client = _FlakyClient(failures=10**6)
    with pytest.raises(ChiefUnreachableError, match="UNAVAILABLE"):
        WorkerOracle(client, settings, clock=clock, sleep=clock.advance).get_space()
    assert client.calls == 6  # at 0, 0.5, ..., 2.0 s and the last at 2.5 s, past the 2.2 s budget
    client = _FlakyClient(failures=10**6)
    with pytest.raises(ChiefUnreachableError):
        WorkerOracle(client, FAST, search_done=lambda: True, clock=clock, sleep=clock.advance).get_space()
    assert client.calls == 1  # the volume says the search is over: no point waiting for a chief


def test_a_result_sent_again_is_recorded_once(tmp_path, monkeypatch) -> None:
    cluster = Cluster(tmp_path, monkeypatch, trials=2)
    worker = cluster.worker("tuner1")
    trial = worker.create_trial("tuner1")
    complete(worker, trial, score=0.7)
    worker.end_trial(trial)  # the same EndTrial again, as after a cut-off call
    assert cluster.oracle.end_order.count(trial.trial_id) == 1
    assert cluster.oracle.trials[trial.trial_id].score == 0.7
    cluster.server.stop(drain=False)


def test_restarted_chief_keeps_running_trials_and_exports_once(tmp_path, monkeypatch) -> None:
    settings = FAST.model_copy(update={"run_id": "job-7", "lease_timeout_seconds": 60})
    first = Cluster(tmp_path, monkeypatch, trials=3, settings=settings)
    worker = first.worker("tuner1")
    done = first.worker("tuner2")
    complete(done, done.create_trial("tuner2"))
    running = worker.create_trial("tuner1")
    first.server.stop(drain=False)  # the chief dies while tuner1 trains

    port = first.port
    restarted = make_tuner(tmp_path, "chief", port, monkeypatch, trials=3)  # reloads from the volume
    exports: list[str] = []
    result: list[Any] = []
    role = Role("chief", "chief", "127.0.0.1", port)

    def chief() -> None:
        result.append(run_chief(restarted, lambda: exports.append("v1") or "v1", role, settings))

    thread = threading.Thread(target=chief, daemon=True)
    thread.start()
    complete(worker, running)  # the surviving worker reports to the new chief
    assert restarted.oracle.trials[running.trial_id].status == "COMPLETED"
    last = worker.create_trial("tuner1")
    assert last.trial_id not in (running.trial_id,)  # not re-run: it stayed with its worker
    complete(worker, last)
    assert worker.create_trial("tuner1").status == "STOPPED"
    thread.join(15)
    assert not thread.is_alive()
    assert result == ["v1"] and exports == ["v1"]
    assert sorted(t.status for t in restarted.oracle.trials.values()) == ["COMPLETED"] * 3
    assert read_done_marker(restarted.project_dir)["finalized"] is True
    # The same Job's chief started again after the export: nothing more to do, no second version.
    again = make_tuner(tmp_path, "chief", port, monkeypatch, trials=3)
    assert run_chief(again, lambda: exports.append("v2"), role, settings) is None
    assert exports == ["v1"]


def test_a_search_that_fails_on_the_chief_is_not_mistaken_for_a_lost_chief(tmp_path, monkeypatch) -> None:
    cluster = Cluster(tmp_path, monkeypatch, trials=5)
    worker = cluster.worker("tuner1")
    for attempt in range(3):  # Keras Tuner's default limit of consecutive failed trials
        trial = worker.create_trial("tuner1")
        trial.status = "FAILED"
        if attempt < 2:
            worker.end_trial(trial)
    with pytest.raises(ChiefError) as caught:
        worker.end_trial(trial)
    assert not isinstance(caught.value, DistributedError)  # exit 4 (search failed), not 6 (retry)
    cluster.thread.join(5)
    cluster.server.stop(drain=False)
    assert isinstance(cluster.error, RuntimeError)
    assert "consecutive failures" in str(cluster.error)


def test_consecutive_failures_on_the_chief_are_a_search_error_before_any_final_fit(
    tmp_path, monkeypatch
) -> None:
    chief_tuner = make_tuner(tmp_path, "chief", 0, monkeypatch, trials=5)
    port = free_port()
    role = Role("chief", "chief", "127.0.0.1", port)
    finals: list[str] = []
    raised: list[BaseException] = []

    def chief() -> None:
        try:
            run_chief(chief_tuner, lambda: finals.append("fit"), role, FAST)
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=chief, daemon=True)
    thread.start()
    worker = WorkerOracle(make_tuner(tmp_path, "tuner1", port, monkeypatch, trials=5).oracle, FAST)
    for _ in range(3):  # Keras Tuner's default limit of consecutive failed trials
        trial = worker.create_trial("tuner1")
        trial.status = "FAILED"
        with contextlib.suppress(ChiefError):
            worker.end_trial(trial)
    thread.join(10)
    assert not thread.is_alive()
    assert len(raised) == 1 and isinstance(raised[0], SearchError), raised
    assert "consecutive failures" in str(raised[0]) and finals == []


def test_a_hyperband_search_ends_when_its_brackets_are_done(tmp_path, monkeypatch) -> None:
    # Hyperband has no trial budget and answers IDLE while a bracket waits for results: the chief must
    # still see the end.
    cluster = Cluster(tmp_path, monkeypatch, trials=0)
    workers = {name: cluster.worker(name) for name in ("tuner1", "tuner2")}
    stopped: set[str] = set()
    scores = iter(range(1000))
    while len(stopped) < len(workers):
        for name, worker in workers.items():
            if name in stopped:
                continue
            trial = worker.create_trial(name)
            if trial.status == "STOPPED":
                stopped.add(name)
            elif trial.status == "RUNNING":
                complete(worker, trial, score=next(scores) / 1000)
    cluster.finish()
    trials = list(cluster.oracle.trials.values())
    assert len(trials) > 9 and all(t.status == "COMPLETED" for t in trials)
