"""The tuning job's configuration: a pydantic schema, presets, and the merge of file, env and CLI overrides.

Precedence (later wins): preset < ``--config`` file < environment (``TUNE_*``) < command-line flags.
This module must not import TensorFlow: a bad config has to fail fast, before any heavy import.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
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

from jobs.distributed.roles import DistributedConfig  # light: pydantic only
from jobs.errors import ConfigError

PRESETS = ("seed", "default", "smoke")
DEFAULT_PRESET = "default"
ENV_PREFIX = "TUNE_"
# Environment variables with a fixed meaning (docs/interfaces.md); everything else TUNE_<SECTION>__<FIELD>.
ENV_FIXED = {
    "TUNE_OUTPUT": ("output", "dir"),
    "TUNE_DATA_CACHE": ("data", "cache_dir"),
    "TUNE_PUSHGATEWAY": ("runtime", "pushgateway"),
    "MNIST_DATA_DIR": ("data", "dir"),
}
ENV_NOT_FIELDS = {"TUNE_PRESET", "TUNE_CONFIG", "TUNE_EXPORT_AGAIN"}
EXPORT_AGAIN_ENV = "TUNE_EXPORT_AGAIN"  # --export-again for compose and scripts; never in a Job spec


def env_flag(environ: Mapping[str, str], name: str) -> bool:
    """A yes/no environment variable: 1/true/yes or 0/false/no/empty; anything else is a config error."""
    raw = environ.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise ConfigError(f"environment variable {name}: expected 1/true/yes or 0/false/no, got {raw!r}")


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


class JobConfig(_Strict):
    """The whole job configuration (one YAML document)."""

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


def preset_dict(name: str) -> dict[str, Any]:
    """The raw mapping of a shipped preset."""
    if name not in PRESETS:
        raise ConfigError(f"preset: {name!r} is not one of {', '.join(PRESETS)}")
    text = resources.files("jobs").joinpath("configs", f"{name}.yaml").read_text()
    return _load_yaml(text, f"preset {name}")


def _load_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    return data


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``override`` into a copy of ``base``; nested mappings merge, everything else replaces."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _set_path(target: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = target
    for key in path[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{'.'.join(path)}: {key} is not a section")
    node[path[-1]] = value


def _parse_scalar(text: str, source: str) -> Any:
    """Env and ``--set`` values are YAML (``5``, ``[0, 1, 2]``, ``{min: 1, max: 3}``, ``null``)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: value {text!r} is not valid YAML: {exc}") from exc


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Overrides from ``TUNE_*`` (and ``MNIST_DATA_DIR``) variables."""
    sections = set(JobConfig.model_fields)
    result: dict[str, Any] = {}
    for name, raw in sorted(environ.items()):
        if name in ENV_FIXED:
            if raw != "":
                _set_path(result, ENV_FIXED[name], raw)
            continue
        if not name.startswith(ENV_PREFIX) or name in ENV_NOT_FIELDS:
            continue
        parts = tuple(part.lower() for part in name[len(ENV_PREFIX) :].split("__"))
        if parts[0] not in sections or any(not part for part in parts):
            raise ConfigError(
                f"environment variable {name}: no config section {parts[0]!r}; "
                f"use TUNE_<SECTION>__<FIELD> with SECTION one of {', '.join(sorted(sections))}"
            )
        _set_path(result, parts, _parse_scalar(raw, f"environment variable {name}"))
    return result


def set_overrides(assignments: list[str]) -> dict[str, Any]:
    """Overrides from ``--set section.field=value`` flags."""
    result: dict[str, Any] = {}
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected SECTION.FIELD=VALUE")
        _set_path(result, tuple(key.strip().split(".")), _parse_scalar(raw, f"--set {key}"))
    return result


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


def validate(data: Mapping[str, Any]) -> JobConfig:
    try:
        return JobConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from exc


def load_config(
    preset: str | None = None,
    config_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    cli: Mapping[str, Any] | None = None,
) -> JobConfig:
    """Build the job config: preset < config file < environment < CLI overrides."""
    environ = os.environ if environ is None else environ
    preset = preset or environ.get("TUNE_PRESET") or DEFAULT_PRESET
    config_file = config_file or environ.get("TUNE_CONFIG") or None
    data = preset_dict(preset)
    data["preset"] = preset
    if config_file:
        path = Path(config_file)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"config file {path}: cannot read it: {exc.strerror}") from exc
        data = deep_merge(data, _load_yaml(text, f"config file {path}"))
    data = deep_merge(data, env_overrides(environ))
    if cli:
        data = deep_merge(data, cli)
    return validate(data)


def to_yaml(config: JobConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
