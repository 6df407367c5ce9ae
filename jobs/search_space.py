"""The MLP and its search space: a Keras Tuner HyperModel built from the ``space`` section of the config.

The model takes raw pixels (float32 [N, 28, 28], 0..255) and normalises inside; augmentation layers
are active only in training; the output is a float32 softmax over the ten digits.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import keras_tuner as kt
import numpy as np

from jobs.augment import RandomDistortion
from jobs.config import FloatRange, IntRange, SpaceConfig

NUM_CLASSES = 10
# The distortion hyperparameters (RandomDistortion's arguments), 0 = off; elastic_grid only shapes the field.
DISTORTIONS = ("translate_pixels", "rotation_degrees", "zoom", "shear_degrees", "elastic_pixels")
IMAGE_SHAPE = (28, 28)
# Keys Hyperband adds to a trial's values; they are not model hyperparameters.
TUNER_KEYS = ("tuner/epochs", "tuner/initial_epoch", "tuner/bracket", "tuner/round", "tuner/trial_id")


def _define(hp: kt.HyperParameters, name: str, spec: Any) -> Any:
    """Register ``spec`` as a hyperparameter: scalar -> Fixed, list -> Choice, range -> Int/Float."""
    if isinstance(spec, IntRange):
        return hp.Int(name, spec.min, spec.max, step=spec.step)
    if isinstance(spec, FloatRange):
        return hp.Float(name, spec.min, spec.max, sampling=spec.sampling)
    if isinstance(spec, list):
        return hp.Choice(name, spec) if len(spec) > 1 else hp.Fixed(name, spec[0])
    return hp.Fixed(name, spec)


def one_hot(labels: np.ndarray) -> np.ndarray:
    return np.eye(NUM_CLASSES, dtype=np.float32)[labels]


def build_mlp(
    values: dict[str, Any],
    steps_per_epoch: int,
    epochs: int,
    steps_per_execution: int = 1,
    jit_compile: bool | str = "auto",
) -> keras.Model:
    """Build and compile the MLP for a complete set of hyperparameter values.

    ``steps_per_epoch`` and ``epochs`` size the cosine schedule (it decays over the epochs this fit runs).
    """
    inputs = keras.Input(shape=IMAGE_SHAPE, dtype="float32", name="images")
    x = keras.layers.Rescaling(1.0 / 255.0, name="normalise")(inputs)
    distortion = {key: float(values.get(key, 0)) for key in DISTORTIONS}
    if any(distortion.values()):
        # A preprocessing layer: random in training, the identity at inference (and in the export).
        x = RandomDistortion(**distortion, elastic_grid=int(values.get("elastic_grid", 4)), name="distort")(x)
    x = keras.layers.Flatten()(x)
    dropout = float(values.get("dropout", 0.0))
    for i in range(int(values["num_layers"])):
        x = keras.layers.Dense(int(values[f"units_{i}"]), activation="relu", name=f"dense_{i}")(x)
        if dropout > 0:
            x = keras.layers.Dropout(dropout, name=f"dropout_{i}")(x)
    x = keras.layers.Dense(NUM_CLASSES, name="logits")(x)
    # float32 even under mixed precision: a float16 softmax loses accuracy in the loss.
    outputs = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name="mnist_mlp")

    learning_rate: Any = float(values["learning_rate"])
    if values.get("lr_schedule", "constant") == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(
            learning_rate, decay_steps=max(1, steps_per_epoch * epochs)
        )
    ema = float(values.get("ema_momentum", 0.0))
    model.compile(
        # With EMA, fit() ends by writing the averaged weights into the model (what is then exported).
        optimizer=keras.optimizers.Adam(learning_rate, use_ema=ema > 0, ema_momentum=ema or 0.99),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=float(values.get("label_smoothing", 0.0))),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        steps_per_execution=steps_per_execution,
        jit_compile=jit_compile,
    )
    return model


class MlpHyperModel(kt.HyperModel):
    """The search space of ``space``; trials fit on one-hot labels (label smoothing needs them)."""

    def __init__(
        self,
        space: SpaceConfig,
        train_size: int,
        epochs: int,
        steps_per_execution: int = 1,
        jit_compile: bool | str = "auto",
    ) -> None:
        super().__init__(name="mnist_mlp", tunable=True)
        self.space = space
        self.train_size = train_size
        self.epochs = epochs
        self.steps_per_execution = steps_per_execution
        self.jit_compile = jit_compile
        self.verbose = 0  # Keras' progress bar (1) on a terminal; the job sets it

    def declare(self, hp: kt.HyperParameters) -> dict[str, Any]:
        """Declare every hyperparameter and return the values of this trial."""
        space = self.space
        values = {"num_layers": _define(hp, "num_layers", space.num_layers)}
        for i in range(int(values["num_layers"])):
            values[f"units_{i}"] = _define(hp, f"units_{i}", space.units)
        values["dropout"] = _define(hp, "dropout", space.dropout)
        values["learning_rate"] = _define(hp, "learning_rate", space.learning_rate)
        values["batch_size"] = _define(hp, "batch_size", space.batch_size)
        values["lr_schedule"] = _define(hp, "lr_schedule", space.lr_schedule)
        values["translate_pixels"] = _define(hp, "translate_pixels", space.translate_pixels)
        values["label_smoothing"] = _define(hp, "label_smoothing", space.label_smoothing)
        # Declared only when set: a space without them (seed) samples as it did before they existed.
        for key in (*DISTORTIONS[1:], "ema_momentum"):
            if getattr(space, key) != 0:
                values[key] = _define(hp, key, getattr(space, key))
        if space.elastic_pixels != 0:
            values["elastic_grid"] = _define(hp, "elastic_grid", space.elastic_grid)
        return values

    def trial_epochs(self, hp: kt.HyperParameters) -> int:
        """Epochs this fit runs: Hyperband sets them per round, otherwise the configured count."""
        if "tuner/epochs" in hp.values:
            return int(hp.values["tuner/epochs"]) - int(hp.values.get("tuner/initial_epoch", 0))
        return self.epochs

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        values = self.declare(hp)
        steps = math.ceil(self.train_size / int(values["batch_size"]))
        return build_mlp(values, steps, self.trial_epochs(hp), self.steps_per_execution, self.jit_compile)

    def fit(self, hp: kt.HyperParameters, model: keras.Model, x: Any, y: Any, **kwargs: Any) -> Any:
        kwargs["verbose"] = self.verbose  # the tuner's own verbose drives its summary display only
        validation = kwargs.pop("validation_data", None)
        if validation is not None:
            validation = (validation[0], one_hot(validation[1]))
        return model.fit(
            x, one_hot(y), batch_size=int(hp.get("batch_size")), validation_data=validation, **kwargs
        )


def model_values(values: dict[str, Any]) -> dict[str, Any]:
    """Hyperparameter values without Hyperband's bookkeeping keys and unused layer widths."""
    clean = {key: value for key, value in values.items() if key not in TUNER_KEYS}
    layers = int(clean.get("num_layers", 0))
    return {
        key: value
        for key, value in clean.items()
        if not (key.startswith("units_") and int(key.split("_")[1]) >= layers)
    }
