"""The job's report under ``<output>/report/``: learning curves, a search chart, the trials table (CSV and
Markdown, best first) and the HParams experiment summary beside the per-trial TensorBoard logs."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display in a container; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402

import modelrepo  # noqa: E402

log = logging.getLogger(__name__)

LEARNING_CURVES = "learning_curves.png"
SEARCH_CHART = "search.png"
TRIALS_CSV = "trials.csv"
TRIALS_MD = "trials.md"
TENSORBOARD_DIR = "tensorboard"
# Hyperparameters shown in the search chart, when the search varied them.
CHART_PARAMS = ("num_layers", "units_0", "dropout", "learning_rate", "batch_size", "translate_pixels")


def plot_learning_curves(
    path: Path,
    trial_history: dict[str, list[float]] | None,
    final_history: dict[str, list[float]] | None,
    title: str,
    trial_epochs: list[int] | None = None,
) -> None:
    """Accuracy and loss per epoch: the best trial's training and validation curves, and the final fit's.

    ``trial_epochs`` are the trial's 0-based epoch numbers (a warm-started Hyperband trial starts late).
    """
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for axis, metric in zip(axes, ("accuracy", "loss"), strict=True):
        if trial_history:
            count = len(trial_history.get(metric, []))
            epochs = [e + 1 for e in trial_epochs] if trial_epochs else list(range(1, count + 1))
            if trial_history.get(metric):
                axis.plot(epochs, trial_history[metric], label="best trial: training")
            if trial_history.get(f"val_{metric}"):
                axis.plot(epochs, trial_history[f"val_{metric}"], label="best trial: validation")
        if final_history and final_history.get(metric):
            epochs = range(1, len(final_history[metric]) + 1)
            axis.plot(epochs, final_history[metric], "--", label="final fit: training (train+val)")
        axis.set_xlabel("epoch")
        axis.set_ylabel(metric)
        axis.set_title(f"model {metric}")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_search(path: Path, trials: list[modelrepo.TrialSummary], objective: str) -> None:
    """Validation accuracy of every scored trial against the main hyperparameters (one panel each)."""
    scored = [t for t in trials if t.val_accuracy is not None]
    params = [
        name
        for name in CHART_PARAMS
        if len({repr(t.hyperparameters.get(name)) for t in scored if name in t.hyperparameters}) > 1
    ] or ["trial"]
    columns = min(3, len(params))
    rows = math.ceil(len(params) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False)
    for axis, name in zip(axes.flat, params, strict=False):
        if name == "trial":
            xs: list[Any] = [int(t.trial_id) for t in scored]
        else:
            xs = [t.hyperparameters.get(name) for t in scored]
        pairs = [(x, t.val_accuracy) for x, t in zip(xs, scored, strict=True) if x is not None]
        axis.scatter([p[0] for p in pairs], [p[1] for p in pairs], alpha=0.75)
        if name == "learning_rate":
            axis.set_xscale("log")
        axis.set_xlabel(name)
        axis.set_ylabel("val_accuracy")
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(params) :]:
        axis.set_visible(False)
    figure.suptitle(f"search: {len(scored)} scored trials of {len(trials)} (objective {objective})")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _columns(trials: list[modelrepo.TrialSummary]) -> list[str]:
    names: list[str] = []
    for trial in trials:
        for name in trial.hyperparameters:
            if name not in names:
                names.append(name)
    return names


def write_trials_table(directory: Path, trials: list[modelrepo.TrialSummary]) -> None:
    """trials.csv and trials.md, in the order given (best first)."""
    params = _columns(trials)
    header = ["rank", "trial_id", "status", "val_accuracy", "best_epoch", "epochs_run", "seconds", *params]
    rows = []
    for rank, trial in enumerate(trials, start=1):
        rows.append(
            [
                rank,
                trial.trial_id,
                trial.status,
                "" if trial.val_accuracy is None else f"{trial.val_accuracy:.4f}",
                "" if trial.best_epoch is None else trial.best_epoch,
                "" if trial.epochs_run is None else trial.epochs_run,
                "" if trial.seconds is None else f"{trial.seconds:.1f}",
                *[_cell(trial.hyperparameters.get(name)) for name in params],
            ]
        )
    with open(directory / TRIALS_CSV, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    (directory / TRIALS_MD).write_text("# Trials (best first)\n\n" + "\n".join(lines) + "\n")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_hparams_config(logdir: Path, trials: list[modelrepo.TrialSummary]) -> None:
    """The experiment-level HParams summary, so the dashboard lists every hyperparameter and metric."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp_api

    names = [name for name in _columns(trials) if not name.startswith("tuner/")]
    with tf.summary.create_file_writer(str(logdir)).as_default():
        hp_api.hparams_config(
            hparams=[hp_api.HParam(name) for name in names],
            metrics=[
                hp_api.Metric("epoch_accuracy", group="validation", display_name="val accuracy"),
                hp_api.Metric("epoch_loss", group="validation", display_name="val loss"),
                hp_api.Metric("epoch_accuracy", group="train", display_name="train accuracy"),
            ],
        )


def write_report(
    directory: Path,
    trials: list[modelrepo.TrialSummary],
    objective: str,
    *,
    trial_history: dict[str, list[float]] | None,
    final_history: dict[str, list[float]] | None,
    title: str,
    tensorboard: bool = True,
    trial_epochs: list[int] | None = None,
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    plot_learning_curves(directory / LEARNING_CURVES, trial_history, final_history, title, trial_epochs)
    plot_search(directory / SEARCH_CHART, trials, objective)
    write_trials_table(directory, trials)
    if tensorboard:
        write_hparams_config(directory / TENSORBOARD_DIR, trials)
    log.info("report written to %s", directory)
