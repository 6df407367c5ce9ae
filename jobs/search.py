"""The search step: the configured tuner on ``<output>/tuner`` (resumed if it exists) and its run
(Keras Tuner and TensorFlow load inside the functions)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from jobs import kt_compat
from jobs.config import JobConfig
from jobs.errors import SearchError
from jobs.runtime import TUNER_DIR, OutputPaths

if TYPE_CHECKING:
    import keras_tuner as kt

    from jobs.data import Splits
    from jobs.progress import SearchProgress

log = logging.getLogger(__name__)


def build_tuner(
    config: JobConfig,
    splits: Splits,
    paths: OutputPaths,
    tuner_id: str | None = None,
    progress: SearchProgress | None = None,
) -> kt.Tuner:
    """The configured tuner on ``paths.tuner``; reloads (resumes) the project if it exists.

    Keras Tuner picks the state file to reload by ``KERASTUNER_TUNER_ID`` (default ``tuner0``), so a
    ``tuner_id`` given here is also exported there when that variable is unset.
    """
    from jobs import tuners
    from jobs.search_space import MlpHyperModel

    if tuner_id and "KERASTUNER_TUNER_ID" not in os.environ:
        os.environ["KERASTUNER_TUNER_ID"] = tuner_id
    train_size = len(splits.subset(config.search.train_subset)[0])
    hypermodel = MlpHyperModel(
        config.space,
        train_size,
        config.search.epochs,
        config.runtime.steps_per_execution,
        config.runtime.jit_compile,
    )
    paths.root.mkdir(parents=True, exist_ok=True)
    try:
        tuner = tuners.create_tuner(config, hypermodel, paths.root, TUNER_DIR, tuner_id)
    except (ValueError, RuntimeError) as exc:
        raise SearchError(f"cannot create or reload the tuner in {paths.tuner}: {exc}") from exc
    if progress is not None:
        tuner.progress = progress
        progress.resume(*tuners.finished_work(tuner))
    return tuner


def run_search(
    tuner: kt.Tuner, config: JobConfig, splits: Splits, tensorboard_dir: Path | None = None
) -> float:
    """Run (or continue) the search; returns its wall time. Raises :class:`SearchError` if fatal. Each
    trial writes TensorBoard logs (with HParams) under ``tensorboard_dir`` (None: none)."""
    import keras

    from jobs.progress import interactive

    x, y = splits.subset(config.search.train_subset)
    tuner.hypermodel.verbose = 1 if interactive() else 0
    callbacks: list[keras.callbacks.Callback] = []
    if config.search.early_stopping_patience:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=config.tuner.objective, patience=config.search.early_stopping_patience
            )
        )
    if tensorboard_dir is not None:
        # Keras Tuner gives each trial its own subdirectory and adds the HParams callback.
        callbacks.append(
            keras.callbacks.TensorBoard(log_dir=str(tensorboard_dir), write_graph=False, profile_batch=0)
        )
    started = time.monotonic()
    with kt_compat.search_failures():
        tuner.search(
            x,
            y,
            validation_data=(splits.x_val, splits.y_val),
            epochs=config.search.epochs,
            callbacks=callbacks,
            # Keras Tuner's own display is off (it prints, and loses its state on a resume): our log
            # lines replace it. Keras' progress bar is on for a terminal (MlpHyperModel.verbose).
            verbose=0,
        )
    seconds = time.monotonic() - started
    log.info("search finished in %.1fs", seconds)
    return seconds
