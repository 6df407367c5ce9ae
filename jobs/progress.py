"""Progress of a search in the log: per-trial and per-epoch lines with elapsed and estimated remaining time.

Pushgateway gauges are in :mod:`jobs.pushmetrics`.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any

import keras

from jobs.config import JobConfig

log = logging.getLogger(__name__)


def format_seconds(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def hyperband_budget(max_epochs: int, factor: int, iterations: int) -> tuple[int, int]:
    """(trials, epochs) of a full Hyperband run, with Keras Tuner's bracket sizes and warm starts."""
    brackets = 0
    epochs = float(max_epochs)
    while epochs >= 1:
        epochs /= factor
        brackets += 1
    end_size = math.ceil(1 + math.log(max_epochs, factor))
    trials = total_epochs = 0
    for bracket in range(brackets):
        for round_num in range(bracket + 1):
            size = math.ceil(end_size / (bracket + 1) * factor ** (bracket - round_num))
            run_to = math.ceil(max_epochs / factor ** (bracket - round_num))
            start = math.ceil(max_epochs / factor ** (bracket - round_num + 1)) if round_num else 0
            trials += size
            total_epochs += size * (run_to - start)
    return trials * iterations, total_epochs * iterations


def search_budget(config: JobConfig) -> tuple[int, int]:
    """Expected (trials, epochs) of the whole search; early stopping makes the real count smaller."""
    tuner = config.tuner
    if tuner.kind == "hyperband":
        return hyperband_budget(tuner.max_epochs, tuner.factor, tuner.hyperband_iterations)
    return tuner.max_trials, tuner.max_trials * config.search.epochs


class SearchProgress:
    """Counts finished epochs and trials and estimates the remaining time from the epoch budget."""

    def __init__(self, config: JobConfig) -> None:
        self.total_trials, self.total_epochs = search_budget(config)
        self.epochs_done = 0
        self.trials_done = 0
        self.trials_failed = 0
        self.best: float | None = None
        self.started = time.monotonic()
        self.resumed_epochs = 0

    def resume(self, trials_done: int, trials_failed: int, epochs_done: int, best: float | None) -> None:
        """Account for work a previous (killed) run finished; the ETA uses only this run's rate."""
        self.trials_done, self.trials_failed = trials_done, trials_failed
        self.epochs_done = self.resumed_epochs = epochs_done
        self.best = best
        if trials_done:
            log.info("resuming: %d trials already finished (%d failed)", trials_done, trials_failed)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def eta(self) -> float | None:
        done_here = self.epochs_done - self.resumed_epochs
        if done_here <= 0:
            return None
        remaining = max(0, self.total_epochs - self.epochs_done)
        return self.elapsed() / done_here * remaining

    def epoch_done(self) -> None:
        self.epochs_done += 1

    def trial_done(self, failed: bool, score: float | None, higher_is_better: bool = True) -> None:
        self.trials_done += 1
        self.trials_failed += int(failed)
        if score is not None and math.isfinite(score):
            if self.best is None or (score > self.best if higher_is_better else score < self.best):
                self.best = score


class EpochLogger(keras.callbacks.Callback):
    """Logs one line per epoch (a terminal shows Keras' progress bar instead)."""

    def __init__(self, progress: SearchProgress, label: str, epochs: int, per_epoch_lines: bool) -> None:
        super().__init__()
        self.progress = progress
        self.label = label
        self.epochs = epochs
        self.per_epoch_lines = per_epoch_lines
        self._epoch_start = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch_start = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.progress.epoch_done()
        if not self.per_epoch_lines:
            return
        logs = logs or {}
        metrics = " ".join(
            f"{key}={value:.4f}" for key, value in sorted(logs.items()) if key != "learning_rate"
        )
        log.info(
            "%s epoch %d/%d %s (%.1fs) elapsed %s eta %s",
            self.label,
            epoch + 1,
            self.epochs,
            metrics,
            time.monotonic() - self._epoch_start,
            format_seconds(self.progress.elapsed()),
            format_seconds(self.progress.eta()),
        )


def interactive() -> bool:
    """A terminal gets Keras' progress bars; a container log gets plain lines."""
    return sys.stdout.isatty()
