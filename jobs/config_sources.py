"""Where the job's configuration comes from: pydantic-settings sources for the schema in :mod:`jobs.config`.

Highest priority first (:func:`jobs.config.load_config` passes them in this order):

- :class:`InitSettingsSource`: a nested mapping given in code (tests, scripts);
- :class:`OverrideSource` for the command line's named flags (``--output`` -> ``output.dir``, values as
  argparse typed them), then for ``--set SECTION.FIELD=VALUE`` (values in YAML);
- :class:`YamlEnvSource`: ``TUNE_<SECTION>__<FIELD>`` (and ``TUNE_SEED``), values in YAML;
  :class:`FixedEnvSource`: the variables with a fixed meaning (``TUNE_OUTPUT``, ``MNIST_DATA_DIR``, ...);
- :class:`YamlSource` for the ``--config`` file, then for the preset.

pydantic-settings merges them section by section (a range mapping key by key). No TensorFlow here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource

from jobs.errors import ConfigError

ENV_PREFIX = "TUNE_"
ENV_NESTED_DELIMITER = "__"
# Environment variables with a fixed meaning (docs/interfaces.md); everything else TUNE_<SECTION>__<FIELD>.
ENV_FIXED = {
    "TUNE_OUTPUT": "output.dir",
    "TUNE_DATA_CACHE": "data.cache_dir",
    "TUNE_PUSHGATEWAY": "runtime.pushgateway",
    "MNIST_DATA_DIR": "data.dir",
}
ENV_NOT_FIELDS = {"TUNE_PRESET", "TUNE_CONFIG", "TUNE_EXPORT_AGAIN"}  # read by jobs.config.JobEnvironment


def parse_yaml(text: str, source: str) -> Any:
    """A YAML value (``5``, ``[0, 1, 2]``, ``{min: 1, max: 3}``, ``null``); a bad one names ``source``."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: value {text!r} is not valid YAML: {exc}") from exc


def nested(assignments: Iterable[tuple[str, Any]], source: str) -> dict[str, Any]:
    """``[("space.units", 3), ...]`` -> ``{"space": {"units": 3}}`` (the one path setter)."""
    result: dict[str, Any] = {}
    for path, value in assignments:
        keys = [key.strip() for key in path.split(".")]
        if not all(keys):
            raise ConfigError(f"{source} {path!r}: expected SECTION.FIELD")
        node = result
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{source} {path!r}: {key} is not a section")
        node[keys[-1]] = value
    return result


class YamlSource(PydanticBaseSettingsSource):
    """One YAML document (a preset or the ``--config`` file): a mapping of sections."""

    def __init__(self, settings_cls: type[BaseSettings], text: str, source: str) -> None:
        super().__init__(settings_cls)
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
        if data is not None and not isinstance(data, dict):
            raise ConfigError(f"{source}: the top level must be a mapping of sections")
        self.data: dict[str, Any] = data or {}

    @classmethod
    def from_file(cls, settings_cls: type[BaseSettings], path: str | Path) -> YamlSource:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"config file {path}: cannot read it: {exc.strerror}") from exc
        return cls(settings_cls, text, f"config file {path}")

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self.data)


class OverrideSource(PydanticBaseSettingsSource):
    """Overrides by dotted path: the command line's named flags, or ``--set SECTION.FIELD=VALUE`` items."""

    def __init__(self, settings_cls: type[BaseSettings], values: Mapping[str, Any], source: str) -> None:
        super().__init__(settings_cls)
        self.data = nested(((path, v) for path, v in values.items() if v is not None), source)

    @classmethod
    def from_set_flags(cls, settings_cls: type[BaseSettings], items: Iterable[str]) -> OverrideSource:
        values: dict[str, Any] = {}
        for item in items:
            key, sep, raw = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"--set {item!r}: expected SECTION.FIELD=VALUE")
            values[key.strip()] = parse_yaml(raw, f"--set {key.strip()}")
        return cls(settings_cls, values, "--set")

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self.data)


class FixedEnvSource(PydanticBaseSettingsSource):
    """:data:`ENV_FIXED`: each variable sets one field, its value taken as text; empty means unset."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        given = {path: environ[name] for name, path in ENV_FIXED.items() if environ.get(name, "") != ""}
        self.data = nested(given.items(), "environment variable")

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self.data)


class MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping (tests pass one) instead of os.environ."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str], **options: Any) -> None:
        self._environ = environ
        super().__init__(settings_cls, **options)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {
            name.lower(): value
            for name, value in self._environ.items()
            if not (self.env_ignore_empty and value == "")
        }


class YamlEnvSource(MappingEnvSource):
    """``TUNE_<SECTION>__<FIELD>`` and ``TUNE_<FIELD>`` (``TUNE_`` prefix, ``__`` nesting), every value read
    as YAML, as the docs promise (``TUNE_FINAL__EPOCHS=12`` is a number, ``...=best`` a word).

    An unknown ``TUNE_<SECTION>`` is an error (pydantic-settings would ignore it); an unknown field inside a
    known section reaches validation, which names it.
    """

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(
            settings_cls,
            environ,
            case_sensitive=False,
            env_prefix=ENV_PREFIX,
            env_nested_delimiter=ENV_NESTED_DELIMITER,
        )

    def _load_env_vars(self) -> Mapping[str, str | None]:
        sections = set(self.settings_cls.model_fields) - {"preset"}
        found: dict[str, str | None] = {}
        for name, raw in sorted(self._environ.items()):
            if not name.startswith(ENV_PREFIX) or name in ENV_FIXED or name in ENV_NOT_FIELDS:
                continue
            parts = [part.lower() for part in name[len(ENV_PREFIX) :].split(ENV_NESTED_DELIMITER)]
            if parts[0] not in sections or not all(parts):
                raise ConfigError(
                    f"environment variable {name}: no config section {parts[0]!r}; use "
                    f"TUNE_<SECTION>__<FIELD> with SECTION one of {', '.join(sorted(sections))}"
                )
            parse_yaml(raw, f"environment variable {name}")  # a bad value is named here, by its variable
            found[name.lower()] = raw
        return found

    def decode_complex_value(self, field_name: str, field: FieldInfo | None, value: Any) -> Any:
        return value  # text stays text until explode_env_vars / prepare_field_value read it as YAML

    def explode_env_vars(self, field_name: str, field: FieldInfo, env_vars: Mapping[str, str | None]) -> dict:
        return _yaml_leaves(super().explode_env_vars(field_name, field, env_vars))

    def prepare_field_value(
        self, field_name: str, field: FieldInfo, value: Any, value_is_complex: bool
    ) -> Any:
        if isinstance(value, str):  # the whole field in one variable: TUNE_SEED=1, TUNE_SPACE='{...}'
            parsed = yaml.safe_load(value)
            if isinstance(parsed, dict):
                return {**parsed, **self.explode_env_vars(field_name, field, self.env_vars)}
            return parsed
        return super().prepare_field_value(field_name, field, value, value_is_complex)


def _yaml_leaves(node: Any) -> Any:
    if isinstance(node, dict):
        return {key: _yaml_leaves(value) for key, value in node.items()}
    return yaml.safe_load(node) if isinstance(node, str) else node
