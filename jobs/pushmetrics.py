"""Search progress as Pushgateway gauges (batch-job conventions), pushed by the chief or the lone job.

Names are in docs/interfaces.md. Progress gauges are pushed with POST (``pushadd``) so that the
``digits_tune_last_success_timestamp_seconds`` of an earlier successful run stays in the group until this
run succeeds; that gauge lives in its own registry and is pushed once, at the successful end.
A push that fails is logged and never stops the job.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, pushadd_to_gateway

log = logging.getLogger(__name__)

JOB_LABEL = "mnist_tune"
PUSH_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class Snapshot:
    """Counts of one moment of the search."""

    completed: int
    failed: int
    best: float | None


def snapshot(oracle: Any, metric: str = "val_accuracy") -> Snapshot:
    """Count finished trials of ``oracle`` and the best ``metric`` so far.

    Takes the oracle's own lock (``keras_tuner.synchronized``) so that it can run beside the gRPC
    thread or the search loop that mutate the oracle's trials.
    """
    import keras_tuner

    from jobs.kt_compat import OracleAdapter

    @keras_tuner.synchronized
    def _read(oracle: Any) -> Snapshot:
        completed = failed = 0
        best: float | None = None
        for trial in OracleAdapter(oracle).trials():
            if trial.status == "COMPLETED":
                completed += 1
                if trial.metrics.exists(metric):
                    value = trial.metrics.get_best_value(metric)
                    if value is not None and not math.isnan(value) and (best is None or value > best):
                        best = float(value)
            elif trial.status == "FAILED":
                failed += 1
        return Snapshot(completed, failed, best)

    return _read(oracle)


class ProgressPusher:
    """The job's gauges in a dedicated registry; ``gateway`` None turns every push into a no-op."""

    def __init__(
        self, gateway: str | None, job: str = JOB_LABEL, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.gateway = gateway
        self.job = job
        self._clock = clock
        self._started = clock()
        self._last: Snapshot | None = None
        self.registry = CollectorRegistry()
        self.completed = Gauge(
            "digits_tune_trials_completed", "Trials that finished with a score", registry=self.registry
        )
        self.failed = Gauge(
            "digits_tune_trials_failed",
            "Trials that failed for good (retries used up)",
            registry=self.registry,
        )
        self.best = Gauge(
            "digits_tune_best_val_accuracy",
            "Best validation accuracy of the search so far",
            registry=self.registry,
        )
        self.elapsed = Gauge(
            "digits_tune_elapsed_seconds",
            "Seconds since this process started the search",
            registry=self.registry,
        )
        self.success_registry = CollectorRegistry()
        self.last_success = Gauge(
            "digits_tune_last_success_timestamp_seconds",
            "Unix time the job last finished successfully",
            registry=self.success_registry,
        )

    def update(self, snap: Snapshot, force: bool = False) -> bool:
        """Set the gauges from ``snap`` and push when something changed (or ``force``). True if pushed."""
        if not force and snap == self._last:
            return False
        self._last = snap
        self.completed.set(snap.completed)
        self.failed.set(snap.failed)
        if snap.best is not None:
            self.best.set(snap.best)
        self.elapsed.set(self._clock() - self._started)
        return self._push(self.registry)

    def success(self) -> bool:
        """Push the final progress and the last-success timestamp (call once, after the export)."""
        if self._last is not None:
            self.update(self._last, force=True)
        self.last_success.set_to_current_time()
        return self._push(self.success_registry)

    def _push(self, registry: CollectorRegistry) -> bool:
        if not self.gateway:
            return False
        try:
            pushadd_to_gateway(self.gateway, job=self.job, registry=registry, timeout=PUSH_TIMEOUT_SECONDS)
        except Exception as exc:  # a monitoring outage must never fail the search
            log.warning("push to Pushgateway %s failed: %s", self.gateway, exc)
            return False
        log.debug("pushed progress to %s", self.gateway)
        return True


class ProgressWatcher:
    """A daemon thread that pushes ``oracle``'s progress every ``interval`` seconds when it changed.

    Used by the standalone job, whose search loop has no place to call us between trials.
    """

    def __init__(self, oracle: Any, pusher: ProgressPusher, metric: str, interval: float = 5.0) -> None:
        self._oracle = oracle
        self._pusher = pusher
        self._metric = metric
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress-push", daemon=True)

    def __enter__(self) -> ProgressWatcher:
        if self._pusher.gateway:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self._interval + PUSH_TIMEOUT_SECONDS)
        self.poll()

    def poll(self) -> None:
        self._pusher.update(snapshot(self._oracle, self._metric))

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.poll()
            except Exception:  # keep watching; the next poll may succeed
                log.exception("reading search progress failed")
