"""The tuning job's configuration schema (pydantic), read through pydantic-settings.

Precedence (later wins): preset < ``--config`` file < environment (``TUNE_*``) < command-line flags; the
sources are in :mod:`jobs.config_sources`, :func:`load_config` puts them in that order.
This module must not import TensorFlow: a bad config has to fail fast, before any heavy import.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, InitSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from jobs.config_sources import (
    ENV_NESTED_DELIMITER,
    ENV_PREFIX,
    FixedEnvSource,
    MappingEnvSource,
    OverrideSource,
    YamlEnvSource,
    YamlSource,
)
from jobs.distributed.roles import DistributedConfig  # light: pydantic only
from jobs.errors import ConfigError

PRESETS = ("seed", "default", "smoke")
DEFAULT_PRESET = "default"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IntRange(_Strict):
    """An integer searched between ``min`` and ``max`` (inclusive) in steps of ``step``."""

    min: int
    max: int
    step: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class FloatRange(_Strict):
    """A float searched between ``min`` and ``max``; ``sampling: log`` needs ``min > 0``."""

    min: float
    max: float
    sampling: Literal["linear", "log"] = "linear"

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        if self.sampling == "log" and self.min <= 0:
            raise ValueError("sampling 'log' needs min > 0")
        return self


PositiveInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]
PositiveFloat = Annotated[float, Field(gt=0.0)]
Schedule = Literal["constant", "cosine"]


def _spec_kind(value: Any) -> str:
    """Pick the one union branch that applies, so an error names that branch's problem only."""
    if isinstance(value, list | tuple):
        return "choices"
    if isinstance(value, dict | IntRange | FloatRange):
        return "range"
    return "fixed"


def _spec(fixed: Any, rng: Any | None = None) -> Any:
    """A search-space field: fixed (a scalar), a list of choices, or (if ``rng``) a range mapping."""
    branches = [
        Annotated[fixed, Tag("fixed")],
        Annotated[Annotated[list[fixed], Field(min_length=1)], Tag("choices")],
    ]
    if rng is not None:
        branches.append(Annotated[rng, Tag("range")])
    else:
        branches.append(Annotated[Annotated[list[fixed], Field(min_length=1)], Tag("range")])
    return Annotated[
        branches[0] | branches[1] if rng is None else branches[0] | branches[1] | branches[2],
        Discriminator(_spec_kind),
    ]


IntSpec = _spec(PositiveInt, IntRange)
FractionSpec = _spec(Fraction, FloatRange)
RateSpec = _spec(PositiveFloat, FloatRange)
BatchSpec = _spec(PositiveInt)
ScheduleSpec = _spec(Schedule)
TranslateSpec = _spec(NonNegInt)
DegreesSpec = _spec(Annotated[float, Field(ge=0.0, le=45.0)], FloatRange)
PixelsSpec = _spec(Annotated[float, Field(ge=0.0, le=6.0)], FloatRange)
GridSpec = _spec(Annotated[int, Field(ge=2, le=14)])
EpochsSpec = Annotated[
    Annotated[Literal["best"], Tag("best")] | Annotated[PositiveInt, Tag("fixed")],
    Discriminator(lambda v: "best" if isinstance(v, str) else "fixed"),
]


class SpaceConfig(_Strict):
    """The search space of the MLP. Scalars are fixed, lists are choices, {min,max,...} are ranges."""

    num_layers: IntSpec = IntRange(min=2, max=5)
    units: IntSpec = IntRange(min=32, max=512, step=32)  # one hyperparameter per layer
    dropout: FractionSpec = 0.0
    learning_rate: RateSpec = FloatRange(min=1e-4, max=1e-2, sampling="log")
    batch_size: BatchSpec = [32, 64, 128]
    lr_schedule: ScheduleSpec = "constant"
    label_smoothing: FractionSpec = 0.0
    # Training-only distortions (jobs/augment.py); 0 turns each off, and all 0 adds no layer.
    translate_pixels: TranslateSpec = 0
    rotation_degrees: DegreesSpec = 0.0
    zoom: FractionSpec = 0.0  # scale drawn in [1 - zoom, 1 + zoom]
    shear_degrees: DegreesSpec = 0.0
    elastic_pixels: PixelsSpec = 0.0  # largest displacement at a node of the elastic lattice
    elastic_grid: GridSpec = 4  # nodes per side of that lattice: larger is a finer, wobblier field
    # Exponential moving average of the weights (Keras' optimizer use_ema); the fit ends on the average.
    ema_momentum: FractionSpec = 0.0  # 0 = off; e.g. 0.999

    @field_validator("dropout", "label_smoothing", "zoom", "ema_momentum")
    @classmethod
    def _fraction_range(cls, value: Any) -> Any:
        if isinstance(value, FloatRange) and (value.min < 0 or value.max >= 1):
            raise ValueError("range must lie within [0, 1)")
        if isinstance(value, FloatRange) and value.sampling == "log":
            raise ValueError("use sampling 'linear' (0 is a valid value here)")
        return value

    @field_validator("translate_pixels")
    @classmethod
    def _translate_limit(cls, value: Any) -> Any:
        values = value if isinstance(value, list) else [value]
        if any(v > 13 for v in values):
            raise ValueError("translate_pixels must be between 0 and 13 (images are 28 pixels wide)")
        return value


class TunerConfig(_Strict):
    """Which Keras Tuner oracle runs the search, and its budget."""

    kind: Literal["random", "hyperband", "bayesian"] = "random"
    objective: Literal["val_accuracy", "val_loss"] = "val_accuracy"
    max_trials: PositiveInt = 10  # random and bayesian
    max_epochs: PositiveInt = 10  # hyperband: the most epochs one model trains
    factor: Annotated[int, Field(ge=2)] = 3  # hyperband reduction factor
    hyperband_iterations: PositiveInt = 1
    num_initial_points: PositiveInt | None = None  # bayesian; None = Keras Tuner's default
    executions_per_trial: Literal[1] = 1
    max_consecutive_failed_trials: PositiveInt = 3
    max_retries_per_trial: NonNegInt = 0


class SearchConfig(_Strict):
    """How each trial trains."""

    epochs: PositiveInt = 10  # per trial for random and bayesian (hyperband uses tuner.max_epochs)
    early_stopping_patience: PositiveInt | None = None  # None = no early stopping
    train_subset: PositiveInt | None = None  # trials fit on the first N shuffled training examples


class DataConfig(_Strict):
    """Where MNIST comes from and how the validation split is taken."""

    dir: str | None = None  # four IDX files (gzipped or not) or mnist.npz; None = Keras download
    cache_dir: str | None = None  # Keras download cache (None = ~/.keras)
    validation_size: PositiveInt = 6000  # taken from the 60k training images, fixed by `seed`


class FinalConfig(_Strict):
    """How the exported model is made from the search result (see docs/tuning.md)."""

    mode: Literal["retrain", "best_trial"] = "best_trial"
    epochs: EpochsSpec = "best"  # "best" = the best trial's best epoch count

    @field_validator("epochs", mode="before")
    @classmethod
    def _best_or_count(cls, value: Any) -> Any:
        if value != "best" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError("must be 'best' or a positive integer")
        return value


class OutputConfig(_Strict):
    dir: str = "runs/latest"
    model_name: str = "mnist"

    @field_validator("model_name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        import modelrepo

        try:
            return modelrepo.validate_model_name(value)
        except modelrepo.ModelRepositoryError as exc:
            raise ValueError(str(exc)) from exc


class RuntimeConfig(_Strict):
    mixed_precision: bool = False  # mixed_float16; useful on a GPU, slow on a CPU
    gpu_memory_growth: bool = True
    pushgateway: str | None = None  # host:port; progress gauges are pushed when set
    tensorboard: bool = True  # per-trial TensorBoard logs with HParams under report/tensorboard
    # Training steps per tf.function call: fewer Python round trips and per-batch callback calls
    # (Keras Tuner's trial callback makes batch ends synchronous); the same updates as 1.
    steps_per_execution: PositiveInt = 8
    # XLA for the training step (Keras ``compile(jit_compile=)``). "auto" is Keras' own choice: on where a
    # GPU is, off on a CPU-only machine. The default preset sets true: on this CPU its epoch is ~1.5x
    # faster compiled (the distortion layer's resampling most of all); docs/tuning.md, "XLA".
    jit_compile: Literal["auto"] | bool = "auto"


class JobConfig(BaseSettings):
    """The whole job configuration (one YAML document); :func:`load_config` reads it from its sources."""

    model_config = SettingsConfigDict(
        extra="forbid", frozen=True, env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_NESTED_DELIMITER
    )

    preset: str = DEFAULT_PRESET  # informational: which preset the values started from
    seed: NonNegInt = 42
    tuner: TunerConfig = TunerConfig()
    search: SearchConfig = SearchConfig()
    space: SpaceConfig = SpaceConfig()
    data: DataConfig = DataConfig()
    final: FinalConfig = FinalConfig()
    output: OutputConfig = OutputConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    distributed: DistributedConfig = DistributedConfig()  # chief/worker roles, timeouts: docs/distributed.md

    @model_validator(mode="after")
    def _consistent(self) -> JobConfig:
        subset = self.search.train_subset
        if subset is not None and subset > 60000 - self.data.validation_size:
            raise ValueError(
                f"search.train_subset ({subset}) exceeds the training split "
                f"(60000 - data.validation_size = {60000 - self.data.validation_size})"
            )
        if self.data.validation_size >= 60000:
            raise ValueError("data.validation_size must be below 60000")
        return self

    def trial_epochs(self) -> int:
        """The most epochs one trial trains."""
        return self.tuner.max_epochs if self.tuner.kind == "hyperband" else self.search.epochs

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # ``JobConfig(**values)`` validates ``values`` alone; load_config builds the real sources.
        return (init_settings,)


class JobEnvironment(BaseSettings):
    """The variables that choose what to load and how to run, not config fields (docs/tuning.md)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True, extra="ignore")

    preset: Literal["seed", "default", "smoke"] | None = None  # TUNE_PRESET
    config: str | None = None  # TUNE_CONFIG: a YAML file merged over the preset
    export_again: bool = False  # TUNE_EXPORT_AGAIN: --export-again for compose; never in a Job spec


def job_environment(environ: Mapping[str, str] | None = None) -> JobEnvironment:
    """``TUNE_PRESET``, ``TUNE_CONFIG`` and ``TUNE_EXPORT_AGAIN`` from ``environ`` (default: os.environ)."""
    environ = os.environ if environ is None else environ
    try:
        return JobEnvironment(_build_sources=((MappingEnvSource(JobEnvironment, environ),), {}))
    except ValidationError as exc:
        problems = [
            f"  environment variable {ENV_PREFIX}{'_'.join(map(str, e['loc'])).upper()}: {e['msg']} "
            f"(got {e.get('input')!r})"
            for e in exc.errors()
        ]
        raise ConfigError("invalid environment:\n" + "\n".join(problems)) from exc


def _allowed_fields(parent: tuple[Any, ...]) -> list[str]:
    model: Any = JobConfig
    for part in parent:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


_BRANCH_TAGS = {"fixed", "choices", "range", "best"}


def format_validation_error(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        # Drop pydantic's union-branch tags (e.g. "IntRange", "list[...]") from the location.
        loc = ".".join(str(part) for part in error["loc"] if part not in _BRANCH_TAGS)
        msg = error["msg"]
        if error["type"] == "extra_forbidden":
            msg = f"unknown field; allowed: {', '.join(_allowed_fields(error['loc'][:-1]))}"
        got = error.get("input")
        got_text = "" if isinstance(got, dict) and error["type"] == "missing" else f" (got {got!r})"
        lines.append(f"  {loc or '<root>'}: {msg}{got_text}")
    # The same field may fail in several union branches; keep each message once, in order.
    unique = list(dict.fromkeys(lines))
    return "invalid configuration:\n" + "\n".join(unique)


def load_config(
    preset: str | None = None,
    config_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    cli: Mapping[str, Any] | None = None,
    *,
    flags: Mapping[str, Any] | None = None,
    set_flags: Iterable[str] = (),
) -> JobConfig:
    """The job config from its sources (:mod:`jobs.config_sources`), later winning: the preset
    (``preset``, else ``TUNE_PRESET``, else default) < ``config_file`` (else ``TUNE_CONFIG``) <
    ``environ`` (default: the process's) < ``set_flags`` (``SECTION.FIELD=YAML``) < ``flags`` (dotted
    path -> value) < ``cli`` (a nested mapping). Raises :class:`ConfigError` naming each bad field."""
    environ = os.environ if environ is None else environ
    chosen = job_environment(environ)
    preset = preset or chosen.preset or DEFAULT_PRESET
    if preset not in PRESETS:
        raise ConfigError(f"preset: {preset!r} is not one of {', '.join(PRESETS)}")
    config_file = config_file or chosen.config
    text = resources.files("jobs").joinpath("configs", f"{preset}.yaml").read_text()
    sources: list[PydanticBaseSettingsSource] = [
        InitSettingsSource(JobConfig, dict(cli or {})),
        OverrideSource(JobConfig, flags or {}, "flag"),
        OverrideSource.from_set_flags(JobConfig, set_flags),
        YamlEnvSource(JobConfig, environ),
        FixedEnvSource(JobConfig, environ),
    ]
    if config_file:
        sources.append(YamlSource.from_file(JobConfig, config_file))
    sources.append(YamlSource(JobConfig, text, f"preset {preset}"))
    sources.append(OverrideSource(JobConfig, {"preset": preset}, "preset"))
    try:
        return JobConfig(_build_sources=(tuple(sources), {}))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from exc


def to_yaml(config: JobConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
