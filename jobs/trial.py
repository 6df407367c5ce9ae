"""``python -m jobs.trial``: one trial of the search with one given set of hyperparameters (a Katib trial).

The same data, model building and per-trial fit as the Keras Tuner search (:class:`MlpHyperModel` with
its hyperparameters fixed), the same per-epoch log lines (``... val_accuracy=0.9912 val_loss=0.0421 ...``,
which Katib's StdOut metrics collector parses), and the best epoch's weights plus a record
(``trial.json``) in the trial's own folder, for ``python -m jobs.promote``. Settings: flags or ``TRIAL_*``
variables (below), the job's configuration (preset, ``--config``, ``TUNE_*``) for everything else.
Exit codes: :mod:`jobs.errors` (2 = a bad parameter, named).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, CliApp, SettingsConfigDict

from jobs import logs
from jobs.config import FloatRange, IntRange, JobConfig, SpaceConfig, load_config
from jobs.errors import EXIT_INTERRUPTED, EXIT_OK, ConfigError, JobError, SearchError

if TYPE_CHECKING:
    import keras
    import keras_tuner as kt

log = logging.getLogger(__spec__.name)  # "jobs.trial" under python -m too

RECORD_FILE = "trial.json"
WEIGHTS_FILE = "model.weights.h5"
MAX_LAYERS = 8  # units_0 .. units_7
RECORD_SCHEMA = 1


class TrialSettings(BaseSettings):
    """One trial: where it writes, which configuration it starts from, and its hyperparameters.

    Every hyperparameter is ``--kebab-name`` or ``TRIAL_UPPER_NAME``; those the configuration's space
    searches must be given, and each must lie in that space (a value outside it exits 2, named).
    """

    model_config = SettingsConfigDict(
        env_prefix="TRIAL_",
        cli_kebab_case=True,
        cli_prog_name="python -m jobs.trial",
        cli_implicit_flags=True,
        extra="ignore",
    )

    trial_dir: Path = Field(description="this trial's own folder (Katib: .../${trialSpec.Name})")
    preset: str = Field(default="seed", description="the job's preset the space and budget come from")
    config: Path | None = Field(
        default=None, description="YAML merged over the preset (as jobs.tune --config)"
    )
    data_dir: str | None = Field(default=None, description="MNIST folder or mnist.npz (else MNIST_DATA_DIR)")
    num_layers: int | None = Field(default=None, ge=1, le=MAX_LAYERS, description="hidden layers")
    units_0: int | None = Field(default=None, ge=1, description="units of hidden layer 0")
    units_1: int | None = Field(default=None, ge=1, description="units of hidden layer 1")
    units_2: int | None = Field(default=None, ge=1, description="units of hidden layer 2")
    units_3: int | None = Field(default=None, ge=1, description="units of hidden layer 3")
    units_4: int | None = Field(default=None, ge=1, description="units of hidden layer 4")
    units_5: int | None = Field(default=None, ge=1, description="units of hidden layer 5")
    units_6: int | None = Field(default=None, ge=1, description="units of hidden layer 6")
    units_7: int | None = Field(default=None, ge=1, description="units of hidden layer 7")
    dropout: float | None = Field(default=None, ge=0.0, lt=1.0, description="dropout after each hidden layer")
    learning_rate: float | None = Field(default=None, gt=0.0, description="Adam's learning rate")
    batch_size: int | None = Field(default=None, ge=1, description="training batch size")
    lr_schedule: Literal["constant", "cosine"] | None = Field(
        default=None, description="learning rate schedule"
    )
    label_smoothing: float | None = Field(default=None, ge=0.0, lt=1.0, description="label smoothing")
    translate_pixels: int | None = Field(default=None, ge=0, le=13, description="random shift, pixels")
    rotation_degrees: float | None = Field(default=None, ge=0.0, le=45.0, description="random rotation")
    zoom: float | None = Field(default=None, ge=0.0, lt=1.0, description="random scale in [1-zoom, 1+zoom]")
    shear_degrees: float | None = Field(default=None, ge=0.0, le=45.0, description="random shear")
    elastic_pixels: float | None = Field(default=None, ge=0.0, le=6.0, description="elastic displacement")
    elastic_grid: int | None = Field(default=None, ge=2, le=14, description="elastic lattice nodes per side")
    ema_momentum: float | None = Field(default=None, ge=0.0, lt=1.0, description="weight average momentum")

    def hyperparameters(self) -> dict[str, Any]:
        """The hyperparameters given (flags or environment), by the search space's names."""
        names = set(type(self).model_fields) - {"trial_dir", "preset", "config", "data_dir"}
        return {name: getattr(self, name) for name in sorted(names) if getattr(self, name) is not None}


def parse_settings(argv: list[str] | None) -> TrialSettings:
    """Flags over ``TRIAL_*`` variables; a bad value is a :class:`ConfigError` naming the field."""
    try:
        return CliApp.run(TrialSettings, cli_args=argv)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']} (got {error.get('input')!r})"
            for error in exc.errors()
        )
        raise ConfigError(f"trial parameters: {problems}") from exc


def _flag(name: str) -> str:
    return f"--{name.replace('_', '-')} / TRIAL_{name.upper()}"


def _space_spec(space: SpaceConfig, name: str) -> Any:
    return getattr(space, "units" if name.startswith("units_") else name)


def _searched(spec: Any) -> bool:
    return isinstance(spec, IntRange | FloatRange) or (isinstance(spec, list) and len(spec) > 1)


def _admits(spec: Any, value: Any) -> bool:
    if isinstance(spec, IntRange):
        return (
            float(value).is_integer()
            and spec.min <= value <= spec.max
            and (value - spec.min) % spec.step == 0
        )
    if isinstance(spec, FloatRange):
        return spec.min <= value <= spec.max
    if isinstance(spec, list):
        return value in spec
    return value == spec


def _describe(spec: Any) -> str:
    if isinstance(spec, IntRange):
        return f"{spec.min}..{spec.max} step {spec.step}"
    if isinstance(spec, FloatRange):
        return f"{spec.min:g}..{spec.max:g}"
    return f"one of {spec}" if isinstance(spec, list) else f"fixed at {spec!r}"


def fixed_hyperparameters(
    config: JobConfig, given: dict[str, Any]
) -> tuple[kt.HyperParameters, dict[str, Any]]:
    """``given`` as fixed Keras Tuner hyperparameters, and every value the search's model will use.

    Each given value must lie in ``config.space`` and every hyperparameter that space searches must be
    given: a :class:`ConfigError` names the one that is not (before any data is read).
    """
    import keras_tuner as kt

    from jobs.search_space import MlpHyperModel

    space = config.space
    hp = kt.HyperParameters()
    for name, value in given.items():
        hp.Fixed(name, value)
    used = MlpHyperModel(space, 1, config.trial_epochs()).declare(hp)
    for name in given:
        if name not in used and not name.startswith("units_"):  # units of unused layers are ignored
            raise ConfigError(f"{name} ({_flag(name)}): the {config.preset} space has no such hyperparameter")
    for name, value in used.items():
        spec = _space_spec(space, name)
        if name not in given and _searched(spec):
            raise ConfigError(f"{name} ({_flag(name)}) is missing: the space searches it ({_describe(spec)})")
        if name in given and not _admits(spec, value):
            raise ConfigError(f"{name} ({_flag(name)}) = {value!r} is outside the space ({_describe(spec)})")
    return hp, used


def trial_model(
    config: JobConfig, given: dict[str, Any], train_size: int
) -> tuple[keras.Model, kt.HyperParameters, Any, dict[str, Any]]:
    """The search's compiled model for ``given``: (model, hyperparameters, hypermodel, values used).

    Built by the search's own :class:`jobs.search_space.MlpHyperModel` with the values fixed, so a
    trial's model is the one the Keras Tuner search would build for the same values.
    """
    from jobs.search_space import MlpHyperModel

    hp, used = fixed_hyperparameters(config, given)
    hypermodel = MlpHyperModel(
        config.space,
        train_size,
        config.trial_epochs(),
        config.runtime.steps_per_execution,
        config.runtime.jit_compile,
    )
    return hypermodel.build(hp), hp, hypermodel, used


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)  # atomic: a reader sees the whole record or none


def run_trial(config: JobConfig, settings: TrialSettings) -> dict[str, Any]:
    """Train one trial and write its best epoch's weights and record; returns the record."""
    import keras

    import modelrepo
    from jobs.data import load_data
    from jobs.progress import EpochLogger, SearchProgress
    from jobs.runtime import library_versions, setup_runtime

    given = settings.hyperparameters()
    fixed_hyperparameters(config, given)  # a bad parameter fails before the data is read
    mnist, splits = load_data(config)
    setup_runtime(config)
    x, y = splits.subset(config.search.train_subset)
    model, hp, hypermodel, used = trial_model(config, given, len(x))
    trial_dir = settings.trial_dir
    name = trial_dir.name
    epochs = config.trial_epochs()
    log.info("trial %s: %s, %d epochs on %d examples", name, used, epochs, len(x))
    objective = config.tuner.objective
    progress = SearchProgress(config)
    progress.total_trials, progress.total_epochs = 1, epochs
    trial_dir.mkdir(parents=True, exist_ok=True)
    (trial_dir / RECORD_FILE).unlink(missing_ok=True)  # a rerun of this trial replaces its record
    callbacks: list[keras.callbacks.Callback] = [
        # The search's per-epoch line: "trial <name> epoch 1/10 accuracy=... val_accuracy=... val_loss=..."
        EpochLogger(progress, f"trial {name}", epochs, per_epoch_lines=True),
        keras.callbacks.ModelCheckpoint(
            str(trial_dir / WEIGHTS_FILE),
            monitor=objective,
            mode="max" if objective.endswith("accuracy") else "min",
            save_best_only=True,
            save_weights_only=True,
        ),
    ]
    if config.search.early_stopping_patience:
        callbacks.append(
            keras.callbacks.EarlyStopping(monitor=objective, patience=config.search.early_stopping_patience)
        )
    started = time.monotonic()
    try:
        fit = hypermodel.fit(
            hp, model, x, y, validation_data=(splits.x_val, splits.y_val), epochs=epochs, callbacks=callbacks
        )
    except JobError:
        raise
    except Exception as exc:  # a trial that cannot train (bad values for this data, out of memory, ...)
        raise SearchError(f"trial {name} failed: {exc}") from exc
    history = {
        key: [float(v) for v in values] for key, values in fit.history.items() if key != "learning_rate"
    }
    scores = history.get(objective, [])
    if not scores or not all(math.isfinite(v) for v in scores):
        raise SearchError(f"trial {name}: {objective} is not a finite number ({scores})")
    pick = max if objective.endswith("accuracy") else min
    best_index = scores.index(pick(scores))
    record = {
        "schema": RECORD_SCHEMA,
        "trial": name,
        "preset": config.preset,
        "objective": objective,
        "hyperparameters": modelrepo.to_jsonable(used),
        "val_accuracy": history["val_accuracy"][best_index],
        "val_loss": history["val_loss"][best_index],
        "best_epoch": best_index + 1,
        "epochs_run": len(scores),
        "history": history,
        "train_size": len(x),
        "seconds": time.monotonic() - started,
        "weights": WEIGHTS_FILE,
        "data_checksums": mnist.checksums,
        "library_versions": library_versions(),
        "config": config.model_dump(mode="json"),
    }
    _write_json(trial_dir / RECORD_FILE, record)
    # No "name=value" here: Katib's collector reads every such pair (the per-epoch lines carry them).
    log.info(
        "trial %s done: best %s %.4f at epoch %d of %d; weights and record in %s",
        name,
        objective,
        scores[best_index],
        best_index + 1,
        len(scores),
        trial_dir,
    )
    return record


def main(argv: list[str] | None = None) -> int:
    """Run one trial; every :class:`jobs.errors.JobError` becomes one log line and its exit code."""
    logs.setup("INFO", rfc3339=True)
    try:
        settings = parse_settings(argv)
        cli: dict[str, Any] = {}
        if settings.data_dir is not None:
            cli["data"] = {"dir": settings.data_dir}
        config = load_config(settings.preset, settings.config, os.environ, cli)
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        run_trial(config, settings)
    except JobError as exc:
        log.error("%s: %s", exc.label, exc)
        return exc.exit_code
    except KeyboardInterrupt:
        log.error("interrupted")
        return EXIT_INTERRUPTED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
