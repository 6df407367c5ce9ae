"""The final model from the best trial (``final.mode``: retrain or best_trial) and its one test score."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs.config import JobConfig
from jobs.errors import SearchError

if TYPE_CHECKING:
    import keras_tuner as kt

    from jobs.data import Splits
    from jobs.progress import SearchProgress

log = logging.getLogger(__name__)


@dataclass
class FinalModel:
    """The model to export and what the report and the metadata say about it."""

    model: Any  # keras.Model
    values: dict[str, Any]  # the best trial's model hyperparameters
    note: str  # how the model was made (metadata ``final_model_note``)
    history: dict[str, list[float]]  # the exported model's own per-epoch curves
    trial_history: dict[str, list[float]] | None  # the best trial's curves
    trial_epochs: list[int] | None  # the best trial's 0-based epoch numbers
    val_accuracy: float | None  # the best trial's best
    best_trial: str


def final_model(
    tuner: kt.Tuner,
    config: JobConfig,
    splits: Splits,
    progress: SearchProgress | None,
    tensorboard_dir: Path | None = None,
) -> FinalModel:
    """The model to export, from the best trial (``final.mode``); see docs/tuning.md. A retrain writes its
    TensorBoard logs under ``tensorboard_dir`` (None: none)."""
    from jobs import tuners
    from jobs.search_space import model_values

    objective = config.tuner.objective
    # Keras Tuner pads the best trials with failed ones when too few completed: keep completed ones only.
    best = [trial for trial in tuner.oracle.get_best_trials(1) if trial.status == "COMPLETED"]
    if not best:
        raise SearchError("no trial completed: nothing to export")
    best_trial = best[0]
    values = model_values(best_trial.hyperparameters.values)
    record = tuners.read_history(tuner, best_trial.trial_id)
    trial_history = record["history"] if record else None
    val_accuracy = (
        float(best_trial.metrics.get_best_value("val_accuracy"))
        if best_trial.metrics.exists("val_accuracy")
        else None
    )
    best_epochs = tuners.best_epoch_count(record, objective) if record else config.trial_epochs()
    if config.final.mode == "best_trial":
        model = tuner.load_model(best_trial)
        note = (
            f"weights of trial {best_trial.trial_id} at its best epoch ({best_epochs}), trained on "
            f"{config.search.train_subset or len(splits.x_train)} training examples; "
            f"val_accuracy is that trial's best"
        )
        history = trial_history or {}
    else:
        epochs = best_epochs if config.final.epochs == "best" else int(config.final.epochs)
        model, history = retrain(
            values,
            epochs,
            splits,
            steps_per_execution=config.runtime.steps_per_execution,
            jit_compile=config.runtime.jit_compile,
            tensorboard_dir=tensorboard_dir,
            progress=progress,
        )
        x, _ = splits.train_and_val()
        note = (
            f"retrained from scratch on train+validation ({len(x)} examples) for {epochs} epochs "
            f"({'the best trial best epoch count' if config.final.epochs == 'best' else 'final.epochs'}) "
            f"with trial {best_trial.trial_id}'s hyperparameters; val_accuracy is that trial's best"
        )
    return FinalModel(
        model=model,
        values=values,
        note=note,
        history=history,
        trial_history=trial_history,
        trial_epochs=record["epochs"] if record else None,
        val_accuracy=val_accuracy,
        best_trial=best_trial.trial_id,
    )


def retrain(
    values: dict[str, Any],
    epochs: int,
    splits: Splits,
    *,
    steps_per_execution: int = 1,
    jit_compile: bool | str = "auto",
    tensorboard_dir: Path | None = None,
    progress: SearchProgress | None = None,
) -> tuple[Any, dict[str, list[float]]]:
    """Train ``values``' model from scratch on train+validation for ``epochs``: the exported model's fit
    (``runtime.steps_per_execution``, ``runtime.jit_compile``; TensorBoard logs under ``tensorboard_dir``).

    Also what bench/tune_bench.py calls to retrain another trial's values the same way as the winner's.
    """
    import keras
    import numpy as np

    from jobs.progress import EpochLogger, interactive
    from jobs.search_space import build_mlp, one_hot

    x, y = splits.train_and_val()
    batch_size = int(values["batch_size"])
    model = build_mlp(values, int(np.ceil(len(x) / batch_size)), epochs, steps_per_execution, jit_compile)
    callbacks: list[keras.callbacks.Callback] = []
    if progress is not None:
        progress.total_epochs = progress.epochs_done + epochs  # the ETA now counts the final fit
        callbacks.append(EpochLogger(progress, "final fit", epochs, not interactive()))
    if tensorboard_dir is not None:
        tensorboard = keras.callbacks.TensorBoard(
            log_dir=str(tensorboard_dir), write_graph=False, profile_batch=0
        )
        callbacks.append(tensorboard)
    log.info("final fit: %d epochs on %d examples (train+validation)", epochs, len(x))
    fit = model.fit(
        x,
        one_hot(y),
        batch_size=batch_size,
        epochs=epochs,
        callbacks=callbacks,
        # A terminal gets Keras' progress bar (the EpochLogger is then quiet); a log gets its lines.
        verbose=1 if interactive() else 0,
    )
    history = {key: [float(v) for v in vals] for key, vals in fit.history.items() if key != "learning_rate"}
    return model, history


def score_on_test(model: Any, splits: Splits) -> float:
    """Accuracy on the official test set: used once, for the final score."""
    import numpy as np

    probabilities = model.predict(splits.x_test, batch_size=2048, verbose=0)
    return float(np.mean(np.argmax(probabilities, axis=-1) == splits.y_test))
