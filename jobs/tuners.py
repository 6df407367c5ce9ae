"""Keras Tuner tuners for the job: each trial logs its progress and leaves its per-epoch history
(``history.json``) in its trial directory, so the report and the final model can use it after a resume."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import keras_tuner as kt

import modelrepo
from jobs import kt_compat
from jobs.config import JobConfig
from jobs.progress import EpochLogger, SearchProgress, format_seconds, interactive
from jobs.search_space import MlpHyperModel, model_values

log = logging.getLogger(__name__)

HISTORY_FILE = "history.json"


class _SharedEpochLogger(EpochLogger):
    """Keras Tuner deep-copies callbacks per trial; the copy must share the progress counters."""

    def __deepcopy__(self, memo: dict[int, Any]) -> _SharedEpochLogger:
        return _SharedEpochLogger(self.progress, self.label, self.epochs, self.per_epoch_lines)


class JobTunerMixin:
    """Adds progress logging and per-trial history files to a Keras Tuner tuner."""

    progress: SearchProgress | None = None

    def run_trial(self, trial: kt.engine.trial.Trial, *args: Any, **kwargs: Any) -> Any:
        values = trial.hyperparameters.values
        initial_epoch = int(values.get("tuner/initial_epoch", 0))
        epochs = int(values.get("tuner/epochs", kwargs.get("epochs", 1)))
        # Declaring on a copy gives the values build() will use, including layer widths this trial
        # declares for the first time (Keras Tuner gives those their default).
        used = self.hypermodel.declare(trial.hyperparameters.copy())  # type: ignore[attr-defined]
        log.info(
            "trial %s: %s, epochs %d..%d",
            trial.trial_id,
            ", ".join(f"{key}={_short(value)}" for key, value in used.items()),
            initial_epoch + 1,
            epochs,
        )
        if self.progress is not None:
            logger = _SharedEpochLogger(self.progress, f"trial {trial.trial_id}", epochs, not interactive())
            kwargs["callbacks"] = [*kwargs.get("callbacks", []), logger]
        started = time.monotonic()
        histories = super().run_trial(trial, *args, **kwargs)  # type: ignore[misc]
        seconds = time.monotonic() - started
        history = histories[-1]
        record = {
            "trial_id": trial.trial_id,
            "initial_epoch": initial_epoch,
            "epochs": [int(epoch) for epoch in history.epoch],
            "history": {key: [float(v) for v in vals] for key, vals in history.history.items()},
            "seconds": seconds,
        }
        path = Path(self.get_trial_dir(trial.trial_id)) / HISTORY_FILE  # type: ignore[attr-defined]
        path.write_text(json.dumps(record))
        return histories

    def on_trial_end(self, trial: kt.engine.trial.Trial) -> None:
        super().on_trial_end(trial)  # type: ignore[misc]
        ended = self.oracle.get_trial(trial.trial_id)  # type: ignore[attr-defined]
        failed = ended.status != "COMPLETED"
        if self.progress is not None:
            self.progress.trial_done(failed, ended.score, self.oracle.objective.direction == "max")  # type: ignore[attr-defined]
        progress = self.progress
        if failed:
            last_line = (ended.message or "").strip().splitlines()[-1:] or ["no message"]
            log.warning("trial %s %s: %s", trial.trial_id, ended.status, last_line[0])
            log.debug("trial %s: %s", trial.trial_id, ended.message)  # the whole traceback
        else:
            log.info(
                "trial %s done: %s=%.4f (best %s) trials %s elapsed %s eta %s",
                trial.trial_id,
                self.oracle.objective.name,  # type: ignore[attr-defined]
                ended.score,
                "?" if progress is None or progress.best is None else f"{progress.best:.4f}",
                "?" if progress is None else f"{progress.trials_done}/~{progress.total_trials}",
                "?" if progress is None else format_seconds(progress.elapsed()),
                "?" if progress is None else format_seconds(progress.eta()),
            )


def _summary_values(values: dict[str, Any]) -> dict[str, Any]:
    """The trial's model hyperparameters, then Hyperband's bookkeeping (epochs, warm-start trial)."""
    bookkeeping = {key: value for key, value in values.items() if key.startswith("tuner/")}
    return {**model_values(copy.deepcopy(values)), **bookkeeping}


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


class RandomSearchTuner(JobTunerMixin, kt.RandomSearch):
    pass


class HyperbandTuner(JobTunerMixin, kt.Hyperband):
    pass


class BayesianTuner(JobTunerMixin, kt.BayesianOptimization):
    pass


def create_tuner(
    config: JobConfig,
    hypermodel: MlpHyperModel,
    directory: Path,
    project_name: str,
    tuner_id: str | None = None,
) -> kt.Tuner:
    """The tuner named by ``config.tuner``; reloads its state from ``directory/project_name`` if present.

    The job builds it inside :func:`jobs.kt_compat.patched` (atomic state writes, quiet failed trials).
    """
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # Keras Tuner print()s "Reloading Tuner from ..."
        created = _construct(config, hypermodel, directory, project_name, tuner_id)
    for line in printed.getvalue().splitlines():
        log.info("keras-tuner: %s", line)  # into the job's log format, not a bare line on stdout
    return created


def _construct(
    config: JobConfig, hypermodel: MlpHyperModel, directory: Path, project_name: str, tuner_id: str | None
) -> kt.Tuner:
    tuner = config.tuner
    common: dict[str, Any] = {
        "hypermodel": hypermodel,
        "objective": tuner.objective,
        "seed": config.seed,
        "max_retries_per_trial": tuner.max_retries_per_trial,
        "max_consecutive_failed_trials": tuner.max_consecutive_failed_trials,
        "executions_per_trial": tuner.executions_per_trial,
        "directory": str(directory),
        "project_name": project_name,
        "overwrite": False,
        "tuner_id": tuner_id,
    }
    if tuner.kind == "random":
        return RandomSearchTuner(max_trials=tuner.max_trials, **common)
    if tuner.kind == "hyperband":
        return HyperbandTuner(
            max_epochs=tuner.max_epochs,
            factor=tuner.factor,
            hyperband_iterations=tuner.hyperband_iterations,
            **common,
        )
    return BayesianTuner(max_trials=tuner.max_trials, num_initial_points=tuner.num_initial_points, **common)


def read_history(tuner: kt.Tuner, trial_id: str) -> dict[str, Any] | None:
    path = Path(tuner.get_trial_dir(trial_id)) / HISTORY_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def best_epoch_count(record: dict[str, Any], objective: str) -> int:
    """Epochs from scratch to the best epoch of a trial (Hyperband trials start at ``initial_epoch``)."""
    values = record["history"].get(objective) or []
    if not values:
        return record["initial_epoch"] + len(record["epochs"])
    pick = max if objective.endswith("accuracy") else min
    best_index = values.index(pick(values))
    return int(record["epochs"][best_index]) + 1


def trial_summaries(tuner: kt.Tuner, objective: str) -> list[modelrepo.TrialSummary]:
    """Every trial, best first (failed and unscored trials last)."""
    summaries = []
    for trial in kt_compat.OracleAdapter(tuner.oracle).trials():
        record = read_history(tuner, trial.trial_id)
        val_accuracy = None
        if trial.metrics.exists("val_accuracy"):
            val_accuracy = float(trial.metrics.get_best_value("val_accuracy"))
        summaries.append(
            modelrepo.TrialSummary(
                trial_id=trial.trial_id,
                status=str(trial.status),
                hyperparameters=modelrepo.to_jsonable(_summary_values(trial.hyperparameters.values)),
                val_accuracy=val_accuracy,
                best_epoch=best_epoch_count(record, objective) if record else None,
                epochs_run=len(record["epochs"]) if record else None,
                seconds=record["seconds"] if record else None,
            )
        )
    higher = objective.endswith("accuracy")

    def key(summary: modelrepo.TrialSummary) -> tuple[int, float]:
        trial = tuner.oracle.get_trial(summary.trial_id)
        score = trial.score if trial.score is not None and math.isfinite(trial.score) else None
        if summary.status != "COMPLETED" or score is None:
            return (1, 0.0)
        return (0, -score if higher else score)

    return sorted(summaries, key=key)


def finished_work(tuner: kt.Tuner) -> tuple[int, int, int, float | None]:
    """(trials finished, of which failed, epochs run, best score) from a reloaded tuner."""
    done = failed = epochs = 0
    best = None
    higher = tuner.oracle.objective.direction == "max"
    for trial in kt_compat.OracleAdapter(tuner.oracle).trials():
        if trial.status not in ("COMPLETED", "FAILED", "INVALID"):
            continue
        done += 1
        failed += int(trial.status != "COMPLETED")
        record = read_history(tuner, trial.trial_id)
        epochs += len(record["epochs"]) if record else 0
        if trial.status == "COMPLETED" and trial.score is not None:
            if best is None or (trial.score > best if higher else trial.score < best):
                best = trial.score
    return done, failed, epochs, best
